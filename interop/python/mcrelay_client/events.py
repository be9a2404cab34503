"""Events returned by :meth:`mcrelay_client.Client.recv`.

Plain frozen dataclasses; compare them with ``isinstance`` or ``match``.
"""

from dataclasses import dataclass

from . import protocol


@dataclass(frozen=True)
class Message:
    """A body relayed from another client (``SEQ SENDER_ID BODY``)."""

    sender: str
    """Id of the original sender, ``ip:port`` as the server sees it."""
    body: bytes
    """The application bytes, unchanged."""


@dataclass(frozen=True)
class PeerJoined:
    """Another client completed its handshake."""

    id: str


@dataclass(frozen=True)
class PeerLeft:
    """Another client left; ``reason`` is the REASON byte
    (1 bye, 2 timeout, 3 kicked, 4 server shutdown)."""

    id: str
    reason: int

    @property
    def reason_name(self) -> str:
        """``"bye"``, ``"timeout"``, ``"kicked"``, ``"server shutdown"`` or ``"reason N"``."""
        return protocol.LEFT_NAMES.get(self.reason, f"reason {self.reason}")


@dataclass(frozen=True)
class ServerClosing:
    """The server is shutting down; no more events will follow."""


@dataclass(frozen=True)
class Rejected:
    """A REJECT 1 (UNKNOWN_SESSION) or 2 (AUTH_FAILED) while the session was
    up. Anyone can forge one, so it is a hint: the client has started a
    handshake in the background and the session keeps working;
    :class:`Reconnected` follows. (With ``Client(rehandshake=False)`` it is
    only reported.)"""

    reason: int

    @property
    def reason_name(self) -> str:
        """``"UNKNOWN_SESSION"``, ``"AUTH_FAILED"``, ``"SERVER_FULL"``, ``"BAD_COOKIE"`` or ``"reason N"``."""
        return protocol.REJECT_NAMES.get(self.reason, f"reason {self.reason}")


@dataclass(frozen=True)
class Reconnected:
    """The background handshake a :class:`Rejected` started is over: the
    session now runs under a new key (or the hint proved false and the old
    one goes on). ``id`` is the client id."""

    id: str
