"""The member's side of group mode (protocol v2 §4): keys by epoch, the
join ratchet, the signature and GSEQ checks, datagrams held for a key not
received yet, and the downlink probe's schedule.

No sockets and no clock of its own: every call takes ``now`` (seconds, as
``time.monotonic()`` gives them), so the rules can be tested step by step.
The client (:mod:`.client`) feeds it what arrives on the downlink and the
GROUP_KEYs that arrive in the member's own session.

Checks on a GROUP_DATA, in the protocol's order: the Ed25519 signature of
the WELCOME's GROUP_SIGNER; the epoch (current, or left less than
:data:`GRACE` ago, or reachable by up to :data:`MAX_RATCHET_STEPS` join
steps - a derived key is adopted only when the token opens under it - or
newer and held, at most :data:`MAX_HELD` datagrams for :data:`HOLD_FOR`);
the Fernet HMAC; the inner rules (GSEQ, not SEQ); the GSEQ window.
"""

import base64
import binascii
import struct
from collections import deque
from typing import Deque, List, Optional, Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import protocol
from .protocol import Malformed

GRACE = 2.0
"""Seconds the key of an epoch stays usable after the group moved on."""
MAX_RATCHET_STEPS = 8
"""Join steps a member tries for a datagram ahead of its epoch."""
MAX_HELD = 32
"""Datagrams held while waiting for a newer key."""
HOLD_FOR = 2.0
"""Seconds a held datagram waits for its key."""
KEY_REQUEST_AFTER = 0.25
"""Seconds a datagram is held before the member asks for its key."""
KEY_REQUEST_EVERY = 1.0
"""Least time between two key requests (the relay answers one a second)."""
GSEQ_WINDOW = 1024
"""GSEQ replay window (v2 §4: at least 1024)."""

PROBE_AFTER = 2.0
"""Seconds after the WELCOME without a signed GROUP_DATA before the first probe."""
PROBE_EVERY = 0.5
"""Seconds between two probes."""
PROBES = 3
"""Probes sent before the downlink is given up."""
SILENT_AFTER = 2.0
"""Seconds after the last probe, still hearing nothing, that end group mode."""

JOIN_INFO = b"mcrelay-v2 join"


def ratchet(raw: bytes, next_epoch: int) -> bytes:
    """``key[e+1]`` (32 raw bytes) from ``key[e]``: HKDF-SHA256 over the 32
    raw key bytes, empty salt, info ``"mcrelay-v2 join" | (e+1) u32 BE``."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=JOIN_INFO + struct.pack(">I", next_epoch & 0xFFFFFFFF))
    return hkdf.derive(bytes(raw))


def key_text(raw: bytes) -> bytes:
    """The 44-byte URL-safe base64 text (with padding) of a 32-byte key."""
    return base64.urlsafe_b64encode(bytes(raw))


def decode_key(text: bytes) -> Optional[bytes]:
    """The 32 raw bytes of a 44-byte Fernet key text, or None."""
    if len(text) != protocol.FERNET_KEY_LEN:
        return None
    try:
        raw = base64.urlsafe_b64decode(bytes(text))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def open_token(fernet: Fernet, token: bytes) -> bytes:
    """Opens a Fernet token given raw (first byte 0x80) or as base64 text.

    No ttl, on purpose: without one, cryptography checks neither the age
    nor how far ahead of our clock a token is stamped; freshness comes from
    the SEQ/GSEQ windows (v2 §7). Raises ``InvalidToken``.
    """
    if token[:1] == b"\x80":
        token = base64.urlsafe_b64encode(bytes(token))
    return fernet.decrypt(bytes(token))


class _EpochKey:
    __slots__ = ("epoch", "raw", "fernet")

    def __init__(self, epoch: int, raw: bytes):
        self.epoch = epoch
        self.raw = bytes(raw)
        self.fernet = Fernet(key_text(raw))


class Refused(Exception):
    """A GROUP_DATA the member did not accept; ``cause`` names the check:
    ``malformed``, ``bad_signature``, ``old_epoch``, ``held`` (it may open
    after :meth:`GroupMember.set_key`), ``hold_full``, ``bad_token``,
    ``bad_inner`` or ``replayed``."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


class GroupMember:
    """One member's view of the group: the signer, the current and recently
    left epoch keys, the GSEQ window and the held datagrams.

    ``signer`` is the WELCOME's GROUP_SIGNER, ``epoch`` and ``key_text``
    its GROUP_KEY. Raises ``ValueError`` when either key is not valid. A new
    signer is a new GSEQ space: the client makes a new member for it.
    """

    def __init__(self, signer: bytes, epoch: int, key: bytes):
        if len(signer) != protocol.SIGNER_LEN:
            raise ValueError("GROUP_SIGNER is 32 bytes")
        self.signer_bytes = bytes(signer)
        self._signer = Ed25519PublicKey.from_public_bytes(self.signer_bytes)
        raw = decode_key(key)
        if raw is None:
            raise ValueError("GROUP_KEY is not a Fernet key")
        self._current = _EpochKey(epoch, raw)
        self._retired: Deque[Tuple[_EpochKey, float]] = deque()
        self._window = protocol.ReplayWindow(GSEQ_WINDOW)
        self._held: Deque[Tuple[float, int, bytes]] = deque()
        self._last_request: Optional[float] = None

    @property
    def epoch(self) -> int:
        """The member's current epoch."""
        return self._current.epoch

    @property
    def held(self) -> int:
        """Datagrams waiting for a key."""
        return len(self._held)

    def same_signer(self, signer: bytes) -> bool:
        """True when ``signer`` is the key this member verifies with."""
        return bytes(signer) == self.signer_bytes

    def open(self, now: float, value: bytes) -> protocol.Inner:
        """Checks and opens one GROUP_DATA value; returns its plaintext,
        parsed. Raises :class:`Refused`."""
        try:
            epoch, signature, token = protocol.parse_group_data(value)
        except Malformed:
            raise Refused("malformed") from None
        return self._open(now, epoch, signature, token, keep_old=False)

    def _open(self, now: float, epoch: int, signature: bytes, token: bytes,
              keep_old: bool) -> protocol.Inner:
        try:
            self._signer.verify(signature, protocol.group_signed_message(epoch, token))
        except InvalidSignature:
            raise Refused("bad_signature") from None
        key = self._key_for(now, epoch)
        if key is not None:
            try:
                plain = open_token(key.fernet, token)
            except (InvalidToken, ValueError, TypeError):
                raise Refused("bad_token") from None
        else:
            plain = self._try_ratchet(now, epoch, token)
            if plain is None:
                if epoch > self._current.epoch or keep_old:
                    self._hold(now, epoch, signature, token)
                    raise Refused("held")
                raise Refused("old_epoch")
        return self._accept(plain)

    def _key_for(self, now: float, epoch: int) -> Optional[_EpochKey]:
        if epoch == self._current.epoch:
            return self._current
        self._expire_keys(now)
        for k, _ in self._retired:
            if k.epoch == epoch:
                return k
        return None

    def _try_ratchet(self, now: float, epoch: int, token: bytes) -> Optional[bytes]:
        """Up to MAX_RATCHET_STEPS join steps from the newest key held below
        ``epoch``; the derived key is kept only when the token opens under it."""
        self._expire_keys(now)
        bases = [k for k in [self._current] + [k for k, _ in self._retired]
                 if k.epoch < epoch and epoch - k.epoch <= MAX_RATCHET_STEPS]
        if not bases:
            return None
        base = max(bases, key=lambda k: k.epoch)
        raw = base.raw
        for e in range(base.epoch + 1, epoch + 1):
            raw = ratchet(raw, e)
        candidate = _EpochKey(epoch, raw)
        try:
            plain = open_token(candidate.fernet, token)
        except (InvalidToken, ValueError, TypeError):
            return None
        if epoch > self._current.epoch:
            self._retired.append((self._current, now))
            self._current = candidate
        else:
            # Older than ours (overtaken by a rekey): for the grace period only.
            self._retired.append((candidate, now))
        return plain

    def _hold(self, now: float, epoch: int, signature: bytes, token: bytes) -> None:
        self.expire(now)
        if len(self._held) >= MAX_HELD:
            raise Refused("hold_full")
        self._held.append((now, epoch, struct.pack(">I", epoch) + signature + token))

    def _accept(self, plain: bytes) -> protocol.Inner:
        try:
            inner = protocol.parse_inner(plain)
        except Malformed:
            raise Refused("bad_inner") from None
        if not inner.gseq:
            raise Refused("bad_inner")
        if not self._window.update(inner.seq):
            raise Refused("replayed")
        return inner

    def set_key(self, now: float, epoch: int, key: bytes) -> List[protocol.Inner]:
        """A GROUP_KEY arrived (a rekey, or a KEY_REQUEST's answer).
        Returns the held datagrams that now open, in order."""
        raw = decode_key(key)
        if raw is None:
            return []
        if epoch > self._current.epoch:
            self._retired.append((self._current, now))
            self._current = _EpochKey(epoch, raw)
        elif epoch < self._current.epoch and self._key_for(now, epoch) is None:
            # An older epoch we asked for: usable for the grace period.
            self._retired.append((_EpochKey(epoch, raw), now))
        held, self._held = self._held, deque()
        opened = []
        for at, e, value in held:
            if now - at >= HOLD_FOR:
                continue
            _, signature, token = protocol.parse_group_data(value)
            try:
                opened.append(self._open(now, e, signature, token, keep_old=True))
            except Refused as r:
                if r.cause == "held":
                    # Held again: keep its first arrival time.
                    self._held[-1] = (at, e, value)
        return opened

    def key_request(self, now: float) -> Optional[int]:
        """The epoch to ask for in a KEY_REQUEST: the oldest held one once a
        datagram waited KEY_REQUEST_AFTER, at most every KEY_REQUEST_EVERY.
        A number is taken as sent."""
        if self._last_request is not None and now - self._last_request < KEY_REQUEST_EVERY:
            return None
        due = [e for at, e, _ in self._held if now - at >= KEY_REQUEST_AFTER]
        if not due:
            return None
        self._last_request = now
        return min(due)

    def expire(self, now: float) -> None:
        """Drops held datagrams older than HOLD_FOR and keys past their grace."""
        while self._held and now - self._held[0][0] >= HOLD_FOR:
            self._held.popleft()
        self._expire_keys(now)

    def _expire_keys(self, now: float) -> None:
        while self._retired and now - self._retired[0][1] >= GRACE:
            self._retired.popleft()

    def next_timeout(self) -> Optional[float]:
        """When :meth:`expire` or :meth:`key_request` next has work."""
        times = []
        if self._held:
            at = self._held[0][0]
            due = at + KEY_REQUEST_AFTER
            if self._last_request is not None:
                due = max(due, self._last_request + KEY_REQUEST_EVERY)
            times += [due, at + HOLD_FOR]
        if self._retired:
            times.append(self._retired[0][1] + GRACE)
        return min(times) if times else None


class Probe:
    """The downlink probe's schedule (v2 §4): nothing correctly signed
    within PROBE_AFTER of the WELCOME → up to PROBES probes PROBE_EVERY
    apart → still nothing SILENT_AFTER after the last → the downlink is
    silent."""

    WAIT, SEND, SILENT = "wait", "send", "silent"

    def __init__(self, now: float):
        self.heard = False
        self.sent = 0
        self.next = now + PROBE_AFTER

    def step(self, now: float) -> str:
        """``WAIT``, ``SEND`` (taken as sent) or ``SILENT``."""
        if self.heard or now < self.next:
            return self.WAIT
        if self.sent >= PROBES:
            return self.SILENT
        self.sent += 1
        self.next = now + (PROBE_EVERY if self.sent < PROBES else SILENT_AFTER)
        return self.SEND

    def next_timeout(self) -> Optional[float]:
        """When :meth:`step` next has work (None once heard)."""
        return None if self.heard else self.next
