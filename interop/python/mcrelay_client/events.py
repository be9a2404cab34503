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
    """Another client left; ``reason`` is the REASON byte (1 bye,
    2 timeout, 3 kicked, 4 server shutdown, 5 revoked, 6 unreachable: it
    was on another relay of a federation that is no longer heard from).
    With our own id and reason 3 it is our own kick: the server forgot the
    session, and the next REJECT makes the client handshake again."""

    id: str
    reason: int

    @property
    def reason_name(self) -> str:
        """``"bye"``, ``"timeout"``, ``"kicked"``, ``"server shutdown"``,
        ``"revoked"``, ``"unreachable"`` or ``"reason N"``."""
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


@dataclass(frozen=True)
class Forbidden:
    """A REJECT 5 while the session was up: this (named, ``sub``) client may
    not publish, so its message was dropped. The session goes on."""


@dataclass(frozen=True)
class DownlinkSilent:
    """Group mode ended: nothing the relay signed arrived on the downlink
    ``addr`` through the probes (multicast does not reach this host), or it
    could not be joined. A handshake without group mode is under way in the
    background so that the relay serves this client per recipient; the
    session keeps working meanwhile. The next :meth:`Client.connect` asks
    for group mode again."""

    addr: str


@dataclass(frozen=True)
class Revoked:
    """The relay removed this client's credential (its own PEER_LEFT with
    REASON 5, in its own session). The session is over and the client does
    not handshake again by itself: it would only be refused."""

    id: str
