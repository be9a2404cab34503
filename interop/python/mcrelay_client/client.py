"""A blocking mcrelay v1 client over one UDP socket.

Handshake (§5.1): HELLO -> SERVER_KEY+COOKIE -> COOKIE+SESSION_KEY -> WELCOME.
Afterwards every datagram is a Fernet token under the client's own key whose
plaintext starts with a SEQ. Invalid, malformed, replayed or unexpected input
is dropped silently and counted in :attr:`Client.dropped`.
"""

import hashlib
import os
import socket
import time
from collections import deque
from typing import Optional, Tuple, Union

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from . import errors, events, protocol
from .protocol import Malformed

HELLO_RETRY = 1.0
"""Seconds between HELLO retransmissions while waiting for SERVER_KEY."""
MIN_RSA_BITS = 2048
"""Smaller server keys are ignored (and could not carry key + token)."""

_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()),
                     algorithm=hashes.SHA256(), label=None)

_RELAY = frozenset({protocol.SENDER_ID, protocol.BODY})
_JOINED = frozenset({protocol.PEER_JOINED})
_LEFT = frozenset({protocol.PEER_LEFT, protocol.REASON})
_CLOSING = frozenset({protocol.SERVER_CLOSING})
_WELCOME = frozenset({protocol.CLIENT_ID})


class Client:
    """One mcrelay session.

    ``server`` is ``(host, port)``. With ``group`` set, every datagram goes to
    ``(group, port)`` as multicast, out of interface ``iface`` with TTL 0
    (never leaves the host); the server's unicast address is learned from its
    SERVER_KEY answer. Without ``group``, datagrams go to ``server`` by
    unicast. The socket is bound to ``(iface, 0)``.

    ``token`` is the optional access token (1..146 bytes, or a str encoded
    as UTF-8). ``pin`` is the expected hex SHA-256 of the server's DER public
    key (colons allowed). Payloads larger than ``max_datagram`` bytes are
    sent as FRAGMENTs; the two handshake datagrams never are (the server
    does not buffer fragments from unregistered addresses). ``timeout`` is
    the handshake deadline and the default for :meth:`recv`.
    """

    def __init__(self, server: Tuple[str, int] = ("127.0.0.1", 5007), group: Optional[str] = None,
                 iface: str = "127.0.0.1", token: Union[bytes, str, None] = None,
                 pin: Optional[str] = None, max_datagram: int = protocol.DEFAULT_MAX_DATAGRAM,
                 timeout: float = 5.0):
        if isinstance(token, str):
            token = token.encode()
        if token is not None and not 1 <= len(token) <= protocol.MAX_ACCESS_TOKEN_LEN:
            raise ValueError(f"access token must be 1..{protocol.MAX_ACCESS_TOKEN_LEN} bytes")
        if not 64 <= max_datagram <= 65507:
            raise ValueError("max_datagram must be 64..65507")
        host, port = server
        self._server = (socket.gethostbyname(host), int(port))
        self.group = group
        self.token = token
        self.pin = pin.replace(":", "").strip().lower() if pin else None
        self.max_datagram = max_datagram
        self.timeout = timeout
        if group:
            self._dest = (group, self._server[1])
        else:
            self._dest = self._server
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if group:
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        self._sock.bind((iface, 0))
        self._peer: Optional[Tuple[str, int]] = None if group else self._server
        self._reasm = protocol.Reassembler()
        self._msg_id = int.from_bytes(os.urandom(4), "big")
        self._dropped = 0
        self._events: deque = deque()
        self._server_der: Optional[bytes] = None
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

    def connect(self) -> str:
        """Runs the handshake and returns the client id the server assigned.

        A new handshake replaces any previous session (both SEQ spaces
        restart at 1). Raises :class:`errors.Rejected` on REJECT,
        :class:`errors.PinMismatch` if ``pin`` does not match,
        :class:`errors.HandshakeTimeout` after ``timeout`` seconds.
        """
        self._reset()
        self._server_der = None
        self._peer = None if self.group else self._server
        self._events.clear()
        self._phase = "hello"
        deadline = time.monotonic() + self.timeout
        hello = protocol.hello_datagram()
        next_hello = 0.0
        while self._offer is None:
            now = time.monotonic()
            if now >= next_hello:
                self._sock.sendto(hello, self._dest)
                next_hello = now + HELLO_RETRY
            self._pump(min(deadline, next_hello))
            self._check_handshake(deadline, self._offer is not None)

        der, cookie = self._offer
        self._server_der = der
        if self.pin is not None and self.fingerprint != self.pin:
            self._phase = None
            raise errors.PinMismatch(self.pin, self.fingerprint)
        key = Fernet.generate_key()
        secret = key + (self.token or b"")
        ciphertext = serialization.load_der_public_key(der).encrypt(secret, _OAEP)
        self._fernet = Fernet(key)
        self._rx = protocol.ReplayWindow(1024)
        self._phase = "welcome"
        self._sock.sendto(protocol.encode_tlv(protocol.COOKIE, cookie)
                          + protocol.encode_tlv(protocol.SESSION_KEY, ciphertext), self._dest)
        while self.client_id is None:
            self._pump(deadline)
            self._check_handshake(deadline, self.client_id is not None)
        self._phase = "up"
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
        seconds (default: the client's ``timeout``).

        Events: :class:`events.Message`, :class:`events.PeerJoined`,
        :class:`events.PeerLeft`, :class:`events.ServerClosing`,
        :class:`events.Rejected`.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._events:
            if not self._pump(deadline):
                return None
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

    # --- receiving ------------------------------------------------------------

    def _reset(self) -> None:
        """Forgets the session (keys, SEQ spaces, id)."""
        self._phase = None
        self._offer = None
        self._reject = None
        self._fernet = None
        self._rx = None
        self._tx_seq = 0
        self.client_id: Optional[str] = None

    def _check_handshake(self, deadline: float, done: bool) -> None:
        if self._reject is not None:
            reason, self._reject = self._reject, None
            self._phase = None
            self._fernet = None
            raise errors.Rejected(reason)
        if not done and time.monotonic() >= deadline:
            self._phase = None
            self._fernet = None
            raise errors.HandshakeTimeout(f"no answer from {self._dest[0]}:{self._dest[1]}"
                                          f" within {self.timeout:g} s")

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
                return True

    def _accept_source(self, src) -> bool:
        if self._peer is not None:
            return src == self._peer
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
        elif self._phase in ("hello", "welcome"):
            self._reject = value[0]
        elif self._phase == "up":
            self._events.append(events.Rejected(value[0]))
        else:
            self._dropped += 1

    def _on_offer(self, offer: dict, src) -> None:
        der, cookie = offer.get(protocol.SERVER_KEY), offer.get(protocol.COOKIE)
        if self._phase != "hello" or der is None or cookie is None \
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
        self._offer = (der, cookie)
        self._peer = src

    def _on_token(self, kind: int, token: bytes) -> None:
        if self._fernet is None:
            self._dropped += 1
            return
        try:
            # No ttl, on purpose: without one, cryptography (>= 1.2) checks
            # neither the token's age nor how far ahead of our clock it is
            # stamped. Clocks on routers and boards are often wrong; the SEQ
            # window below is what refuses replays (protocol v2 section 7).
            inner = protocol.parse_inner(self._fernet.decrypt(token))
        except (InvalidToken, Malformed, ValueError, TypeError):
            self._dropped += 1
            return
        event = self._classify(kind, inner)
        # SEQ is recorded only for authentic, well-formed tokens.
        if event is None or not self._rx.update(inner.seq):
            self._dropped += 1
            return
        if kind == protocol.WELCOME:
            self.client_id = event
        else:
            self._events.append(event)

    def _classify(self, kind: int, inner: protocol.Inner):
        """The event a token stands for, or None if its shape is invalid."""
        f, shape = inner.fields, inner.shape()
        try:
            if kind == protocol.WELCOME:
                ok = self._phase == "welcome" and shape == _WELCOME
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
