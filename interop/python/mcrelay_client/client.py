"""A blocking mcrelay client (protocol v1 and v2) over one UDP socket,
plus a second one for the group downlink in v2 group mode.

Handshake (§5.1): HELLO -> SERVER_KEY+COOKIE(+VERSIONS) -> COOKIE +
SESSION_KEY2 (v2: the bound handshake, FERNET_KEY BIND CAPS CREDENTIAL) or
SESSION_KEY (v1: a server that sent no VERSIONS, a token over 110 bytes, or
``version=1``) -> WELCOME. Afterwards every pairwise datagram is a Fernet
token under the client's own key (raw bytes once RAW is granted, base64
text otherwise; both are accepted always) whose plaintext starts with a
SEQ. Invalid, malformed, replayed or unexpected input is dropped silently
and counted in :attr:`Client.dropped`.

Once an accepted answer listed version 2, answers without VERSIONS are
ignored (:attr:`Client.downgrades`): a forged or lost datagram cannot talk
the client down to v1 (protocol v2 §2).

Group mode (protocol v2 §4), when asked for and granted: the client joins
the WELCOME's GROUP_ADDR on a second socket and reads GROUP_DATA there,
checked and opened by :class:`group.GroupMember` (signature, epochs, join
ratchet, held datagrams, GSEQ window). It drops its own echoes, asks for a
missing key with a KEEPALIVE carrying KEY_REQUEST, probes a silent downlink
with KEEPALIVE PROBE and, when nothing signed arrives through the probes
(or the group cannot be joined), handshakes again in the background
without GROUP (:class:`events.DownlinkSilent`) to be served per recipient.
What arrived on the downlink is counted in :attr:`Client.downlink_stats`.

Unauthenticated answers are hints, never orders (protocol v2 §7), because
anyone who can send to the client's port can forge them:

- A REJECT 1 or 2 while the session is up starts a handshake in the
  background (0.2 s later, at most one HELLO a second, never backed off so
  that forged hints cannot delay a real recovery); the session keeps
  working until the new one is welcomed. An authentic token before the
  new SESSION_KEY goes out proves the hint false and cancels it.
- A REJECT 2, 3 or 4 after our SESSION_KEY is that attempt's refusal only
  if no WELCOME arrives within 0.25 s; two refused attempts in a row end the
  handshake (:class:`errors.Rejected`). A background handshake stops only on
  REJECT 2.
- A SERVER_KEY whose fingerprint is not the pinned one is ignored and
  counted (:attr:`Client.pin_mismatches`); :class:`errors.PinMismatch` comes
  only when no other key was accepted within the timeout.
"""

import base64
import hashlib
import ipaddress
import os
import select
import socket
import struct
import sys
import time
from collections import deque
from typing import Dict, Optional, Tuple, Union

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from . import errors, events, group, protocol
from .protocol import Malformed

HELLO_RETRY = 1.0
"""Seconds between handshake attempts (each a fresh HELLO and a fresh key)."""
REFUSAL_GRACE = 0.25
"""Seconds a REJECT answering our SESSION_KEY waits for a WELCOME racing it."""
REFUSALS_TO_STOP = 2
"""Handshake attempts in a row refused (and not welcomed) that end it."""
HINT_GRACE = 0.2
"""Seconds a REJECT hint waits for the session to prove it false."""
REHANDSHAKE_EVERY = 1.0
"""Seconds between background handshakes; never more often, never backed off."""
MIN_RSA_BITS = 2048
"""Smaller server keys are ignored (and could not carry key + token)."""

_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()),
                     algorithm=hashes.SHA256(), label=None)

_RELAY = frozenset({protocol.SENDER_ID, protocol.BODY})
_JOINED = frozenset({protocol.PEER_JOINED})
_LEFT = frozenset({protocol.PEER_LEFT, protocol.REASON})
_CLOSING = frozenset({protocol.SERVER_CLOSING})
_GROUP_KEY = frozenset({protocol.GROUP_KEY})
_PROBE = frozenset({protocol.PROBE})
_WELCOME_V2 = frozenset({protocol.CAPS, protocol.GROUP_KEY, protocol.GROUP_ADDR,
                         protocol.GROUP_SIGNER})
_KEY = object()
"""What :meth:`Client._classify` returns for a DATA carrying GROUP_KEY."""

STAT_NAMES = ("opened", "held", "released", "malformed", "not_member", "bad_signature",
              "old_epoch", "hold_full", "bad_token", "bad_inner", "replayed", "own_echo",
              "fragments_dropped", "key_requests", "probes")
"""The counters of :attr:`Client.downlink_stats`, as the Rust client names them."""


def _resolve(host: str, port: int):
    """``(family, sockaddr)`` of ``host``; IPv4 first when a name has both
    (a relay always serves IPv4, IPv6 only where its host has it)."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
    for family, _, _, _, sockaddr in infos:
        if family == socket.AF_INET:
            return family, sockaddr
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _ipv6_index(iface: Union[str, int, None]) -> int:
    """The index of an interface given by name, index or IPv6 address (0:
    the kernel's choice). Raises ``ValueError`` when there is none."""
    if iface is None or iface == "":
        return 0
    if isinstance(iface, int) or str(iface).isdigit():
        index = int(iface)
        if index not in {i for i, _ in socket.if_nameindex()}:
            raise ValueError(f"no interface of index {index}")
        return index
    try:
        addr = ipaddress.IPv6Address(str(iface).split("%")[0])
    except ValueError:
        try:
            return socket.if_nametoindex(str(iface))
        except OSError:
            raise ValueError(f"no interface named {iface}") from None
    # Linux lists every IPv6 address with its interface index here.
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and ipaddress.IPv6Address(int(fields[0], 16)) == addr:
                    return int(fields[1], 16)
    except OSError:
        pass
    raise ValueError(f"no interface has the address {addr}")


def _ipv4_address(iface: Union[str, int, None]) -> str:
    """The IPv4 address of an interface given by address or name (Linux)."""
    if iface is None or iface == "":
        return "127.0.0.1"
    try:
        return str(ipaddress.IPv4Address(str(iface)))
    except ValueError:
        pass
    import fcntl  # only where an interface is named: Unix
    name = str(iface).encode()[:15]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            # SIOCGIFADDR: the interface's (first) IPv4 address.
            ifreq = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name))
        except OSError:
            raise ValueError(f"no interface named {iface} with an IPv4 address") from None
    return socket.inet_ntoa(ifreq[20:24])


def _multicast_socket(group: str, port: int, iface, ttl: int):
    """A socket sending to ``group`` out of ``iface``, and the destination."""
    if ipaddress.ip_address(group.split("%")[0]).version == 6:
        index = _ipv6_index(iface)
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if index:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
        s.bind(("::", 0))
        # A link-local group means nothing without its link: the index is its scope.
        return s, (group.split("%")[0], port, 0, index)
    addr = _ipv4_address(iface)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(addr))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    s.bind((addr, 0))
    return s, (group, port)


def _same_source(a, b) -> bool:
    """True when two socket addresses name the same sender (IPv6: the same
    address, port and scope, whatever the flow label or spelling)."""
    if len(a) != len(b):
        return False
    if len(a) == 2:
        return a == b
    return (ipaddress.ip_address(a[0].split("%")[0]) == ipaddress.ip_address(b[0].split("%")[0])
            and a[1] == b[1] and a[3] == b[3])


def _show(sockaddr) -> str:
    """``ip:port``, or ``[ip%scope]:port`` for IPv6, as the server writes ids."""
    if len(sockaddr) == 2:
        return f"{sockaddr[0]}:{sockaddr[1]}"
    host = sockaddr[0].split("%")[0]
    scope = f"%{sockaddr[3]}" if sockaddr[3] else ""
    return f"[{host}{scope}]:{sockaddr[1]}"


def _local_route(server) -> Optional[str]:
    """The local address the system would send from to reach ``server``
    (a route lookup: connecting a UDP socket sends nothing)."""
    family = socket.AF_INET6 if len(server) == 4 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(server)
            return s.getsockname()[0].split("%")[0]
    except OSError:
        return None


# Linux: deliver only this socket's own groups, not every group another
# socket of the host joined on the same port (the kernel's default).
_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
_IPV6_MULTICAST_ALL = getattr(socket, "IPV6_MULTICAST_ALL", 29)


def _join_downlink(host: str, port: int, iface_v4: str, index: int) -> socket.socket:
    """A socket on the downlink's port, member of its group on the IPv4
    interface ``iface_v4`` or, for IPv6, the interface of index ``index``
    (0: the kernel's choice). SO_REUSEADDR lets several clients of one host
    bind the port; each gets its own copy of every group datagram."""
    ip = ipaddress.ip_address(host)
    if not ip.is_multicast:
        raise ValueError(f"downlink {host} is not a multicast group")
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        linux = sys.platform.startswith("linux")
        if ip.version == 4:
            if linux:
                s.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
            s.bind(("0.0.0.0", port))
            mreq = ip.packed + socket.inet_aton(iface_v4)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if linux:
                s.setsockopt(socket.IPPROTO_IPV6, _IPV6_MULTICAST_ALL, 0)
            s.bind(("::", port))
            mreq = ip.packed + struct.pack("@I", index)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
    except BaseException:
        s.close()
        raise
    return s


class _Downlink:
    """The joined downlink socket and its probe schedule."""

    def __init__(self, sock: socket.socket, addr: Tuple[str, int], now: float):
        self.sock = sock
        self.addr = addr
        self.probe = group.Probe(now)

    @property
    def text(self) -> str:
        return _addr_text(self.addr)


def _addr_text(addr: Tuple[str, int]) -> str:
    """``group:port``, ``[group]:port`` for IPv6."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Attempt:
    """One handshake attempt, from HELLO to WELCOME."""

    def __init__(self, now: float):
        self.started = now
        self.fernet: Optional[Fernet] = None   # set once our SESSION_KEY went out
        self.asked: Optional[int] = None       # CAPS of a SESSION_KEY2; None for v1
        self.rx: Optional[protocol.ReplayWindow] = None
        self.refused: Optional[int] = None     # REJECT 2/3/4 after our SESSION_KEY
        self.refused_at: Optional[float] = None


class _Recovery:
    """A background handshake started by a REJECT hint, until welcomed."""

    def __init__(self, now: float, first: float, reason: Optional[int], authentic: int,
                 pins: int, quiet: bool = False):
        self.since = now
        # Quiet: the client's own decision (the downlink failed), not a
        # hint: nothing can prove it false and no Rejected/Reconnected
        # event frames it.
        self.quiet = quiet
        self.next_hello = first
        self.reason = reason
        self.authentic_at_hint = authentic
        self.pins_at_start = pins
        self.started = False
        self.key_accepted = False
        self.refused = 0


class Client:
    """One mcrelay session.

    ``server`` is ``(host, port)``; the host may be an IPv4 or IPv6 address
    (a link-local one with its interface, ``fe80::1%eth0``) or a name (its
    IPv4 address is used when it has both). With ``group`` set, every
    datagram goes to ``(group, port)`` as multicast, out of interface
    ``iface`` with TTL (IPv6: hop limit) ``ttl``, 0 by default: it never
    leaves the host; the server's unicast address is learned from its
    SERVER_KEY answer. Without ``group``, datagrams go to ``server`` by
    unicast. The socket's family is the group's, else the server's.

    ``iface``: for an IPv4 group, the interface's address or name
    (default ``127.0.0.1``); the socket is bound to that address. For an
    IPv6 group, the interface's name, index or one of its addresses
    (default: the kernel's choice, which a link-local group such as
    ``ff02::77`` cannot do without); IPv6 multicast goes by interface
    index (IPV6_MULTICAST_IF). Unused without ``group``.

    ``token`` is the optional access token (1..146 bytes, or a str encoded
    as UTF-8): the shared token of a relay with ``--token-file``, or a named
    client's own token (then the server calls us ``NAME@ip:port``). It
    travels as CREDENTIAL in a v2 handshake; one over 110 bytes only fits a
    v1 SESSION_KEY, so such a client speaks v1. ``pin`` is the expected hex SHA-256 of the server's DER public
    key (colons allowed). Payloads larger than ``max_datagram`` bytes are
    sent as FRAGMENTs; the two handshake datagrams never are (the server
    does not buffer fragments from unregistered addresses). ``timeout`` is
    the handshake deadline and the default for :meth:`recv`.
    ``rehandshake``: answer REJECT hints with a background handshake (see
    the module doc); when False they come out of :meth:`recv` as
    :class:`events.Rejected` and nothing else happens.

    ``version``: 2 (default) speaks v2 to a server that offers it, v1 to
    one that does not; 1 always sends a v1 SESSION_KEY. ``group_mode``:
    ask a v2 relay for group mode; by default (None) asked when the relay
    is reached through ``group``, not by unicast. The downlink is joined on
    ``iface`` for a group target, otherwise on the interface that routes to
    the server.
    """

    def __init__(self, server: Tuple[str, int] = ("127.0.0.1", 5007), group: Optional[str] = None,
                 iface: Union[str, int, None] = None, token: Union[bytes, str, None] = None,
                 pin: Optional[str] = None, max_datagram: int = protocol.DEFAULT_MAX_DATAGRAM,
                 timeout: float = 5.0, rehandshake: bool = True, ttl: int = 0,
                 version: int = 2, group_mode: Optional[bool] = None):
        if isinstance(token, str):
            token = token.encode()
        if token is not None and not 1 <= len(token) <= protocol.MAX_ACCESS_TOKEN_LEN:
            raise ValueError(f"access token must be 1..{protocol.MAX_ACCESS_TOKEN_LEN} bytes")
        if not 64 <= max_datagram <= 65507:
            raise ValueError("max_datagram must be 64..65507")
        if not 0 <= ttl <= 255:
            raise ValueError("ttl must be 0..255")
        if version not in (1, 2):
            raise ValueError("version must be 1 or 2")
        host, port = server
        self.group = group
        self.iface = iface
        self.max_version = version
        """The highest version to speak: 2, or 1 when forced."""
        self.group_mode = bool(group) if group_mode is None else bool(group_mode)
        """Whether a v2 handshake asks for group mode."""
        self.token = token
        self.pin = pin.replace(":", "").strip().lower() if pin else None
        self.max_datagram = max_datagram
        self.timeout = timeout
        self.rehandshake = rehandshake
        if group:
            # Only the port of ``server`` matters: the answer names the server.
            self._server = (host, int(port))
            self._sock, self._dest = _multicast_socket(group, int(port), iface, ttl)
        else:
            family, self._server = _resolve(host, int(port))
            self._dest = self._server
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                self._sock.bind(("::", 0))
            else:
                self._sock.bind(("0.0.0.0", 0))
        self._peer: Optional[Tuple[str, int]] = None if group else self._server
        self._reasm = protocol.Reassembler()
        self._msg_id = int.from_bytes(os.urandom(4), "big")
        self._dropped = 0
        self._events: deque = deque()
        self._server_der: Optional[bytes] = None
        self._attempt: Optional[_Attempt] = None
        self._recovery: Optional[_Recovery] = None
        self._hint: Optional[int] = None
        self._last_hello = float("-inf")
        self._authentic = 0
        self.pin_mismatches = 0
        """SERVER_KEYs ignored because their fingerprint was not the pinned one."""
        self._last_mismatch: Optional[str] = None
        self._server_v2 = False     # an accepted answer listed 2: never v1 again
        self._group_off = False     # the downlink failed: do not ask for GROUP
        self.downgrades = 0
        """Answers without VERSIONS ignored after one listed version 2."""
        self._stats: Dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self._member: Optional[group.GroupMember] = None
        self._downlink: Optional[_Downlink] = None
        # The downlink hears anyone who can send to the group: a few
        # partial messages per source, so a stranger cannot take them all.
        self._down_reasm = protocol.Reassembler(max_partial=32, max_per_source=4)
        self._reset()

    # --- public API ---------------------------------------------------------

    @property
    def local_address(self) -> Tuple[str, int]:
        """The socket's ``(ip, port)``; the server names us by it."""
        return self._sock.getsockname()

    @property
    def fingerprint(self) -> Optional[str]:
        """Hex SHA-256 of the server's DER public key, once received."""
        return hashlib.sha256(self._server_der).hexdigest() if self._server_der else None

    @property
    def dropped(self) -> int:
        """Datagrams, tokens and fragment sets dropped as invalid, replayed or unexpected."""
        return self._dropped + self._reasm.dropped

    @property
    def connected(self) -> bool:
        """True between a successful :meth:`connect` and :meth:`bye`."""
        return self.client_id is not None

    @property
    def version(self) -> Optional[int]:
        """The protocol version of the session: 2 (SESSION_KEY2) or 1, None without one."""
        return self._version if self.connected else None

    @property
    def caps(self) -> int:
        """The capabilities the WELCOME granted (``protocol.CAP_GROUP``, ``CAP_RAW``)."""
        return self._caps if self.connected else 0

    @property
    def mode(self) -> Optional[str]:
        """``"group"``, ``"v2"`` (outside group mode) or ``"v1"``, as the
        server's admin ``clients`` command shows it; None without a session."""
        if not self.connected:
            return None
        if self._downlink is not None:
            return "group"
        return "v2" if self._version == 2 else "v1"

    @property
    def downlink(self) -> Optional[str]:
        """The group downlink joined (``group:port``), while in group mode."""
        return self._downlink.text if self._downlink is not None else None

    @property
    def group_epoch(self) -> Optional[int]:
        """The group key epoch the member is at, while in group mode."""
        return self._member.epoch if self._member is not None else None

    @property
    def downlink_stats(self) -> Dict[str, int]:
        """What arrived on the downlink and what became of it, one counter per
        cause (:data:`STAT_NAMES`; ``fragments_dropped`` is the downlink
        reassembler's)."""
        stats = dict(self._stats)
        stats["fragments_dropped"] += self._down_reasm.dropped
        return stats

    @property
    def rehandshaking(self) -> bool:
        """True while a background handshake started by a REJECT hint is pending."""
        return self._recovery is not None

    def connect(self) -> str:
        """Runs the handshake and returns the client id the server assigned.

        A new handshake replaces any previous session (both SEQ spaces
        restart at 1); a new attempt (fresh HELLO, fresh key) goes out every
        second until welcomed. Raises :class:`errors.Rejected` when two
        attempts in a row were refused and not welcomed (or the last one was
        at the timeout), :class:`errors.PinMismatch` when only other keys
        than ``pin`` answered, :class:`errors.HandshakeTimeout` after
        ``timeout`` seconds.
        """
        self._reset()
        self._server_der = None
        self._peer = None if self.group else self._server
        self._group_off = False  # a handshake from scratch asks for GROUP again
        self._events.clear()
        deadline = time.monotonic() + self.timeout
        pins_before = self.pin_mismatches
        refused_in_row = 0
        last_refusal: Optional[int] = None
        next_try = time.monotonic()
        while self.client_id is None:
            now = time.monotonic()
            a = self._attempt
            if a is not None and a.refused is not None:
                last_refusal = a.refused
                next_try = min(next_try, a.refused_at + REFUSAL_GRACE)
            if now >= next_try:
                if a is not None:
                    if a.refused in (protocol.AUTH_FAILED, protocol.SERVER_FULL):
                        refused_in_row += 1
                        if refused_in_row >= REFUSALS_TO_STOP:
                            self._attempt = None
                            raise errors.Rejected(a.refused)
                    else:
                        refused_in_row = 0
                self._send_hello(now)
                next_try = now + HELLO_RETRY
            if now >= deadline:
                self._attempt = None
                if last_refusal in (protocol.AUTH_FAILED, protocol.SERVER_FULL):
                    raise errors.Rejected(last_refusal)
                if self._server_der is None and self.pin_mismatches > pins_before:
                    raise errors.PinMismatch(self.pin, self._last_mismatch)
                raise errors.HandshakeTimeout(f"no answer from {_show(self._dest)}"
                                              f" within {self.timeout:g} s")
            self._pump(min(deadline, next_try))
        return self.client_id

    def send(self, body: bytes) -> None:
        """Sends ``body`` to every other client (DATA ``SEQ BODY``).

        Raises ``ValueError`` if the token would not fit one TLV (body
        over roughly 48 KiB).
        """
        self._send_token(protocol.DATA, [(protocol.BODY, bytes(body))])

    def keepalive(self) -> None:
        """Sends KEEPALIVE (``SEQ``) to refresh the server's last-seen time."""
        self._send_token(protocol.KEEPALIVE, [])

    def bye(self) -> None:
        """Sends BYE (``SEQ``) and ends the session locally."""
        self._send_token(protocol.BYE, [])
        self._reset()

    def recv(self, timeout: Optional[float] = None):
        """Returns the next event, or ``None`` if none arrives in ``timeout``
        seconds (default: the client's ``timeout``). Background handshakes,
        key requests and downlink probes run from here: call it regularly.

        Events: :class:`events.Message`, :class:`events.PeerJoined`,
        :class:`events.PeerLeft`, :class:`events.ServerClosing`,
        :class:`events.Rejected` (a hint acted on), :class:`events.Reconnected`,
        :class:`events.Forbidden`, :class:`events.DownlinkSilent`,
        :class:`events.Revoked` (the session is over).
        Raises :class:`errors.Rejected` when a background handshake was
        refused twice in a row with REJECT 2, :class:`errors.PinMismatch`
        when only other keys than ``pin`` answered it for ``timeout``.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._events:
            now = time.monotonic()
            wakes = [self._run_recovery(now), self._run_group(now)]
            if self._events:
                break
            if now >= deadline:
                return None
            wake = min([w for w in wakes if w is not None], default=deadline)
            self._pump(min(deadline, max(wake, now)))
        return self._events.popleft()

    def close(self) -> None:
        """Closes the sockets (sends nothing; call :meth:`bye` first to leave)."""
        self._leave_downlink()
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if self.connected:
                self.bye()
        finally:
            self.close()

    # --- sending --------------------------------------------------------------

    def _send_token(self, kind: int, tlvs) -> None:
        if not self.connected:
            raise errors.NotConnected("no session: call connect() first")
        seq = self._tx_seq + 1
        token = self._fernet.encrypt(protocol.encode_inner(seq, tlvs))
        if self._raw:
            # RAW granted: the token's bytes, not their base64 text (v2 §4).
            token = base64.urlsafe_b64decode(token)
        payload = protocol.encode_tlv(kind, token)  # ValueError if over 65535
        self._msg_id = (self._msg_id + 1) & 0xFFFFFFFF
        datagrams = protocol.split_datagram(payload, self._msg_id, self.max_datagram)
        self._tx_seq = seq
        for d in datagrams:
            self._sock.sendto(d, self._dest)

    def _send_hello(self, now: float) -> None:
        """Starts a new attempt (in the background when a session is up)."""
        self._attempt = _Attempt(now)
        self._last_hello = now
        self._sock.sendto(protocol.hello_datagram(), self._dest)

    def _caps_wanted(self) -> int:
        """The CAPS a SESSION_KEY2 asks for: RAW always, GROUP when wanted
        and the downlink did not fail since the last handshake from scratch."""
        wants_group = self.group_mode and not self._group_off
        return protocol.CAP_RAW | (protocol.CAP_GROUP if wants_group else 0)

    # --- background handshakes ----------------------------------------------

    def _run_recovery(self, now: float) -> Optional[float]:
        """Sends the recovery's HELLOs when due; returns when it next needs attention."""
        r = self._recovery
        if r is None:
            return None
        if not r.quiet and not r.started and self._authentic > r.authentic_at_hint:
            self._recovery = None  # the session spoke: the hint was false
            return None
        if now < r.next_hello:
            return r.next_hello
        a = self._attempt
        if r.started and a is not None:
            if a.refused == protocol.AUTH_FAILED:
                r.refused += 1
                if r.refused >= REFUSALS_TO_STOP:
                    self._recovery = self._attempt = None
                    raise errors.Rejected(a.refused)
            else:
                r.refused = 0
        lost = now - r.since >= self.timeout
        if lost and not r.key_accepted and self.pin_mismatches > r.pins_at_start:
            self._recovery = self._attempt = None
            raise errors.PinMismatch(self.pin, self._last_mismatch)
        if not r.started:
            r.started = True
            if not r.quiet:
                self._events.append(events.Rejected(r.reason))
        if lost and self.connected:
            # Not welcomed within the timeout: the session is gone.
            self._reset()
            self._recovery = r
            if self.group:
                self._peer = None
        r.next_hello = now + REHANDSHAKE_EVERY
        self._send_hello(now)
        return r.next_hello

    def _after_datagram(self) -> None:
        hint, self._hint = self._hint, None
        if hint is None or not self.connected:
            return
        if self._recovery is not None:
            return  # a handshake is under way already
        if not self.rehandshake:
            self._events.append(events.Rejected(hint))
            return
        now = time.monotonic()
        first = max(now + HINT_GRACE, self._last_hello + REHANDSHAKE_EVERY)
        self._recovery = _Recovery(now, first, hint, self._authentic, self.pin_mismatches)

    def _welcomed(self, client_id: str, a: _Attempt, welcome: Optional[protocol.Inner]) -> None:
        """Makes the attempt's session the session, with the v2 fields of
        its WELCOME (None when a token under the new key overtook a lost one)."""
        self._fernet, self._rx, self._tx_seq = a.fernet, a.rx, 0
        self.client_id = client_id
        self._attempt = None
        self._hint = None  # about the session just replaced
        r, self._recovery = self._recovery, None
        if r is not None and not r.quiet:
            self._events.append(events.Reconnected(client_id))
        asked = a.asked
        if asked is None:
            granted = 0
        elif welcome is not None:
            caps = welcome.fields.get(protocol.CAPS)
            granted = (struct.unpack(">I", caps)[0] if caps else 0) & asked
        else:
            # WELCOME lost: RAW unknown, so text; group mode stays as it was
            # (the relay keeps a member that asked again).
            granted = asked & protocol.CAP_GROUP if self._member is not None else 0
        self._version = 1 if asked is None else 2
        self._caps = granted
        self._raw = bool(granted & protocol.CAP_RAW)
        if not granted & protocol.CAP_GROUP:
            self._leave_downlink()
            return
        if welcome is None:
            return
        self._enter_group(welcome)

    # --- group mode -----------------------------------------------------------

    def _enter_group(self, welcome: protocol.Inner) -> None:
        """Group mode as a WELCOME that granted GROUP describes it."""
        f = welcome.fields
        now = time.monotonic()
        try:
            key, addr = f[protocol.GROUP_KEY], protocol.parse_group_addr(f[protocol.GROUP_ADDR])
            signer = f[protocol.GROUP_SIGNER]
        except (KeyError, Malformed):
            self._dropped += 1  # GROUP granted without its fields: broken
            self._leave_downlink()
            return
        epoch = struct.unpack(">I", key[:4])[0]
        d, m = self._downlink, self._member
        if d is not None and m is not None and d.addr == addr and m.same_signer(signer):
            # A re-handshake: same group, the join moved the key on.
            self._deliver_released(m.set_key(now, epoch, key[4:]))
            return
        self._leave_downlink()
        try:
            # A new signer is a new GSEQ space: a new member.
            member = group.GroupMember(signer, epoch, key[4:])
        except ValueError:
            self._dropped += 1
            return
        try:
            sock = _join_downlink(addr[0], addr[1], self._join_iface_v4(), self._join_index())
        except (OSError, ValueError):
            # Nothing can arrive there: ask to be served per recipient.
            self._fall_back(addr, now)
            return
        self._member = member
        self._downlink = _Downlink(sock, addr, now)

    def _join_iface_v4(self) -> str:
        """The IPv4 interface to join on: the group target's, else the local
        address that routes to the server."""
        if self.group and ipaddress.ip_address(self.group.split("%")[0]).version == 4:
            return _ipv4_address(self.iface)
        local = _local_route(self._peer) if self._peer else None
        return local if local and ":" not in local else "0.0.0.0"

    def _join_index(self) -> int:
        """The IPv6 interface index to join on: the group target's, the
        server's scope (a link-local server), the interface holding the
        local address that routes to the server, or 0 (the kernel's choice)."""
        if self.group and ":" in self.group and self.iface not in (None, ""):
            return _ipv6_index(self.iface)
        peer = self._peer
        if peer is None or len(peer) != 4:
            return 0
        if peer[3]:
            return peer[3]
        local = _local_route(peer)
        try:
            return _ipv6_index(local) if local else 0
        except ValueError:
            return 0

    def _leave_downlink(self) -> None:
        """Ends group mode locally: closing the socket leaves the group."""
        if self._downlink is not None:
            self._downlink.sock.close()
        self._downlink = None
        self._member = None

    def _fall_back(self, addr: Tuple[str, int], now: float) -> None:
        """The downlink failed: group mode ends and a quiet background
        handshake without GROUP asks the relay to serve us per recipient."""
        self._leave_downlink()
        self._group_off = True
        self._events.append(events.DownlinkSilent(_addr_text(addr)))
        if self._recovery is None and self.connected:
            first = max(now, self._last_hello + REHANDSHAKE_EVERY)
            self._recovery = _Recovery(now, first, None, self._authentic, self.pin_mismatches,
                                       quiet=True)

    def _run_group(self, now: float) -> Optional[float]:
        """Key requests, probes and expiries; returns when next due."""
        d, m = self._downlink, self._member
        if d is None or m is None or not self.connected:
            return None
        m.expire(now)
        epoch = m.key_request(now)
        if epoch is not None:
            self._send_token(protocol.KEEPALIVE, [(protocol.KEY_REQUEST, struct.pack(">I", epoch))])
            self._stats["key_requests"] += 1
        step = d.probe.step(now)
        if step == group.Probe.SEND:
            self._send_token(protocol.KEEPALIVE, [(protocol.PROBE, b"")])
            self._stats["probes"] += 1
        elif step == group.Probe.SILENT:
            self._fall_back(d.addr, now)
            return None
        times = [t for t in (m.next_timeout(), d.probe.next_timeout()) if t is not None]
        return min(times) if times else None

    def _on_downlink(self, data: bytes, src, nested: bool = False) -> None:
        """A datagram from the downlink socket: one GROUP_DATA, or a
        FRAGMENT of one (reassembled per source). Nothing else is acted on
        there; the signature, not the source, says who sent it."""
        try:
            tlvs = protocol.decode_tlvs(data)
        except Malformed:
            self._stats["malformed"] += 1
            return
        if self._member is None:
            self._stats["not_member"] += 1
            return
        if not tlvs:
            self._stats["malformed"] += 1
            return
        # The relay sends one item per datagram; more would buy a stranger
        # one signature check each.
        self._stats["malformed"] += len(tlvs) - 1
        kind, value = tlvs[0]
        if kind == protocol.GROUP_DATA:
            self._on_group_data(value)
        elif kind == protocol.FRAGMENT and not nested:
            whole = self._down_reasm.add(value, src)
            if whole is not None:
                self._on_downlink(whole, src, nested=True)
        else:
            self._stats["malformed"] += 1

    def _on_group_data(self, value: bytes) -> None:
        m, d = self._member, self._downlink
        try:
            inner = m.open(time.monotonic(), value)
        except group.Refused as r:
            if r.cause not in ("malformed", "bad_signature") and d is not None:
                d.probe.heard = True  # the relay's signature: multicast reaches us
            self._stats[r.cause] += 1
            return
        if d is not None:
            d.probe.heard = True
        self._stats["opened"] += 1
        self._group_notice(inner)

    def _deliver_released(self, released) -> None:
        for inner in released:
            self._stats["released"] += 1
            self._group_notice(inner)

    def _group_notice(self, inner: protocol.Inner) -> None:
        """A group plaintext the member accepted (GSEQ checked)."""
        f = inner.fields
        me = self.client_id.encode() if self.client_id else None
        if me is not None and me in (f.get(protocol.SENDER_ID), f.get(protocol.PEER_JOINED)):
            self._stats["own_echo"] += 1
            return
        if inner.shape() == _PROBE:
            return  # a probe's answer: it only proves the downlink works
        event = self._event_of(inner)
        if event is None:
            self._stats["bad_inner"] += 1
            return
        if isinstance(event, events.ServerClosing):
            self._leave_downlink()
        self._events.append(event)

    # --- receiving ------------------------------------------------------------

    def _reset(self) -> None:
        """Forgets the session (keys, SEQ spaces, id, group mode) and any handshake."""
        self._attempt = None
        self._recovery = None
        self._hint = None
        self._fernet = None
        self._rx = None
        self._tx_seq = 0
        self._version: Optional[int] = None
        self._caps = 0
        self._raw = False
        self._leave_downlink()
        self.client_id: Optional[str] = None

    def _pump(self, deadline: float) -> bool:
        """Receives and handles what one wait brings (session socket and
        downlink); False on timeout."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            socks = [self._sock] + ([self._downlink.sock] if self._downlink else [])
            try:
                ready, _, _ = select.select(socks, [], [], remaining)
            except InterruptedError:
                continue
            handled = False
            for s in ready:
                is_session = s is self._sock
                if not is_session and (self._downlink is None or s is not self._downlink.sock):
                    continue  # the downlink closed meanwhile
                try:
                    data, src = s.recvfrom(65535, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                    continue  # ICMP port unreachable, or nothing after all
                if not is_session:
                    self._on_downlink(data, src)
                    handled = True
                elif self._accept_source(src):
                    self._handle(data, src)
                    self._after_datagram()
                    handled = True
            if handled:
                return True

    def _accept_source(self, src) -> bool:
        if self._peer is not None:
            return _same_source(src, self._peer)
        # Multicast mode before SERVER_KEY: the server answers from its own
        # unicast address, which we learn from that answer.
        return src[1] == self._server[1]

    def _handle(self, data: bytes, src, nested: bool = False) -> None:
        try:
            tlvs = protocol.decode_tlvs(data)
        except Malformed:
            self._dropped += 1
            return
        offer = {}
        for kind, value in tlvs:
            if kind == protocol.FRAGMENT and not nested:
                whole = self._reasm.add(value, src)
                if whole is not None:
                    self._handle(whole, src, nested=True)
            elif kind == protocol.REJECT:
                self._on_reject(value)
            elif kind in (protocol.WELCOME, protocol.DATA):
                self._on_token(kind, value)
            elif kind in (protocol.SERVER_KEY, protocol.COOKIE, protocol.VERSIONS) \
                    and kind not in offer:
                offer[kind] = value
            else:
                # GROUP_DATA comes on the downlink, never on the session socket.
                self._dropped += 1
        if offer:
            self._on_offer(offer, src)

    def _on_reject(self, value: bytes) -> None:
        if len(value) != 1:
            self._dropped += 1
            return
        reason, a = value[0], self._attempt
        if a is not None and a.fernet is not None and reason in (
                protocol.AUTH_FAILED, protocol.SERVER_FULL, protocol.BAD_COOKIE):
            if a.refused is None:
                a.refused, a.refused_at = reason, time.monotonic()
        elif self.connected and reason in (protocol.UNKNOWN_SESSION, protocol.AUTH_FAILED):
            self._hint = reason
        elif self.connected and reason == protocol.FORBIDDEN:
            # A subscriber's DATA was refused; the session goes on (v2 §5).
            self._events.append(events.Forbidden())
        else:
            self._dropped += 1

    def _on_offer(self, offer: dict, src) -> None:
        der, cookie = offer.get(protocol.SERVER_KEY), offer.get(protocol.COOKIE)
        a = self._attempt
        if a is None or a.fernet is not None or der is None or cookie is None \
                or len(cookie) != protocol.COOKIE_LEN:
            self._dropped += 1
            return
        try:
            key = serialization.load_der_public_key(der)
        except (ValueError, TypeError):
            self._dropped += 1
            return
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
            self._dropped += 1
            return
        fingerprint = hashlib.sha256(der).hexdigest()
        if self.pin is not None and fingerprint != self.pin:
            # Anyone can answer a HELLO: wait on for the pinned key.
            self.pin_mismatches += 1
            self._last_mismatch = fingerprint
            return
        token = self.token or b""
        # A token too long for CREDENTIAL can only travel in v1's SESSION_KEY.
        v2_possible = self.max_version == 2 and len(token) <= protocol.MAX_CREDENTIAL_LEN
        offers_v2 = 2 in offer.get(protocol.VERSIONS, b"")
        if v2_possible and self._server_v2 and not offers_v2:
            # v2 was offered before: an answer without it is a downgrade
            # (forged, or a relay rolled back); wait on for a v2 answer.
            self.downgrades += 1
            self._dropped += 1
            return
        self._server_v2 |= offers_v2
        self._server_der = der
        self._peer = src
        if self._recovery is not None:
            self._recovery.key_accepted = True
        fernet_key = Fernet.generate_key()
        if v2_possible and offers_v2:
            a.asked = self._caps_wanted()
            plain = protocol.encode_handshake(fernet_key, cookie, a.asked, self.token)
            kind = protocol.SESSION_KEY2
        else:
            plain, kind = fernet_key + token, protocol.SESSION_KEY
        ciphertext = key.encrypt(plain, _OAEP)
        a.fernet, a.rx = Fernet(fernet_key), protocol.ReplayWindow(1024)
        self._sock.sendto(protocol.encode_tlv(protocol.COOKIE, cookie)
                          + protocol.encode_tlv(kind, ciphertext), self._dest)

    def _open(self, fernet: Optional[Fernet], token: bytes) -> Optional[protocol.Inner]:
        if fernet is None:
            return None
        try:
            # Raw or text (v2 §4: the first byte tells them apart). No ttl,
            # on purpose (group.open_token says why): the SEQ window is
            # what refuses replays (protocol v2 section 7).
            return protocol.parse_inner(group.open_token(fernet, token))
        except (InvalidToken, Malformed, ValueError, TypeError):
            return None

    def _on_token(self, kind: int, token: bytes) -> None:
        a = self._attempt
        inner = self._open(self._fernet, token) if self.connected else None
        pending = False
        if inner is None and a is not None and (self.connected or kind == protocol.WELCOME):
            inner, pending = self._open(a.fernet, token), True
        # Pairwise tokens carry SEQ; a GSEQ belongs on the downlink only.
        ok = inner is not None and not inner.gseq
        event = self._classify(kind, inner, pending) if ok else None
        rx = a.rx if pending else self._rx
        # SEQ is recorded only for authentic, well-formed tokens.
        if event is None or not rx.update(inner.seq):
            self._dropped += 1
            return
        self._authentic += 1
        quiet = self._recovery is not None and self._recovery.quiet
        if pending:
            if kind == protocol.WELCOME:
                self._welcomed(event, a, inner)
                return
            # A DATA under the new key: its WELCOME was lost, the id stays.
            self._welcomed(self.client_id, a, None)
        elif a is not None and a.fernet is None and not quiet:
            # The session spoke before our new SESSION_KEY went out: the
            # server still knows us, the hint was false.
            self._attempt = None
            if self._recovery is not None:
                self._recovery = None
                self._events.append(events.Reconnected(self.client_id))
        if event is _KEY:
            # A rekey, or the answer to a KEY_REQUEST.
            if self._member is not None:
                value = inner.fields[protocol.GROUP_KEY]
                epoch = struct.unpack(">I", value[:4])[0]
                self._deliver_released(self._member.set_key(time.monotonic(), epoch, value[4:]))
            return
        if isinstance(event, events.PeerLeft) and event.id == self.client_id \
                and event.reason == protocol.LEFT_REVOKED:
            # Our credential was removed: the session is over, and a new
            # handshake would only be refused (v2 §5).
            self._reset()
            self._events.append(events.Revoked(event.id))
            return
        if isinstance(event, events.ServerClosing):
            self._leave_downlink()
        self._events.append(event)

    def _classify(self, kind: int, inner: protocol.Inner, pending: bool):
        """What a pairwise token stands for: the client id (WELCOME), an
        event, ``_KEY`` (GROUP_KEY), or None if its shape is invalid."""
        f, shape = inner.fields, inner.shape()
        try:
            if kind == protocol.WELCOME:
                ok = pending and protocol.CLIENT_ID in f \
                    and shape - {protocol.CLIENT_ID} <= _WELCOME_V2
                return f[protocol.CLIENT_ID].decode() if ok else None
        except UnicodeDecodeError:
            return None
        if shape == _GROUP_KEY:
            return _KEY
        return self._event_of(inner)

    @staticmethod
    def _event_of(inner: protocol.Inner):
        """The event of a message or notice (DATA or GROUP_DATA), or None."""
        f, shape = inner.fields, inner.shape()
        try:
            if shape == _RELAY:
                return events.Message(f[protocol.SENDER_ID].decode(), f[protocol.BODY])
            if shape == _JOINED:
                return events.PeerJoined(f[protocol.PEER_JOINED].decode())
            if shape == _LEFT:
                return events.PeerLeft(f[protocol.PEER_LEFT].decode(), f[protocol.REASON][0])
            if shape == _CLOSING:
                return events.ServerClosing()
        except UnicodeDecodeError:
            pass
        return None
