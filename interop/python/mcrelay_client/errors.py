"""Exceptions raised by :class:`mcrelay_client.Client`."""

from . import protocol


class McrelayError(Exception):
    """Base class of every error this package raises."""


class Rejected(McrelayError):
    """The server answered the handshake with REJECT.

    ``reason``: 1 UNKNOWN_SESSION, 2 AUTH_FAILED, 3 SERVER_FULL,
    4 BAD_COOKIE (retry ``connect()``).
    """

    def __init__(self, reason: int):
        self.reason = reason
        super().__init__(f"rejected by server: {self.reason_name}")

    @property
    def reason_name(self) -> str:
        """The reason's protocol name, e.g. ``"AUTH_FAILED"``."""
        return protocol.REJECT_NAMES.get(self.reason, f"reason {self.reason}")


class PinMismatch(McrelayError):
    """The server key's SHA-256 fingerprint is not the pinned one."""

    def __init__(self, expected: str, actual: str):
        self.expected = expected
        self.actual = actual
        super().__init__(f"server key fingerprint {actual} does not match pinned {expected}")


class HandshakeTimeout(McrelayError, TimeoutError):
    """``connect()`` got no complete answer within the timeout."""


class NotConnected(McrelayError):
    """A session operation was called without an established session."""
