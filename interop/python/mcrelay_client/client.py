"""A blocking mcrelay v1 client over one UDP socket.

Handshake (§5.1): HELLO -> SERVER_KEY+COOKIE -> COOKIE+SESSION_KEY -> WELCOME.
Afterwards every datagram is a Fernet token under the client's own key whose
plaintext starts with a SEQ. Invalid, malformed, replayed or unexpected input
is dropped silently and counted in :attr:`Client.dropped`.

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

import hashlib
import ipaddress
import os
import socket
import struct
import time
from collections import deque
from typing import Optional, Tuple, Union

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from . import errors, events, protocol
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
_WELCOME = frozenset({protocol.CLIENT_ID})


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


class _Attempt:
    """One handshake attempt, from HELLO to WELCOME."""

    def __init__(self, now: float):
        self.started = now
        self.fernet: Optional[Fernet] = None   # set once our SESSION_KEY went out
        self.rx: Optional[protocol.ReplayWindow] = None
        self.refused: Optional[int] = None     # REJECT 2/3/4 after our SESSION_KEY
        self.refused_at: Optional[float] = None


class _Recovery:
    """A background handshake started by a REJECT hint, until welcomed."""

    def __init__(self, now: float, first: float, reason: int, authentic: int, pins: int):
        self.since = now
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
    as UTF-8). ``pin`` is the expected hex SHA-256 of the server's DER public
    key (colons allowed). Payloads larger than ``max_datagram`` bytes are
    sent as FRAGMENTs; the two handshake datagrams never are (the server
    does not buffer fragments from unregistered addresses). ``timeout`` is
    the handshake deadline and the default for :meth:`recv`.
    ``rehandshake``: answer REJECT hints with a background handshake (see
    the module doc); when False they come out of :meth:`recv` as
    :class:`events.Rejected` and nothing else happens.
    """

    def __init__(self, server: Tuple[str, int] = ("127.0.0.1", 5007), group: Optional[str] = None,
                 iface: Union[str, int, None] = None, token: Union[bytes, str, None] = None,
                 pin: Optional[str] = None, max_datagram: int = protocol.DEFAULT_MAX_DATAGRAM,
                 timeout: float = 5.0, rehandshake: bool = True, ttl: int = 0):
        if isinstance(token, str):
            token = token.encode()
        if token is not None and not 1 <= len(token) <= protocol.MAX_ACCESS_TOKEN_LEN:
            raise ValueError(f"access token must be 1..{protocol.MAX_ACCESS_TOKEN_LEN} bytes")
        if not 64 <= max_datagram <= 65507:
            raise ValueError("max_datagram must be 64..65507")
        if not 0 <= ttl <= 255:
            raise ValueError("ttl must be 0..255")
        host, port = server
        self.group = group
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
        seconds (default: the client's ``timeout``). Background handshakes
        run from here.

        Events: :class:`events.Message`, :class:`events.PeerJoined`,
        :class:`events.PeerLeft`, :class:`events.ServerClosing`,
        :class:`events.Rejected` (a hint acted on), :class:`events.Reconnected`.
        Raises :class:`errors.Rejected` when a background handshake was
        refused twice in a row with REJECT 2, :class:`errors.PinMismatch`
        when only other keys than ``pin`` answered it for ``timeout``.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._events:
            now = time.monotonic()
            wake = self._run_recovery(now)
            if self._events:
                break
            if now >= deadline:
                return None
            self._pump(deadline if wake is None else min(deadline, wake))
        return self._events.popleft()

    def close(self) -> None:
        """Closes the socket (sends nothing; call :meth:`bye` first to leave)."""
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

    # --- background handshakes ----------------------------------------------

    def _run_recovery(self, now: float) -> Optional[float]:
        """Sends the recovery's HELLOs when due; returns when it next needs attention."""
        r = self._recovery
        if r is None:
            return None
        if not r.started and self._authentic > r.authentic_at_hint:
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
        if hint is None or self._recovery is not None or not self.connected:
            return
        if not self.rehandshake:
            self._events.append(events.Rejected(hint))
            return
        now = time.monotonic()
        first = max(now + HINT_GRACE, self._last_hello + REHANDSHAKE_EVERY)
        self._recovery = _Recovery(now, first, hint, self._authentic, self.pin_mismatches)

    def _welcomed(self, client_id: str, a: _Attempt) -> None:
        """Makes the attempt's session the session."""
        self._fernet, self._rx, self._tx_seq = a.fernet, a.rx, 0
        self.client_id = client_id
        self._attempt = None
        self._hint = None  # about the session just replaced
        if self._recovery is not None:
            self._recovery = None
            self._events.append(events.Reconnected(client_id))

    # --- receiving ------------------------------------------------------------

    def _reset(self) -> None:
        """Forgets the session (keys, SEQ spaces, id) and any handshake."""
        self._attempt = None
        self._recovery = None
        self._hint = None
        self._fernet = None
        self._rx = None
        self._tx_seq = 0
        self.client_id: Optional[str] = None

    def _pump(self, deadline: float) -> bool:
        """Receives and handles at most one datagram; False on timeout."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._sock.settimeout(remaining)
            try:
                data, src = self._sock.recvfrom(65535)
            except socket.timeout:
                return False
            except ConnectionRefusedError:  # ICMP port unreachable
                continue
            if self._accept_source(src):
                self._handle(data, src)
                self._after_datagram()
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
            elif kind in (protocol.SERVER_KEY, protocol.COOKIE) and kind not in offer:
                offer[kind] = value
            else:
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
        self._server_der = der
        self._peer = src
        if self._recovery is not None:
            self._recovery.key_accepted = True
        fernet_key = Fernet.generate_key()
        ciphertext = key.encrypt(fernet_key + (self.token or b""), _OAEP)
        a.fernet, a.rx = Fernet(fernet_key), protocol.ReplayWindow(1024)
        self._sock.sendto(protocol.encode_tlv(protocol.COOKIE, cookie)
                          + protocol.encode_tlv(protocol.SESSION_KEY, ciphertext), self._dest)

    def _open(self, fernet: Optional[Fernet], token: bytes) -> Optional[protocol.Inner]:
        if fernet is None:
            return None
        try:
            # No ttl, on purpose: without one, cryptography (>= 1.2) checks
            # neither the token's age nor how far ahead of our clock it is
            # stamped. Clocks on routers and boards are often wrong; the SEQ
            # window is what refuses replays (protocol v2 section 7).
            return protocol.parse_inner(fernet.decrypt(token))
        except (InvalidToken, Malformed, ValueError, TypeError):
            return None

    def _on_token(self, kind: int, token: bytes) -> None:
        a = self._attempt
        inner = self._open(self._fernet, token) if self.connected else None
        pending = False
        if inner is None and a is not None and (self.connected or kind == protocol.WELCOME):
            inner, pending = self._open(a.fernet, token), True
        event = None if inner is None else self._classify(kind, inner, pending)
        rx = a.rx if pending else self._rx
        # SEQ is recorded only for authentic, well-formed tokens.
        if event is None or not rx.update(inner.seq):
            self._dropped += 1
            return
        self._authentic += 1
        if pending:
            # A DATA under the new key: its WELCOME was lost, the id stays.
            self._welcomed(event if kind == protocol.WELCOME else self.client_id, a)
            if kind == protocol.WELCOME:
                return
        elif a is not None and a.fernet is None:
            # The session spoke before our new SESSION_KEY went out: the
            # server still knows us, the hint was false.
            self._attempt = None
            if self._recovery is not None:
                self._recovery = None
                self._events.append(events.Reconnected(self.client_id))
        self._events.append(event)

    def _classify(self, kind: int, inner: protocol.Inner, pending: bool):
        """The event a token stands for, or None if its shape is invalid."""
        f, shape = inner.fields, inner.shape()
        try:
            if kind == protocol.WELCOME:
                ok = pending and shape == _WELCOME
                return f[protocol.CLIENT_ID].decode() if ok else None
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
