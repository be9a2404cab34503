//! Group keys with a fake clock: signatures, epochs, ratchet, hold, grace.

use super::*;
use crate::wire::inner::BODY;
use crate::wire::outer::GROUP_DATA;
use crate::wire::tlv::{self, Reader};

fn value_of(tlv_bytes: &[u8]) -> Vec<u8> {
    let t = Reader::new(tlv_bytes).next().unwrap().unwrap();
    assert_eq!(t.kind, GROUP_DATA);
    t.value.to_vec()
}

fn body(b: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    tlv::put(&mut v, BODY, b);
    v
}

fn send(s: &mut GroupSender, b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    s.seal(1_700_000_000, [7; 16], &body(b), &mut out);
    value_of(&out)
}

fn member(s: &GroupSender) -> GroupMember {
    GroupMember::new(&s.signer_public(), s.epoch(), s.key_text().as_bytes()).unwrap()
}

fn body_of(p: &[u8]) -> Vec<u8> {
    Inner::parse(p).unwrap().body.unwrap().to_vec()
}

#[test]
fn ratchet_is_the_protocols_hkdf_step() {
    // Independent of our code: HKDF-SHA256 computed by hand with HMAC.
    use hmac::{Hmac, KeyInit, Mac};
    let key = [0x42u8; 32];
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&[0u8; 32]).unwrap();
    m.update(&key);
    let prk = m.finalize().into_bytes();
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&prk).unwrap();
    m.update(b"mcrelay-v2 join");
    m.update(&5u32.to_be_bytes());
    m.update(&[1]);
    let okm = m.finalize().into_bytes();
    assert_eq!(ratchet(&key, 5)[..], okm[..]);
}

#[test]
fn members_open_signed_data_once_and_in_order() {
    let mut s = GroupSender::new([1; 32], [2; 32]);
    let mut m = member(&s);
    let now = Instant::now();
    let d = send(&mut s, b"hi");
    assert_eq!(body_of(&m.open(now, &d).unwrap()), b"hi");
    assert_eq!(m.open(now, &d), Err(GroupError::Replay));
    let mut forged = d.clone();
    *forged.last_mut().unwrap() ^= 1;
    assert_eq!(m.open(now, &forged), Err(GroupError::BadSignature));
    // Another signer with the same group key: a member forging the server.
    let mut rogue = GroupSender::new([1; 32], [3; 32]);
    rogue.gseq = 10;
    assert_eq!(
        m.open(now, &send(&mut rogue, b"x")),
        Err(GroupError::BadSignature)
    );
}

#[test]
fn a_join_is_followed_by_ratchet_and_the_newcomer_cannot_read_the_past() {
    let mut s = GroupSender::new([1; 32], [2; 32]);
    let mut old = member(&s);
    let now = Instant::now();
    let before = send(&mut s, b"before");
    s.ratchet(now);
    let mut newcomer = member(&s);
    let after = send(&mut s, b"after");
    assert_eq!(body_of(&old.open(now, &after).unwrap()), b"after");
    assert_eq!(old.epoch(), 2);
    assert_eq!(newcomer.open(now, &before), Err(GroupError::OldEpoch));
    assert_eq!(body_of(&newcomer.open(now, &after).unwrap()), b"after");
    // The old epoch stays usable for the grace period, then not.
    assert!(old.key_for(now + GRACE / 2, 1).is_some());
    assert!(old.key_for(now + GRACE, 1).is_none());
}

#[test]
fn a_leave_is_a_fresh_key_held_datagrams_wait_for_it() {
    let mut s = GroupSender::new([1; 32], [2; 32]);
    let mut stays = member(&s);
    let mut leaves = member(&s);
    let now = Instant::now();
    s.leave();
    s.leave();
    assert!(s.rekey_if_pending(now, [9; 32]));
    assert!(!s.rekey_if_pending(now, [8; 32]), "two leaves, one rekey");
    assert_eq!(s.epoch(), 2);
    let d = send(&mut s, b"secret");
    // Neither ratchet nor the old key opens it: held, and a request follows.
    assert_eq!(leaves.open(now, &d), Err(GroupError::Held));
    assert_eq!(stays.open(now, &d), Err(GroupError::Held));
    assert_eq!(stays.key_request(now), None);
    let later = now + KEY_REQUEST_AFTER;
    assert_eq!(stays.key_request(later), Some(2));
    let opened = stays.set_key(later, 2, s.key_text().as_bytes());
    assert_eq!(opened.len(), 1);
    assert_eq!(body_of(&opened[0]), b"secret");
    assert_eq!(stays.held(), 0);
    // The one who left never gets the key: its held datagram expires.
    leaves.expire(now + HOLD_FOR);
    assert_eq!(leaves.held(), 0);
}

#[test]
fn the_hold_queue_is_bounded_and_far_epochs_are_not_ratcheted() {
    let mut s = GroupSender::new([1; 32], [2; 32]);
    let mut m = member(&s);
    let now = Instant::now();
    for _ in 0..MAX_RATCHET_STEPS + 1 {
        s.ratchet(now);
    }
    let far = send(&mut s, b"far");
    assert_eq!(m.open(now, &far), Err(GroupError::Held));
    for _ in 1..MAX_HELD {
        let d = send(&mut s, b"more");
        assert_eq!(m.open(now, &d), Err(GroupError::Held));
    }
    assert_eq!(m.open(now, &send(&mut s, b"x")), Err(GroupError::HoldFull));
    assert_eq!(m.held(), MAX_HELD);
    // Within reach: ratcheted without any message.
    let mut s2 = GroupSender::new([1; 32], [2; 32]);
    let mut m2 = member(&s2);
    for _ in 0..MAX_RATCHET_STEPS {
        s2.ratchet(now);
    }
    assert!(m2.open(now, &send(&mut s2, b"near")).is_ok());
}

#[test]
fn key_answers_may_come_in_either_order() {
    // Two rekeys while the member heard neither GROUP_KEY: the answer
    // to its KEY_REQUEST brings epochs 2 and 3, the current one first.
    let mut s = GroupSender::new([1; 32], [2; 32]);
    let mut m = member(&s);
    let now = Instant::now();
    s.leave();
    assert!(s.rekey_if_pending(now, [9; 32]));
    let two = s.key_text();
    let d2 = send(&mut s, b"under 2");
    s.leave();
    assert!(s.rekey_if_pending(now, [8; 32]));
    let d3 = send(&mut s, b"under 3");
    assert_eq!(m.open(now, &d2), Err(GroupError::Held));
    assert_eq!(m.open(now, &d3), Err(GroupError::Held));
    let later = now + KEY_REQUEST_AFTER;
    assert_eq!(m.key_request(later), Some(2), "the oldest held epoch");
    let opened = m.set_key(later, 3, s.key_text().as_bytes());
    assert_eq!(
        opened.iter().map(|p| body_of(p)).collect::<Vec<_>>(),
        [b"under 3"]
    );
    assert_eq!(m.held(), 1, "epoch 2 still waits for its key");
    let opened = m.set_key(later, 2, two.as_bytes());
    assert_eq!(
        opened.iter().map(|p| body_of(p)).collect::<Vec<_>>(),
        [b"under 2"]
    );
    assert_eq!(m.epoch(), 3, "an older key never moves the member back");
    // A fresh datagram of an epoch forgotten after its grace is
    // dropped, not held.
    let mut old = GroupSender::new([1; 32], [2; 32]);
    old.gseq = 100;
    let d1 = send(&mut old, b"e1");
    assert!(m.open(later, &d1).is_ok(), "epoch 1 within its grace");
    old.gseq = 101;
    let d1 = send(&mut old, b"e1");
    assert_eq!(m.open(later + GRACE, &d1), Err(GroupError::OldEpoch));
    assert_eq!(m.held(), 0);
}

#[test]
fn key_requests_are_rate_limited_and_their_timer_never_lies_in_the_past() {
    let mut s = GroupSender::new([1; 32], [2; 32]);
    let mut m = member(&s);
    let now = Instant::now();
    s.leave();
    assert!(s.rekey_if_pending(now, [9; 32]));
    assert_eq!(m.open(now, &send(&mut s, b"x")), Err(GroupError::Held));
    assert_eq!(m.poll_timeout(), Some(now + KEY_REQUEST_AFTER));
    let first = now + KEY_REQUEST_AFTER;
    assert_eq!(m.key_request(first), Some(2));
    assert_eq!(m.key_request(first), None, "taken as sent");
    // Next: the second request, a second after the first.
    assert_eq!(m.poll_timeout(), Some(first + KEY_REQUEST_EVERY));
    let second = first + KEY_REQUEST_EVERY;
    assert_eq!(m.key_request(second - Duration::from_millis(1)), None);
    assert_eq!(m.key_request(second), Some(2));
    // Then only the hold's end is left (2 s after arrival).
    assert_eq!(m.poll_timeout(), Some(now + HOLD_FOR));
    m.expire(now + HOLD_FOR);
    assert_eq!((m.held(), m.poll_timeout()), (0, None));
}

#[test]
fn server_keeps_left_epochs_for_key_requests_within_grace() {
    let mut s = GroupSender::new([1; 32], [2; 32]);
    let now = Instant::now();
    let first = s.key_text();
    s.ratchet(now);
    assert_eq!(s.key_text_of(1, now + GRACE / 2), Some(first));
    assert_eq!(s.key_text_of(1, now + GRACE), None);
    assert_eq!(s.key_text_of(2, now + GRACE), Some(s.key_text()));
}

#[test]
fn a_join_datagram_overtaken_by_the_next_rekey_still_opens_by_ratchet() {
    // The relay ratchets (a join), sends under e+1, then a leave rekeys
    // to e+2; the member gets the GROUP_KEY of e+2 first (unicast
    // overtook multicast), then the datagram of e+1.
    let mut s = GroupSender::new([1; 32], [2; 32]);
    let mut m = member(&s);
    let now = Instant::now();
    s.ratchet(now);
    let joined = send(&mut s, b"under e+1");
    s.leave();
    assert!(s.rekey_if_pending(now, [9; 32]));
    assert!(m
        .set_key(now, s.epoch(), s.key_text().as_bytes())
        .is_empty());
    assert_eq!(body_of(&m.open(now, &joined).unwrap()), b"under e+1");
    assert_eq!(m.epoch(), 3, "the current epoch stays the newest");
    assert_eq!(
        body_of(&m.open(now, &send(&mut s, b"e+2")).unwrap()),
        b"e+2"
    );
}
