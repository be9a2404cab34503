#!/usr/bin/env python3
"""Self-test of mcrelay_client.protocol (no network, no cryptography).

Run: python3 selftest.py   -> prints "N passed, 0 failed", exits 1 on failure.
"""

import os
import random
import struct
import sys
import traceback

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mcrelay_client import protocol as p  # noqa: E402
from mcrelay_client.protocol import Malformed  # noqa: E402

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return True
    return False


@test
def tlv_round_trip():
    tlvs = [(1, b"abc"), (0xFFFF, b""), (p.SEQ, p.encode_u64(7)), (p.BODY, bytes(range(256)) * 4)]
    buf = p.encode_tlvs(tlvs)
    assert p.decode_tlvs(buf) == tlvs
    assert p.decode_tlvs(b"") == []
    big = bytes(p.MAX_VALUE_LEN)
    assert p.decode_tlvs(p.encode_tlv(p.DATA, big)) == [(p.DATA, big)]


@test
def golden_bytes():
    assert p.encode_tlv(p.REJECT, b"\x04") == bytes([0, 9, 0, 1, 4])
    assert p.encode_tlv(p.SEQ, p.encode_u64(1)) == bytes([1, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1])
    hello = p.hello_datagram()
    assert len(hello) == 256
    assert hello[:5] == bytes([0, 1, 0, 252, 1]) and hello[5:] == bytes(251)


@test
def constants():
    outer = [p.HELLO, p.SERVER_KEY, p.SESSION_KEY, p.WELCOME, p.DATA,
             p.FRAGMENT, p.KEEPALIVE, p.BYE, p.REJECT, p.COOKIE]
    assert outer == list(range(1, 11))
    inner = [p.SEQ, p.BODY, p.SENDER_ID, p.CLIENT_ID, p.PEER_JOINED,
             p.PEER_LEFT, p.REASON, p.SERVER_CLOSING]
    assert inner == list(range(0x0101, 0x0109))


@test
def encode_refuses_oversize():
    assert raises(ValueError, p.encode_tlv, 1, bytes(p.MAX_VALUE_LEN + 1))
    assert raises(ValueError, p.encode_tlv, 0x10000, b"")


@test
def trailing_bytes_malformed():
    good = p.encode_tlv(p.DATA, b"x")
    for n in (1, 2, 3):
        assert raises(Malformed, p.decode_tlvs, good + bytes(n)), n
        assert raises(Malformed, p.decode_tlvs, bytes(n)), n


@test
def length_past_end_malformed():
    assert raises(Malformed, p.decode_tlvs, bytes([0, 5, 0, 10, 1, 2, 3]))
    good = p.encode_tlv(p.DATA, b"abc")
    assert raises(Malformed, p.decode_tlvs, good + good[:-1])


@test
def inner_rules():
    inner = p.parse_inner(p.encode_inner(9, [(p.SENDER_ID, b"1.2.3.4:5"), (p.BODY, b"hi")]))
    assert inner.seq == 9
    assert inner.fields == {p.SENDER_ID: b"1.2.3.4:5", p.BODY: b"hi"}
    assert inner.shape() == {p.SENDER_ID, p.BODY}
    # Unknown inner types are skipped.
    assert p.parse_inner(p.encode_inner(1, [(0x0200, b"?")])).fields == {}
    seq1 = (p.SEQ, p.encode_u64(1))
    bad = [
        [(p.BODY, b"x")],                                  # SEQ missing
        [(p.SEQ, b"1234")],                                # SEQ not 8 bytes
        [seq1, seq1],                                      # SEQ twice
        [seq1, (p.BODY, b"a"), (p.BODY, b"b")],            # BODY twice
        [seq1, (p.PEER_LEFT, b"x"), (p.REASON, b"")],      # REASON not 1 byte
    ]
    for tlvs in bad:
        assert raises(Malformed, p.parse_inner, p.encode_tlvs(tlvs)), tlvs
    assert raises(Malformed, p.parse_inner, p.encode_inner(1) + b"\0")


@test
def no_split_when_it_fits():
    payload = p.encode_tlv(p.DATA, bytes(1196))
    assert len(payload) == 1200
    assert p.split_datagram(payload, 1) == [payload]


@test
def split_and_reassemble_20k_shuffled():
    payload = p.encode_tlv(p.DATA, os.urandom(20 * 1024))
    frags = p.split_datagram(payload, 0xDEADBEEF, 1200)
    assert len(frags) == -(-len(payload) // (1200 - p.FRAGMENT_OVERHEAD))
    assert all(len(f) <= 1200 for f in frags)
    for i, f in enumerate(frags):
        [(kind, value)] = p.decode_tlvs(f)  # exactly one FRAGMENT TLV
        assert kind == p.FRAGMENT
        msg_id, index, count, _ = p.parse_fragment(value)
        assert (msg_id, index, count) == (0xDEADBEEF, i, len(frags))
    rng = random.Random(6479)
    for _ in range(5):
        order = frags[:]
        rng.shuffle(order)
        r = p.Reassembler()
        results = [r.add(p.decode_tlvs(f)[0][1], now=0.0) for f in order]
        assert results[:-1] == [None] * (len(order) - 1)
        assert results[-1] == payload
        assert r.dropped == 0 and len(r) == 0 and r.buffered == 0


def _frag(msg_id, index, count, chunk=b"x"):
    return struct.pack(">IHH", msg_id, index, count) + chunk


@test
def reassembler_drops_bad_messages():
    r = p.Reassembler()
    assert r.add(_frag(1, 0, 3), now=0) is None
    assert r.add(_frag(1, 0, 3), now=0) is None   # duplicate index
    assert r.dropped == 1 and len(r) == 0
    r.add(_frag(2, 0, 3), now=0)
    r.add(_frag(2, 1, 4), now=0)                  # count disagrees
    assert r.dropped == 2 and len(r) == 0
    r.add(_frag(3, 5, 3), now=0)                  # index out of range
    r.add(_frag(3, 0, 0), now=0)                  # count 0
    r.add(b"\0" * 7, now=0)                       # short header
    assert r.dropped == 5 and len(r) == 0
    assert r.add(_frag(4, 0, 1, b"whole"), now=0) == b"whole"


@test
def reassembler_limits():
    r = p.Reassembler(max_partial=2, max_message=10, max_total=15, max_age=10.0)
    r.add(_frag(1, 0, 2, b"a" * 8), now=0)
    r.add(_frag(1, 1, 2, b"a" * 3), now=0)        # message over 10 bytes
    assert r.dropped == 1 and len(r) == 0 and r.buffered == 0
    r.add(_frag(2, 0, 2, b"b" * 8), now=0)
    r.add(_frag(3, 0, 2, b"c" * 8), now=0)        # total over 15 bytes
    assert r.dropped == 2 and len(r) == 1
    r.add(_frag(4, 0, 2), now=0)
    r.add(_frag(5, 0, 2), now=0)                  # third partial refused
    assert r.dropped == 3 and len(r) == 2
    r.add(_frag(6, 0, 2), now=10.0)               # 2 and 4 expire first
    assert r.dropped == 5 and len(r) == 1 and r.buffered == 1
    assert r.add(_frag(2, 1, 2), now=10.0) is None  # msg 2 is gone: starts afresh


@test
def split_refuses_impossible():
    assert raises(ValueError, p.split_datagram, bytes(100), 1, 12)
    assert raises(ValueError, p.split_datagram, bytes(70000), 1, 13)


@test
def replay_window_in_order_and_repeats():
    w = p.ReplayWindow(1024)
    for seq in (1, 3, 2):
        assert w.update(seq), seq
    for seq in (1, 2, 3, 0):
        assert not w.update(seq), seq
    assert w.check(4) and not w.check(3)


@test
def replay_window_edges():
    w = p.ReplayWindow(1024)
    assert w.update(2000)
    assert w.update(2000 - 1023)        # oldest SEQ still inside the window
    assert not w.update(2000 - 1024)    # just outside
    assert not w.update(2000 - 1023)
    assert w.update(5000)               # a jump larger than the window clears it
    assert not w.update(2000)
    assert w.update(4999) and not w.update(4999)
    assert raises(ValueError, p.ReplayWindow, 32)


@test
def replay_window_numbered_table():
    # wireguard-go replay_test.go style: (seq, expected) applied in order.
    w = p.ReplayWindow(64)
    table = [(0, False), (1, True), (1, False), (64, True), (63, True), (1, False),
             (65, True), (2, True), (2, False), (130, True), (66, False),
             (67, True), (129, True), (129, False), (200, True), (136, False), (137, True)]
    for i, (seq, expected) in enumerate(table):
        assert w.update(seq) == expected, f"case {i}: seq {seq}"


def main() -> int:
    passed = failed = 0
    for fn in TESTS:
        try:
            fn()
            passed += 1
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
