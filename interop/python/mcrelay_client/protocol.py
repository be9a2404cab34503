"""mcrelay wire protocol, versions 1 and 2: framing, fragments, the
anti-replay window, the v2 handshake plaintext, GROUP_DATA and GROUP_ADDR.

Pure functions and small classes, no sockets, no cryptography (the group
keys and signatures are :mod:`.group`'s). The contracts are
``protocol-v1.md`` and ``protocol-v2.md``; "§" numbers below refer to v1
unless they say v2. The repository's PROTOCOL.md §11.8 has worked bytes.

Parsing is strict (§2): a TLV whose length runs past the end of the buffer,
or 1-3 trailing bytes, make the whole buffer :class:`Malformed`.
"""

import ipaddress
import struct
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

# --- Outer (datagram-level) types, §3 ---------------------------------------
HELLO = 0x0001
SERVER_KEY = 0x0002
SESSION_KEY = 0x0003
WELCOME = 0x0004
DATA = 0x0005
FRAGMENT = 0x0006
KEEPALIVE = 0x0007
BYE = 0x0008
REJECT = 0x0009
COOKIE = 0x000A
SESSION_KEY2 = 0x000B
"""v2: RSA-OAEP of a handshake TLV stream (FERNET_KEY, BIND, CAPS, CREDENTIAL)."""
GROUP_DATA = 0x000C
"""v2: ``epoch u32 | Ed25519 signature (64) | raw token``, sent to the downlink."""
VERSIONS = 0x000D
"""v2: the versions the server speaks, one byte each, next to SERVER_KEY."""

# --- Inner (token plaintext) types, §4 --------------------------------------
SEQ = 0x0101
BODY = 0x0102
SENDER_ID = 0x0103
CLIENT_ID = 0x0104
PEER_JOINED = 0x0105
PEER_LEFT = 0x0106
REASON = 0x0107
SERVER_CLOSING = 0x0108
CAPS = 0x0109
"""v2 WELCOME: u32 capabilities granted."""
GROUP_KEY = 0x010A
"""v2: ``epoch u32 | 44-byte Fernet key`` of the group."""
GROUP_ADDR = 0x010B
"""v2 WELCOME: ``family u8 | address | port u16``, where GROUP_DATA is sent."""
GROUP_SIGNER = 0x010C
"""v2 WELCOME: the 32-byte Ed25519 public key that signs every GROUP_DATA."""
GSEQ = 0x010D
"""v2 group tokens: u64 group sequence number, in place of SEQ."""
KEY_REQUEST = 0x010E
"""v2 KEEPALIVE: u32 epoch whose key the member lacks."""
PROBE = 0x010F
"""v2: downlink probe (empty)."""

# --- v2 handshake plaintext (SESSION_KEY2), v2 §3 ---------------------------
HS_FERNET_KEY = 0x0201
HS_BIND = 0x0202
HS_CAPS = 0x0203
HS_CREDENTIAL = 0x0204
CAP_GROUP = 1
"""Capability bit 0: group mode."""
CAP_RAW = 2
"""Capability bit 1: raw (binary) pairwise tokens."""
MAX_CREDENTIAL_LEN = 110
"""Longest CREDENTIAL: the handshake still fits one RSA-2048 OAEP block."""

# --- REJECT reasons (u8) ------------------------------------------------------
UNKNOWN_SESSION = 1
AUTH_FAILED = 2
SERVER_FULL = 3
BAD_COOKIE = 4
FORBIDDEN = 5
REJECT_NAMES = {
    UNKNOWN_SESSION: "UNKNOWN_SESSION",
    AUTH_FAILED: "AUTH_FAILED",
    SERVER_FULL: "SERVER_FULL",
    BAD_COOKIE: "BAD_COOKIE",
    FORBIDDEN: "FORBIDDEN",
}

# --- PEER_LEFT reasons (REASON u8) ---------------------------------------------
LEFT_BYE = 1
LEFT_TIMEOUT = 2
LEFT_KICKED = 3
LEFT_SHUTDOWN = 4
LEFT_REVOKED = 5
LEFT_UNREACHABLE = 6
LEFT_NAMES = {
    LEFT_BYE: "bye",
    LEFT_TIMEOUT: "timeout",
    LEFT_KICKED: "kicked",
    LEFT_SHUTDOWN: "server shutdown",
    LEFT_REVOKED: "revoked",
    LEFT_UNREACHABLE: "unreachable",
}

# --- Sizes ------------------------------------------------------------------
VERSION = 1
"""Protocol version byte carried in HELLO (1 for v2 too: v2 is negotiated
inside SESSION_KEY2)."""
HELLO_LEN = 256
"""Size of the HELLO datagram (the server ignores anything shorter)."""
COOKIE_LEN = 16
"""Length of the address-validation cookie."""
FERNET_KEY_LEN = 44
"""Length of a URL-safe base64 Fernet key."""
MAX_ACCESS_TOKEN_LEN = 146
"""Longest access token that fits next to the key in one RSA-2048 OAEP block."""
TLV_HEADER_LEN = 4
MAX_VALUE_LEN = 0xFFFF
"""Largest value one TLV can carry (u16 length)."""
DEFAULT_MAX_DATAGRAM = 1200
"""Datagrams larger than this are sent as FRAGMENTs (§5.6)."""
FRAGMENT_HEADER_LEN = 8
"""msg_id u32 | index u16 | count u16, in front of each chunk."""
FRAGMENT_OVERHEAD = TLV_HEADER_LEN + FRAGMENT_HEADER_LEN
"""Bytes a FRAGMENT datagram spends on headers (12)."""
SIGNATURE_LEN = 64
"""Length of an Ed25519 signature."""
GROUP_HEADER_LEN = 4 + SIGNATURE_LEN
"""Bytes of a GROUP_DATA value before its token: epoch and signature."""
SIGNING_CONTEXT = b"mcrelay-v2 group"
"""What a GROUP_DATA signature's message starts with."""
SIGNER_LEN = 32
"""Length of an Ed25519 public key (GROUP_SIGNER)."""
GROUP_KEY_LEN = 4 + FERNET_KEY_LEN

_INNER_TYPES = range(SEQ, PROBE + 1)
# Inner types of a fixed size (v2 §3, §4); GROUP_ADDR is checked by parse_group_addr.
_FIXED = {SEQ: 8, GSEQ: 8, REASON: 1, CAPS: 4, GROUP_KEY: GROUP_KEY_LEN,
          GROUP_SIGNER: SIGNER_LEN, KEY_REQUEST: 4}


class Malformed(ValueError):
    """A buffer breaks the framing or inner-TLV rules; drop it whole."""


# --- TLV framing, §2 --------------------------------------------------------

def encode_tlv(kind: int, value: bytes) -> bytes:
    """Encodes one TLV: ``type u16 BE | length u16 BE | value``.

    Raises ``ValueError`` if ``kind`` is not a u16 or ``value`` is longer
    than 65535 bytes.
    """
    if not 0 <= kind <= 0xFFFF:
        raise ValueError(f"TLV type {kind} is not a u16")
    if len(value) > MAX_VALUE_LEN:
        raise ValueError(f"TLV value of {len(value)} bytes exceeds {MAX_VALUE_LEN}")
    return struct.pack(">HH", kind, len(value)) + bytes(value)


def encode_tlvs(tlvs: Iterable[Tuple[int, bytes]]) -> bytes:
    """Encodes ``(type, value)`` pairs back to back."""
    return b"".join(encode_tlv(k, v) for k, v in tlvs)


def decode_tlvs(buf: bytes) -> List[Tuple[int, bytes]]:
    """Decodes a TLV stream into ``(type, value)`` pairs, in order.

    An empty buffer is an empty stream. Raises :class:`Malformed` if a TLV
    runs past the end or 1-3 bytes trail.
    """
    out = []
    pos, end = 0, len(buf)
    while pos < end:
        if end - pos < TLV_HEADER_LEN:
            raise Malformed(f"{end - pos} trailing bytes")
        kind, length = struct.unpack_from(">HH", buf, pos)
        pos += TLV_HEADER_LEN
        if end - pos < length:
            raise Malformed(f"TLV 0x{kind:04x} length {length} runs past the end")
        out.append((kind, bytes(buf[pos:pos + length])))
        pos += length
    return out


def encode_u64(v: int) -> bytes:
    """A u64 big-endian (the SEQ value)."""
    return struct.pack(">Q", v)


def hello_datagram() -> bytes:
    """The HELLO datagram: version byte 1, zero padding, exactly 256 bytes."""
    value = bytes([VERSION]) + bytes(HELLO_LEN - TLV_HEADER_LEN - 1)
    return encode_tlv(HELLO, value)


# --- Inner plaintext, §4 ----------------------------------------------------

@dataclass
class Inner:
    """A validated token plaintext. ``seq`` is the SEQ, or the GSEQ when
    ``gseq`` is true (a group token). ``fields`` maps each known inner type
    present, other than SEQ/GSEQ, to its raw value."""

    seq: int
    fields: Dict[int, bytes]
    gseq: bool = False

    def shape(self) -> frozenset:
        """The set of known inner types present, SEQ and GSEQ excluded."""
        return frozenset(self.fields)


def encode_inner(seq: int, tlvs: Iterable[Tuple[int, bytes]] = (), kind: int = SEQ) -> bytes:
    """A plaintext: the SEQ TLV (or GSEQ, with ``kind=GSEQ``) first, then ``tlvs``."""
    return encode_tlv(kind, encode_u64(seq)) + encode_tlvs(tlvs)


def parse_inner(plain: bytes) -> Inner:
    """Parses a token plaintext.

    Rules (§4, v2 §3-§4): exactly one of SEQ and GSEQ, 8 bytes; each known
    inner type at most once; fixed-size types (REASON 1, CAPS 4, GROUP_KEY
    48, GROUP_SIGNER 32, KEY_REQUEST 4 bytes, GROUP_ADDR as
    :func:`parse_group_addr` reads it) of their size. Unknown types are
    skipped so later versions can add fields. Raises :class:`Malformed`
    otherwise.
    """
    seq = None
    gseq = False
    fields: Dict[int, bytes] = {}
    for kind, value in decode_tlvs(plain):
        if kind not in _INNER_TYPES:
            continue
        if kind in (SEQ, GSEQ):
            if seq is not None:
                raise Malformed("SEQ or GSEQ repeated, or both present")
        elif kind in fields:
            raise Malformed(f"inner type 0x{kind:04x} repeated")
        size = _FIXED.get(kind)
        if size is not None and len(value) != size:
            raise Malformed(f"inner type 0x{kind:04x} is {len(value)} bytes, not {size}")
        if kind in (SEQ, GSEQ):
            seq, gseq = struct.unpack(">Q", value)[0], kind == GSEQ
            continue
        if kind == GROUP_ADDR:
            parse_group_addr(value)
        fields[kind] = value
    if seq is None:
        raise Malformed("SEQ missing")
    return Inner(seq, fields, gseq)


# --- v2 handshake plaintext, GROUP_ADDR, GROUP_DATA ---------------------------

def encode_handshake(fernet_key: bytes, bind: bytes, caps: int,
                     credential: Optional[bytes] = None) -> bytes:
    """The SESSION_KEY2 plaintext (v2 §3): FERNET_KEY, BIND, CAPS and, when
    given, CREDENTIAL, in that order (as the Rust client writes it).

    Raises ``ValueError`` for a key that is not 44 bytes, a BIND that is not
    16, CAPS outside u32 or a credential outside 1..110 bytes.
    """
    if len(fernet_key) != FERNET_KEY_LEN or len(bind) != COOKIE_LEN:
        raise ValueError("FERNET_KEY is 44 bytes and BIND 16")
    if not 0 <= caps <= 0xFFFFFFFF:
        raise ValueError("CAPS is a u32")
    tlvs = [(HS_FERNET_KEY, fernet_key), (HS_BIND, bind), (HS_CAPS, struct.pack(">I", caps))]
    if credential is not None:
        if not 1 <= len(credential) <= MAX_CREDENTIAL_LEN:
            raise ValueError(f"a CREDENTIAL is 1..{MAX_CREDENTIAL_LEN} bytes")
        tlvs.append((HS_CREDENTIAL, credential))
    return encode_tlvs(tlvs)


def parse_handshake(plain: bytes) -> Tuple[bytes, bytes, int, Optional[bytes]]:
    """Parses a SESSION_KEY2 plaintext into ``(fernet_key, bind, caps,
    credential)`` as the server does: each type at most once, unknown types
    ignored, FERNET_KEY (44) and BIND (16) mandatory, CAPS 4 bytes (absent:
    0), CREDENTIAL 1..110 bytes. Raises :class:`Malformed` otherwise."""
    seen: Dict[int, bytes] = {}
    for kind, value in decode_tlvs(plain):
        if kind in (HS_FERNET_KEY, HS_BIND, HS_CAPS, HS_CREDENTIAL):
            if kind in seen:
                raise Malformed(f"handshake type 0x{kind:04x} repeated")
            seen[kind] = value
    key, bind = seen.get(HS_FERNET_KEY), seen.get(HS_BIND)
    caps, cred = seen.get(HS_CAPS, bytes(4)), seen.get(HS_CREDENTIAL)
    if key is None or len(key) != FERNET_KEY_LEN or bind is None or len(bind) != COOKIE_LEN \
            or len(caps) != 4 or (cred is not None and not 1 <= len(cred) <= MAX_CREDENTIAL_LEN):
        raise Malformed("handshake field missing or of the wrong size")
    return key, bind, struct.unpack(">I", caps)[0], cred


def parse_group_addr(value: bytes) -> Tuple[str, int]:
    """A GROUP_ADDR value (``family u8 (4 or 6) | address | port u16``) as
    ``(address text, port)``. Raises :class:`Malformed` otherwise."""
    if len(value) == 7 and value[0] == 4:
        ip = ipaddress.IPv4Address(value[1:5])
    elif len(value) == 19 and value[0] == 6:
        ip = ipaddress.IPv6Address(value[1:17])
    else:
        raise Malformed("GROUP_ADDR is neither family 4 (7 bytes) nor 6 (19 bytes)")
    return str(ip), struct.unpack(">H", value[-2:])[0]


def encode_group_addr(host: str, port: int) -> bytes:
    """The GROUP_ADDR value for ``(host, port)``."""
    ip = ipaddress.ip_address(host)
    return bytes([ip.version]) + ip.packed + struct.pack(">H", port)


def parse_group_data(value: bytes) -> Tuple[int, bytes, bytes]:
    """Splits a GROUP_DATA value into ``(epoch, signature, raw token)``.
    Raises :class:`Malformed` if it is shorter than its header or has no token."""
    if len(value) <= GROUP_HEADER_LEN:
        raise Malformed("GROUP_DATA without a token")
    epoch = struct.unpack_from(">I", value)[0]
    return epoch, bytes(value[4:GROUP_HEADER_LEN]), bytes(value[GROUP_HEADER_LEN:])


def group_signed_message(epoch: int, token: bytes) -> bytes:
    """What a GROUP_DATA signature covers: ``"mcrelay-v2 group" | epoch u32 | raw token``."""
    return SIGNING_CONTEXT + struct.pack(">I", epoch) + bytes(token)


def encode_group_data(epoch: int, signature: bytes, token: bytes) -> bytes:
    """The whole GROUP_DATA TLV (a relay's job; tests build them with it)."""
    if len(signature) != SIGNATURE_LEN:
        raise ValueError("an Ed25519 signature is 64 bytes")
    return encode_tlv(GROUP_DATA, struct.pack(">I", epoch) + bytes(signature) + bytes(token))


# --- Fragmentation, §3 FRAGMENT and §5.6 ------------------------------------

def split_datagram(payload: bytes, msg_id: int,
                   max_datagram: int = DEFAULT_MAX_DATAGRAM) -> List[bytes]:
    """Splits a datagram payload for sending.

    Returns ``[payload]`` if it fits in ``max_datagram`` bytes; otherwise a
    list of datagrams, each one FRAGMENT TLV of at most ``max_datagram``
    bytes (``msg_id u32 | index u16 | count u16 | chunk``). Raises
    ``ValueError`` if ``max_datagram`` leaves no room for a chunk or more
    than 65535 fragments would be needed.
    """
    if len(payload) <= max_datagram:
        return [bytes(payload)]
    chunk = max_datagram - FRAGMENT_OVERHEAD
    if chunk < 1:
        raise ValueError(f"max_datagram {max_datagram} leaves no room for a chunk")
    count = -(-len(payload) // chunk)
    if count > 0xFFFF:
        raise ValueError(f"{len(payload)} bytes need {count} fragments (max 65535)")
    msg_id &= 0xFFFFFFFF
    return [
        encode_tlv(FRAGMENT, struct.pack(">IHH", msg_id, i, count)
                   + payload[i * chunk:(i + 1) * chunk])
        for i in range(count)
    ]


def parse_fragment(value: bytes) -> Tuple[int, int, int, bytes]:
    """Splits a FRAGMENT value into ``(msg_id, index, count, chunk)``.

    Raises :class:`Malformed` if the header is short, ``count`` is 0 or
    ``index >= count``.
    """
    if len(value) < FRAGMENT_HEADER_LEN:
        raise Malformed("FRAGMENT shorter than its header")
    msg_id, index, count = struct.unpack_from(">IHH", value)
    if count == 0 or index >= count:
        raise Malformed(f"FRAGMENT index {index} out of range for count {count}")
    return msg_id, index, count, bytes(value[FRAGMENT_HEADER_LEN:])


class _Partial:
    __slots__ = ("count", "chunks", "size", "expires")

    def __init__(self, count: int, expires: float):
        self.count = count
        self.chunks: Dict[int, bytes] = {}
        self.size = 0
        self.expires = expires


class Reassembler:
    """Bounded reassembly of FRAGMENT values into datagram payloads.

    Limits: at most ``max_partial`` incomplete messages, ``max_message``
    bytes per message, ``max_total`` bytes buffered in all, ``max_age``
    seconds from a message's first fragment. A duplicate or out-of-range
    index, a count that disagrees with earlier fragments, or a message over
    a limit drops that message; each drop adds one to :attr:`dropped`
    (expired messages too). Messages are keyed by ``(source, msg_id)``;
    with ``max_per_source`` one source holds at most that many incomplete
    messages, so that one stranger cannot take every slot (the group
    downlink hears anyone who can send to the group).
    """

    def __init__(self, max_partial: int = 16, max_message: int = 256 * 1024,
                 max_total: int = 1024 * 1024, max_age: float = 10.0,
                 max_per_source: Optional[int] = None):
        self.max_partial = max_partial
        self.max_per_source = max_per_source
        self.max_message = max_message
        self.max_total = max_total
        self.max_age = max_age
        self.dropped = 0
        """Messages (or stray fragments) dropped so far."""
        self._partials: Dict[tuple, _Partial] = {}
        self._total = 0

    @property
    def buffered(self) -> int:
        """Bytes currently held in incomplete messages."""
        return self._total

    def __len__(self) -> int:
        return len(self._partials)

    def _discard(self, key) -> None:
        p = self._partials.pop(key, None)
        if p is not None:
            self._total -= p.size
        self.dropped += 1

    def expire(self, now: Optional[float] = None) -> None:
        """Drops incomplete messages older than ``max_age``."""
        now = time.monotonic() if now is None else now
        for key in [k for k, p in self._partials.items() if p.expires <= now]:
            self._discard(key)

    def add(self, value: bytes, source=None, now: Optional[float] = None) -> Optional[bytes]:
        """Takes one FRAGMENT value; returns the whole payload when this
        fragment completes it, else ``None``."""
        now = time.monotonic() if now is None else now
        self.expire(now)
        if len(value) < FRAGMENT_HEADER_LEN:
            self.dropped += 1
            return None
        msg_id, index, count = struct.unpack_from(">IHH", value)
        chunk = bytes(value[FRAGMENT_HEADER_LEN:])
        key = (source, msg_id)
        p = self._partials.get(key)
        if count == 0 or index >= count:
            self._discard(key)
            return None
        if p is None:
            if len(self._partials) >= self.max_partial or (
                    self.max_per_source is not None
                    and sum(1 for s, _ in self._partials if s == source) >= self.max_per_source):
                self.dropped += 1
                return None
            p = self._partials[key] = _Partial(count, now + self.max_age)
        elif p.count != count or index in p.chunks:
            self._discard(key)
            return None
        if p.size + len(chunk) > self.max_message or self._total + len(chunk) > self.max_total:
            self._discard(key)
            return None
        p.chunks[index] = chunk
        p.size += len(chunk)
        self._total += len(chunk)
        if len(p.chunks) < p.count:
            return None
        del self._partials[key]
        self._total -= p.size
        return b"".join(p.chunks[i] for i in range(p.count))


# --- Anti-replay window, §4 SEQ ---------------------------------------------

class ReplayWindow:
    """RFC 6479-style sliding window over received SEQ numbers.

    Remembers the highest SEQ seen and which of the ``size`` SEQs below it
    (inclusive) were seen. SEQ 0 is never valid (SEQs start at 1).
    """

    def __init__(self, size: int = 1024):
        if size < 64:
            raise ValueError("window must be at least 64")
        self.size = size
        self.top = 0
        self._bits = 0  # bit i set: SEQ (top - i) seen

    def check(self, seq: int) -> bool:
        """True if ``seq`` would be accepted (fresh, inside the window)."""
        if seq <= 0:
            return False
        if seq > self.top:
            return True
        diff = self.top - seq
        return diff < self.size and not (self._bits >> diff) & 1

    def update(self, seq: int) -> bool:
        """Checks ``seq`` and, if fresh, records it. Returns whether it was
        accepted. Call only after the token carrying it authenticated."""
        if not self.check(seq):
            return False
        if seq > self.top:
            shift = seq - self.top
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = seq
        else:
            self._bits |= 1 << (self.top - seq)
        return True
