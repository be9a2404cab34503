"""Exceptions raised by :class:`mcrelay_client.Client`."""

from . import protocol


class McrelayError(Exception):
    """Base class of every error this package raises."""


class Rejected(McrelayError):
    """The server refused the handshake: two attempts in a row answered
    with REJECT and not welcomed (a forged REJECT cannot do that while the
    server welcomes us).

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
    """Only server keys other than the pinned one answered within the timeout."""

    def __init__(self, expected: str, actual: str):
        self.expected = expected
        self.actual = actual
        super().__init__(f"server key fingerprint {actual} does not match pinned {expected}")


class HandshakeTimeout(McrelayError, TimeoutError):
    """``connect()`` got no complete answer within the timeout."""


class NotConnected(McrelayError):
    """A session operation was called without an established session."""
