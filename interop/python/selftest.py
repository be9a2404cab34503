#!/usr/bin/env python3
"""Self-test of mcrelay_client.protocol and mcrelay_client.group (no
network; the v2 vectors use `cryptography`, as the client does).

The v2 vectors are PROTOCOL.md §11.8's worked bytes (from the Rust side's
`examples/worked_bytes_v2.rs`): the SESSION_KEY2 plaintext, the v2 WELCOME
plaintext, a GROUP_DATA rebuilt byte for byte from the same fixed group
key, signer seed, IV and time, and the join ratchet step.

Run: python3 selftest.py   -> prints "N passed, 0 failed", exits 1 on failure.
"""

import os
import random
import struct
import sys
import traceback

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mcrelay_client import group as g  # noqa: E402
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
    assert [p.SESSION_KEY2, p.GROUP_DATA, p.VERSIONS] == [0x0B, 0x0C, 0x0D]
    v2 = [p.CAPS, p.GROUP_KEY, p.GROUP_ADDR, p.GROUP_SIGNER, p.GSEQ, p.KEY_REQUEST, p.PROBE]
    assert v2 == list(range(0x0109, 0x0110))
    assert [p.HS_FERNET_KEY, p.HS_BIND, p.HS_CAPS, p.HS_CREDENTIAL] == list(range(0x0201, 0x0205))


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


# --- protocol v2: PROTOCOL.md §11.8 worked bytes, and the member's rules ----

def hexdump(text):
    """The bytes of a PROTOCOL.md hex dump (offset, 16 bytes, |ascii|)."""
    out = bytearray()
    for line in text.strip().splitlines():
        out += bytes.fromhex(line.split("|")[0].split(None, 1)[1])
    return bytes(out)


# §11.8 section 2: FERNET_KEY, BIND (the answer's COOKIE), CAPS = GROUP|RAW.
SESSION_KEY2_PLAIN = hexdump("""
0000  02 01 00 2c 51 45 46 43 51 30 52 46 52 6b 64 49  |...,QEFCQ0RFRkdI|
0010  53 55 70 4c 54 45 31 4f 54 31 42 52 55 6c 4e 55  |SUpLTE1OT1BRUlNU|
0020  56 56 5a 58 57 46 6c 61 57 31 78 64 58 6c 38 3d  |VVZXWFlaW1xdXl8=|
0030  02 02 00 10 e0 8d b6 04 7f 83 ab 01 cd ac 57 0c  |..............W.|
0040  53 b9 bd 33 02 03 00 04 00 00 00 03              |S..3........|
""")
# §11.8 section 3: the v2 WELCOME plaintext.
WELCOME_PLAIN = hexdump("""
0000  01 01 00 08 00 00 00 00 00 00 00 01 01 04 00 10  |................|
0010  31 39 32 2e 30 2e 32 2e 31 30 3a 34 30 30 30 30  |192.0.2.10:40000|
0020  01 09 00 04 00 00 00 03 01 0a 00 30 00 00 00 02  |...........0....|
0030  38 6e 56 6a 54 70 79 7a 67 33 54 67 6e 72 39 49  |8nVjTpyzg3Tgnr9I|
0040  35 78 36 4a 4c 6d 49 37 66 4b 76 57 71 68 4d 30  |5x6JLmI7fKvWqhM0|
0050  37 5f 75 71 66 2d 4b 35 57 46 30 3d 01 0b 00 07  |7_uqf-K5WF0=....|
0060  04 ef ff 00 4d 13 91 01 0c 00 20 cf 09 f3 11 27  |....M..........'|
0070  8f 9b d2 38 c5 b3 a5 9e e5 60 68 09 0f 7f c3 5c  |...8.....`h....\\|
0080  a0 a3 07 07 38 76 34 d0 f5 79 ff                 |....8v4..y.|
""")
# §11.8 section 4: GROUP_DATA, GSEQ=1 SENDER_ID="192.0.2.10:40000" BODY="hi".
GROUP_DATA_DATAGRAM = hexdump("""
0000  00 0c 00 ad 00 00 00 01 14 8b 8b 4a b6 a2 ea e2  |...........J....|
0010  36 13 17 46 da b4 a1 94 5d 74 28 25 c5 fe d4 d9  |6..F....]t(%....|
0020  33 8e e3 bf 1c 2d 67 40 79 c6 6f 7b 1c 68 c1 27  |3....-g@y.o{.h.'|
0030  ac 74 fb db b2 dd f8 71 72 4f 2d 44 f0 06 16 cf  |.t.....qrO-D....|
0040  9c 60 a8 8b fc 5e 63 0c 80 00 00 00 00 65 53 f1  |.`...^c......eS.|
0050  00 20 21 22 23 24 25 26 27 28 29 2a 2b 2c 2d 2e  |..!"#$%&'()*+,-.|
0060  2f 9a 19 81 76 3e fa ce 46 c1 5c 6b 51 5a b6 6d  |/...v>..F.\\kQZ.m|
0070  88 91 87 92 05 e7 8d 99 ee 61 1c e1 37 82 5b 70  |.........a..7.[p|
0080  82 09 18 d3 da 20 4e c4 aa cb 3b e7 ee b1 ca c8  |......N...;.....|
0090  59 1e 20 9c 9b 25 56 6b e7 e1 fb dd d8 eb a9 f1  |Y....%Vk........|
00a0  85 d2 53 20 7d d6 1f 2c 22 ea da 34 58 3d ad 84  |..S.}..,"..4X=..|
00b0  e2                                               |.|
""")
GROUP_KEY_1 = bytes(range(32))          # "AAECAwQF...Hh8="
SIGNER_SEED = bytes([0x5A]) * 32
SIGNER_PUBLIC = bytes.fromhex("0d7550754e0800a5d237eef5826035766b9b3e5a15868a940ab289958788e3b0")
FIXED_IV = bytes(range(0x20, 0x30))
FIXED_TIME = 0x6553F100


def fernet_raw(key_raw, plain, iv=FIXED_IV, when=FIXED_TIME):
    """A raw Fernet token with a chosen IV and time (the spec's layout:
    0x80 | time u64 | IV | AES-128-CBC(PKCS#7) | HMAC-SHA256)."""
    from cryptography.hazmat.primitives import hashes, hmac, padding as sympad
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    padder = sympad.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    enc = Cipher(algorithms.AES(key_raw[16:]), modes.CBC(iv)).encryptor()
    body = b"\x80" + struct.pack(">Q", when) + iv + enc.update(padded) + enc.finalize()
    mac = hmac.HMAC(key_raw[:16], hashes.SHA256())
    mac.update(body)
    return body + mac.finalize()


def signer():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    return Ed25519PrivateKey.from_private_bytes(SIGNER_SEED)


def seal_group(key_raw, epoch, gseq, tlvs, sk=None, iv=FIXED_IV):
    """A GROUP_DATA value as the relay builds it."""
    token = fernet_raw(key_raw, p.encode_inner(gseq, tlvs, kind=p.GSEQ), iv=iv)
    sig = (sk or signer()).sign(p.group_signed_message(epoch, token))
    return struct.pack(">I", epoch) + sig + token


@test
def v2_session_key2_plaintext_matches_protocol_md():
    key = b"QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8="
    cookie = bytes.fromhex("e08db6047f83ab01cdac570c53b9bd33")
    plain = p.encode_handshake(key, cookie, p.CAP_GROUP | p.CAP_RAW)
    assert plain == SESSION_KEY2_PLAIN, plain.hex()
    assert p.parse_handshake(plain) == (key, cookie, 3, None)
    with_cred = p.encode_handshake(key, cookie, 3, b"c" * p.MAX_CREDENTIAL_LEN)
    assert len(with_cred) == 190  # the most one RSA-2048 OAEP-SHA256 block holds
    assert p.parse_handshake(with_cred)[3] == b"c" * 110
    assert raises(ValueError, p.encode_handshake, key, cookie, 3, b"c" * 111)
    assert raises(ValueError, p.encode_handshake, key, cookie[:15], 3)
    assert raises(Malformed, p.parse_handshake, plain + p.encode_tlv(p.HS_BIND, cookie))
    assert raises(Malformed, p.parse_handshake, p.encode_tlv(p.HS_FERNET_KEY, key))
    # Unknown types are ignored, CAPS absent is 0.
    minimal = p.encode_tlvs([(p.HS_FERNET_KEY, key), (0x0299, b"?"), (p.HS_BIND, cookie)])
    assert p.parse_handshake(minimal) == (key, cookie, 0, None)


@test
def v2_welcome_plaintext_matches_protocol_md():
    w = p.parse_inner(WELCOME_PLAIN)
    assert (w.seq, w.gseq) == (1, False)
    f = w.fields
    assert f[p.CLIENT_ID] == b"192.0.2.10:40000"
    assert struct.unpack(">I", f[p.CAPS])[0] == 3
    assert f[p.GROUP_KEY][:4] == bytes([0, 0, 0, 2])
    assert f[p.GROUP_KEY][4:] == b"8nVjTpyzg3Tgnr9I5x6JLmI7fKvWqhM07_uqf-K5WF0="
    assert p.parse_group_addr(f[p.GROUP_ADDR]) == ("239.255.0.77", 5009)
    assert p.encode_group_addr("239.255.0.77", 5009) == f[p.GROUP_ADDR]
    assert f[p.GROUP_SIGNER].hex() == \
        "cf09f311278f9bd238c5b3a59ee56068090f7fc35ca0a30707387634d0f579ff"
    # The same fields in a rebuilt plaintext give the same bytes.
    rebuilt = p.encode_inner(1, [(p.CLIENT_ID, f[p.CLIENT_ID]), (p.CAPS, f[p.CAPS]),
                                 (p.GROUP_KEY, f[p.GROUP_KEY]), (p.GROUP_ADDR, f[p.GROUP_ADDR]),
                                 (p.GROUP_SIGNER, f[p.GROUP_SIGNER])])
    assert rebuilt == WELCOME_PLAIN
    v6 = p.encode_group_addr("ff02::77", 5009)
    assert len(v6) == 19 and p.parse_group_addr(v6) == ("ff02::77", 5009)


@test
def v2_inner_rules():
    seq1 = (p.SEQ, p.encode_u64(1))
    gseq1 = (p.GSEQ, p.encode_u64(1))
    assert p.parse_inner(p.encode_tlvs([gseq1, (p.PROBE, b"")])).gseq
    bad = [
        [seq1, gseq1],                                     # both SEQ and GSEQ
        [gseq1, gseq1],                                    # GSEQ twice
        [seq1, (p.CAPS, b"\0\0\3")],                       # CAPS not 4 bytes
        [seq1, (p.GROUP_KEY, bytes(47))],                  # GROUP_KEY not 48 bytes
        [seq1, (p.GROUP_SIGNER, bytes(31))],               # GROUP_SIGNER not 32 bytes
        [seq1, (p.KEY_REQUEST, bytes(3))],                 # KEY_REQUEST not 4 bytes
        [seq1, (p.GROUP_ADDR, bytes([4, 1, 2, 3, 4, 0]))],  # IPv4 GROUP_ADDR too short
        [seq1, (p.GROUP_ADDR, bytes([5]) + bytes(6))],     # family 5
    ]
    for tlvs in bad:
        assert raises(Malformed, p.parse_inner, p.encode_tlvs(tlvs)), tlvs
    # §11.8 sections 6 and 7: a rekey token and the member's KEEPALIVEs.
    rekey = p.encode_inner(5, [(p.GROUP_KEY, bytes([0, 0, 0, 3]) + b"d3" * 21 + b"c=")])
    assert rekey.hex() == ("010100080000000000000005010a003000000003"
                           + "6433" * 21 + "633d")
    assert p.encode_inner(9, [(p.KEY_REQUEST, struct.pack(">I", 3))]).hex() == \
        "01010008000000000000000901" "0e000400000003"
    assert p.encode_inner(10, [(p.PROBE, b"")]).hex() == "0101000800000000000000" "0a010f0000"


@test
def v2_group_data_matches_protocol_md_byte_for_byte():
    assert signer().public_key().public_bytes_raw() == SIGNER_PUBLIC
    tail = [(p.SENDER_ID, b"192.0.2.10:40000"), (p.BODY, b"hi")]
    value = seal_group(GROUP_KEY_1, 1, 1, tail)
    [(kind, got)] = p.decode_tlvs(GROUP_DATA_DATAGRAM)
    assert kind == p.GROUP_DATA
    assert p.encode_tlv(p.GROUP_DATA, value) == GROUP_DATA_DATAGRAM, value.hex()
    epoch, sig, token = p.parse_group_data(got)
    assert (epoch, len(sig), len(token), token[0]) == (1, 64, 105, 0x80)
    assert len(p.group_signed_message(epoch, token)) == 125
    m = g.GroupMember(SIGNER_PUBLIC, 1, g.key_text(GROUP_KEY_1))
    inner = m.open(0.0, got)
    assert inner.gseq and inner.seq == 1
    assert inner.fields == {p.SENDER_ID: b"192.0.2.10:40000", p.BODY: b"hi"}
    assert raises(g.Refused, m.open, 0.0, got)  # the same GSEQ again: replayed


@test
def v2_join_ratchet_matches_protocol_md():
    assert g.key_text(GROUP_KEY_1) == b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    assert g.key_text(g.ratchet(GROUP_KEY_1, 2)) == b"6tLXwDBzyPMt5z5tviDRuV8KvTaUwp-Dologii2DJdk="
    assert g.decode_key(b"6tLXwDBzyPMt5z5tviDRuV8KvTaUwp-Dologii2DJdk=") == g.ratchet(GROUP_KEY_1, 2)
    assert g.decode_key(b"short") is None


def refused(member, now, value):
    try:
        member.open(now, value)
    except g.Refused as r:
        return r.cause
    return None


def body_of(inner):
    return inner.fields.get(p.BODY)


@test
def v2_member_checks_signature_epochs_ratchet_and_grace():
    k1 = GROUP_KEY_1
    m = g.GroupMember(SIGNER_PUBLIC, 1, g.key_text(k1))
    msg = lambda n, body: [(p.SENDER_ID, b"x:1"), (p.BODY, body)]  # noqa: E731
    # Forged by someone holding the group key but not the signer: refused.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    stranger = Ed25519PrivateKey.from_private_bytes(bytes(32))
    assert refused(m, 0.0, seal_group(k1, 1, 1, msg(1, b"f"), sk=stranger)) == "bad_signature"
    assert refused(m, 0.0, b"\0" * 68) == "malformed"
    # Two joins later: the member ratchets two steps by itself.
    k3 = g.ratchet(g.ratchet(k1, 2), 3)
    assert body_of(m.open(0.0, seal_group(k3, 3, 2, msg(2, b"e3")))) == b"e3"
    assert m.epoch == 3
    # Epoch 1 is in its grace for 2 s, then gone.
    assert body_of(m.open(1.9, seal_group(k1, 1, 3, msg(3, b"late")))) == b"late"
    assert refused(m, 2.1, seal_group(k1, 1, 4, msg(4, b"too late"))) == "old_epoch"
    # A token that does not open under its epoch's key.
    assert refused(m, 2.1, seal_group(bytes(32), 3, 5, msg(5, b"x"))) == "bad_token"
    # Beyond 8 ratchet steps, or a fresh random key: held, not guessed.
    fresh = bytes([7]) * 32
    assert refused(m, 3.0, seal_group(fresh, 4, 6, msg(6, b"held"))) == "held"
    assert m.held == 1
    # SEQ in place of GSEQ, signed and sealed properly: the inner rules refuse it.
    tok = fernet_raw(k3, p.encode_inner(7, msg(7, b"s")))
    value = struct.pack(">I", 3) + signer().sign(p.group_signed_message(3, tok)) + tok
    assert refused(m, 3.0, value) == "bad_inner"


@test
def v2_member_holds_asks_and_releases():
    k1, fresh = GROUP_KEY_1, bytes([9]) * 32
    m = g.GroupMember(SIGNER_PUBLIC, 1, g.key_text(k1))
    assert refused(m, 10.0, seal_group(fresh, 2, 1, [(p.PEER_JOINED, b"a:1")])) == "held"
    assert m.key_request(10.1) is None          # held less than 250 ms
    assert m.key_request(10.3) == 2
    assert m.key_request(10.5) is None          # at most one a second
    assert abs(m.next_timeout() - 11.3) < 1e-9
    released = m.set_key(10.6, 2, g.key_text(fresh))
    assert [r.fields[p.PEER_JOINED] for r in released] == [b"a:1"] and m.held == 0
    assert m.epoch == 2
    # Bounded: 32 held at most, and each for 2 s at most.
    newer = bytes([3]) * 32
    for i in range(g.MAX_HELD):
        assert refused(m, 20.0, seal_group(newer, 3, 100 + i, [(p.PROBE, b"")])) == "held"
    assert refused(m, 20.0, seal_group(newer, 3, 200, [(p.PROBE, b"")])) == "hold_full"
    m.expire(22.0)
    assert m.held == 0
    # A GROUP_KEY for an older epoch we asked for is usable for the grace only.
    assert m.set_key(30.0, 1, g.key_text(k1)) == []
    assert refused(m, 30.5, seal_group(k1, 1, 300, [(p.PROBE, b"")])) is None
    assert refused(m, 32.5, seal_group(k1, 1, 301, [(p.PROBE, b"")])) == "old_epoch"


@test
def v2_gseq_window_refuses_replays_and_old():
    m = g.GroupMember(SIGNER_PUBLIC, 1, g.key_text(GROUP_KEY_1))
    probe = [(p.PROBE, b"")]
    assert refused(m, 0.0, seal_group(GROUP_KEY_1, 1, 5000, probe)) is None
    assert refused(m, 0.0, seal_group(GROUP_KEY_1, 1, 5000 - 1023, probe)) is None
    assert refused(m, 0.0, seal_group(GROUP_KEY_1, 1, 5000 - 1024, probe)) == "replayed"
    assert refused(m, 0.0, seal_group(GROUP_KEY_1, 1, 4999, probe)) is None
    assert refused(m, 0.0, seal_group(GROUP_KEY_1, 1, 4999, probe)) == "replayed"


@test
def v2_probe_schedule():
    pr = g.Probe(100.0)
    steps = [(101.9, "wait"), (102.0, "send"), (102.4, "wait"), (102.5, "send"),
             (103.0, "send"), (104.9, "wait"), (105.0, "silent")]
    for now, expected in steps:
        assert pr.step(now) == expected, (now, expected)
    heard = g.Probe(0.0)
    heard.heard = True
    assert heard.step(10.0) == "wait" and heard.next_timeout() is None


@test
def reassembler_per_source_limit():
    r = p.Reassembler(max_partial=8, max_per_source=2)
    r.add(_frag(1, 0, 2), source="a", now=0)
    r.add(_frag(2, 0, 2), source="a", now=0)
    r.add(_frag(3, 0, 2), source="a", now=0)     # a third partial from "a": refused
    assert len(r) == 2 and r.dropped == 1
    r.add(_frag(3, 0, 2), source="b", now=0)     # another source still has room
    assert r.add(_frag(3, 1, 2), source="b", now=0) == b"xx"


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
