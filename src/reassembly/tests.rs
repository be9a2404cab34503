//! Reassembly rules with a fake clock: limits, eviction, fair share, expiry.

use super::*;
use crate::sim::testrng::XorShift;
use crate::wire::fragment::*;
use crate::wire::outer::FRAGMENT;
use crate::wire::tlv::HEADER_LEN as TLV_HEADER_LEN;

fn frag(msg_id: u32, index: u16, count: u16, chunk: &[u8]) -> FragmentHeader<'_> {
    FragmentHeader {
        msg_id,
        index,
        count,
        chunk,
    }
}

/// Splits and returns owned datagrams.
fn split_vec(payload: &[u8], max: usize, msg_id: u32) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let n = split(payload, max, msg_id, |d| out.push(d.to_vec()))?;
    assert_eq!(n, out.len());
    Some(out)
}

/// Checks the outer TLV framing and returns the FRAGMENT value.
fn value_of(datagram: &[u8]) -> &[u8] {
    assert!(datagram.len() >= TLV_HEADER_LEN);
    assert_eq!(u16::from_be_bytes([datagram[0], datagram[1]]), FRAGMENT);
    let len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    assert_eq!(len, datagram.len() - TLV_HEADER_LEN);
    &datagram[TLV_HEADER_LEN..]
}

/// Internal consistency: accounting matches the buffered partials and the queue is bounded.
fn check_invariants(r: &Reassembler) {
    let limits = r.limits();
    assert!(r.total_bytes() <= limits.max_total_bytes);
    let sum: usize = r.partials.values().map(|p| p.accounted).sum();
    assert_eq!(sum, r.total_bytes());
    let mut owner_partials = 0;
    for (owner, usage) in &r.owners {
        assert!(!usage.by_age.is_empty(), "empty owner entry kept");
        assert!(usage.bytes <= limits.max_bytes_per_owner);
        assert!(usage.by_age.len() <= limits.max_partials_per_owner);
        let mut bytes = 0;
        for (serial, m) in &usage.by_age {
            let p = &r.partials[&(*owner, *m)];
            assert_eq!(p.serial, *serial, "age index out of date");
            bytes += p.accounted;
        }
        assert_eq!(bytes, usage.bytes);
        assert!(r.by_bytes.contains(&(usage.bytes, *owner)));
        owner_partials += usage.by_age.len();
    }
    assert_eq!(r.by_bytes.len(), r.owners.len(), "stale by-bytes entries");
    assert_eq!(owner_partials, r.partials());
    for p in r.partials.values() {
        assert!(p.data.len() <= limits.max_message_bytes);
        // What is allocated stays near what is accounted (see reserve_bounded).
        assert!(p.data.capacity() <= p.data.len() + p.data.len() / 8);
        assert!(
            p.chunks.capacity() * std::mem::size_of::<ChunkRef>()
                <= p.chunks.len() * CHUNK_OVERHEAD
        );
        assert!(p.chunks.len() < usize::from(p.count));
        assert!(p.chunks.windows(2).all(|w| w[0].index < w[1].index));
    }
    let live = r.expiry.iter().filter(|e| is_live(&r.partials, e)).count();
    assert_eq!(live, r.partials());
    assert!(r.expiry.len() <= 2 * r.partials() + COMPACT_SLACK + 1);
    assert!(r
        .expiry
        .iter()
        .zip(r.expiry.iter().skip(1))
        .all(|(a, b)| a.created <= b.created));
}

#[test]
fn buffers_grow_by_an_eighth_not_by_doubling() {
    // 900-byte chunks of a message that never completes: with doubling,
    // 5 chunks (4500 bytes) would already sit in a 7200-byte buffer.
    let mut r = Reassembler::new(ReassemblyLimits::default());
    let now = Instant::now();
    let chunk = [7u8; 900];
    for index in 0..65 {
        assert_eq!(
            r.insert(now, 1, &frag(9, index, 66, &chunk)),
            Outcome::Incomplete
        );
        check_invariants(&r);
    }
    assert_eq!(r.partials[&(1, 9)].data.len(), 65 * 900);
}

#[test]
fn parse_rejects_malformed() {
    assert_eq!(parse_fragment(&[]), None);
    assert_eq!(parse_fragment(&[0; 7]), None);
    // Header only: empty chunk.
    assert_eq!(parse_fragment(&[0, 0, 0, 1, 0, 0, 0, 1]), None);
    // count == 0.
    assert_eq!(parse_fragment(&[0, 0, 0, 1, 0, 0, 0, 0, 9]), None);
    let f = parse_fragment(&[1, 2, 3, 4, 0, 5, 0, 3, 9, 8]).unwrap();
    assert_eq!(f, frag(0x0102_0304, 5, 3, &[9, 8]));
}

#[test]
fn parse_never_panics_on_random_input() {
    let mut rng = XorShift::new(0x9E37_79B9_7F4A_7C15);
    for _ in 0..10_000 {
        let len = rng.below(24) as usize;
        let buf = rng.bytes(len);
        if let Some(f) = parse_fragment(&buf) {
            assert!(f.count > 0 && !f.chunk.is_empty());
            assert_eq!(f.chunk.len() + FRAGMENT_HEADER_LEN, buf.len());
        }
    }
}

#[test]
fn split_empty_payload_emits_nothing() {
    assert_eq!(split_vec(&[], 1200, 1), Some(vec![]));
}

#[test]
fn split_rejects_tiny_max_datagram() {
    let mut calls = 0;
    assert_eq!(split(b"abc", FRAGMENT_OVERHEAD, 1, |_| calls += 1), None);
    assert_eq!(split(b"abc", 0, 1, |_| calls += 1), None);
    assert_eq!(calls, 0);
    // One byte of room is enough.
    let d = split_vec(b"abc", FRAGMENT_OVERHEAD + 1, 1).unwrap();
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|d| d.len() == FRAGMENT_OVERHEAD + 1));
}

#[test]
fn split_rejects_more_than_65535_fragments() {
    let payload = vec![7u8; 65_536];
    let mut calls = 0;
    assert_eq!(
        split(&payload, FRAGMENT_OVERHEAD + 1, 1, |_| calls += 1),
        None
    );
    assert_eq!(calls, 0);
    assert_eq!(
        split(&payload[..65_535], FRAGMENT_OVERHEAD + 1, 1, |_| calls += 1),
        Some(65_535)
    );
    assert_eq!(calls, 65_535);
}

#[test]
fn split_caps_chunk_at_tlv_length_limit() {
    let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let d = split_vec(&payload, 1 << 20, 9).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].len(), TLV_HEADER_LEN + u16::MAX as usize);
    let mut joined = Vec::new();
    for (i, dg) in d.iter().enumerate() {
        let f = parse_fragment(value_of(dg)).unwrap();
        assert_eq!((f.msg_id, usize::from(f.index), f.count), (9, i, 2));
        joined.extend_from_slice(f.chunk);
    }
    assert_eq!(joined, payload);
}

#[test]
fn split_parse_reassemble_round_trip() {
    let max = 1200;
    let room = max - FRAGMENT_OVERHEAD;
    let mut rng = XorShift::new(42);
    let t = Instant::now();
    let mut r = Reassembler::new(ReassemblyLimits::default());
    for (msg_id, size) in [
        1,
        2,
        room - 1,
        room,
        room + 1,
        2 * room,
        3 * room,
        20 * 1024,
    ]
    .into_iter()
    .enumerate()
    {
        let payload = rng.bytes(size);
        let d = split_vec(&payload, max, msg_id as u32).unwrap();
        assert_eq!(d.len(), size.div_ceil(room));
        let mut result = None;
        for (i, dg) in d.iter().enumerate() {
            assert!(dg.len() <= max);
            let f = parse_fragment(value_of(dg)).unwrap();
            assert_eq!(f.msg_id, msg_id as u32);
            assert_eq!(usize::from(f.index), i);
            assert_eq!(usize::from(f.count), d.len());
            match r.insert(t, 1, &f) {
                Outcome::Incomplete => assert!(i + 1 < d.len()),
                Outcome::Complete(p) => {
                    assert_eq!(i + 1, d.len());
                    result = Some(p);
                }
                Outcome::Dropped(why) => panic!("dropped: {why}"),
            }
        }
        assert_eq!(result.as_deref(), Some(&payload[..]));
        check_invariants(&r);
        assert_eq!(r.partials(), 0);
    }
    // Exact multiples fill every datagram to the limit.
    let d = split_vec(&vec![1; 3 * room], max, 0).unwrap();
    assert!(d.iter().all(|d| d.len() == max));
}

#[test]
fn reassembles_shuffled_order() {
    let mut rng = XorShift::new(7);
    let payload = rng.bytes(20 * 1024);
    let mut d = split_vec(&payload, 1200, 77).unwrap();
    rng.shuffle(&mut d);
    let t = Instant::now();
    let mut r = Reassembler::new(ReassemblyLimits::default());
    let last = d.len() - 1;
    for (i, dg) in d.iter().enumerate() {
        let f = parse_fragment(value_of(dg)).unwrap();
        let out = r.insert(t, 5, &f);
        check_invariants(&r);
        if i < last {
            assert_eq!(out, Outcome::Incomplete);
            assert_eq!(r.owner_usage(5).0, 1);
        } else {
            assert_eq!(out, Outcome::Complete(payload.clone()));
        }
    }
    assert_eq!(r.owner_usage(5), (0, 0));
    assert_eq!(r.total_bytes(), 0);
    assert_eq!(r.next_expiry(), None);
}

#[test]
fn single_fragment_completes_without_buffering() {
    let mut r = Reassembler::new(ReassemblyLimits::default());
    let out = r.insert(Instant::now(), 1, &frag(3, 0, 1, b"hello"));
    assert_eq!(out, Outcome::Complete(b"hello".to_vec()));
    assert_eq!((r.partials(), r.total_bytes()), (0, 0));
    assert_eq!(r.expiry.len(), 0);
}

#[test]
fn duplicate_drops_whole_message() {
    let t = Instant::now();
    let mut r = Reassembler::new(ReassemblyLimits::default());
    assert_eq!(r.insert(t, 1, &frag(1, 0, 3, b"a")), Outcome::Incomplete);
    assert_eq!(r.insert(t, 1, &frag(1, 1, 3, b"b")), Outcome::Incomplete);
    assert_eq!(
        r.insert(t, 1, &frag(1, 1, 3, b"b")),
        Outcome::Dropped(DropReason::Duplicate)
    );
    assert_eq!((r.partials(), r.total_bytes()), (0, 0));
    assert_eq!(r.owner_usage(1), (0, 0));
    // The id is free again: a later chunk starts a fresh message.
    assert_eq!(r.insert(t, 1, &frag(1, 2, 3, b"c")), Outcome::Incomplete);
    assert_eq!(r.owner_usage(1), (1, 1 + CHUNK_OVERHEAD));
    check_invariants(&r);
}

#[test]
fn index_out_of_range_drops_whole_message() {
    let t = Instant::now();
    let mut r = Reassembler::new(ReassemblyLimits::default());
    assert_eq!(
        r.insert(t, 1, &frag(1, 3, 3, b"a")),
        Outcome::Dropped(DropReason::IndexOutOfRange)
    );
    assert_eq!(r.partials(), 0);
    assert_eq!(r.insert(t, 1, &frag(1, 0, 3, b"a")), Outcome::Incomplete);
    assert_eq!(
        r.insert(t, 1, &frag(1, 9, 3, b"a")),
        Outcome::Dropped(DropReason::IndexOutOfRange)
    );
    assert_eq!((r.partials(), r.total_bytes()), (0, 0));
    // Hand-built count == 0 cannot slip through either.
    assert_eq!(
        r.insert(t, 1, &frag(2, 0, 0, b"a")),
        Outcome::Dropped(DropReason::IndexOutOfRange)
    );
    check_invariants(&r);
}

#[test]
fn count_mismatch_drops_whole_message() {
    let t = Instant::now();
    let mut r = Reassembler::new(ReassemblyLimits::default());
    assert_eq!(r.insert(t, 1, &frag(1, 0, 3, b"a")), Outcome::Incomplete);
    assert_eq!(r.insert(t, 1, &frag(1, 1, 3, b"b")), Outcome::Incomplete);
    assert_eq!(
        r.insert(t, 1, &frag(1, 2, 4, b"c")),
        Outcome::Dropped(DropReason::CountMismatch)
    );
    assert_eq!((r.partials(), r.total_bytes()), (0, 0));
    // A count == 1 fragment for a buffered id is a mismatch too, not a fresh message.
    assert_eq!(r.insert(t, 1, &frag(2, 0, 2, b"a")), Outcome::Incomplete);
    assert_eq!(
        r.insert(t, 1, &frag(2, 0, 1, b"a")),
        Outcome::Dropped(DropReason::CountMismatch)
    );
    assert_eq!(r.partials(), 0);
    check_invariants(&r);
}

#[test]
fn too_large_drops_whole_message() {
    let t = Instant::now();
    let limits = ReassemblyLimits {
        max_message_bytes: 100,
        ..ReassemblyLimits::default()
    };
    let mut r = Reassembler::new(limits);
    let chunk = [0u8; 60];
    assert_eq!(r.insert(t, 1, &frag(1, 0, 3, &chunk)), Outcome::Incomplete);
    assert_eq!(
        r.insert(t, 1, &frag(1, 1, 3, &chunk)),
        Outcome::Dropped(DropReason::TooLarge)
    );
    assert_eq!((r.partials(), r.total_bytes()), (0, 0));
    // A count that could not fit even with 1-byte chunks is refused up front.
    assert_eq!(
        r.insert(t, 1, &frag(2, 0, 101, b"x")),
        Outcome::Dropped(DropReason::TooLarge)
    );
    assert_eq!(r.insert(t, 1, &frag(2, 0, 100, b"x")), Outcome::Incomplete);
    // Single fragments obey the limit too.
    assert_eq!(
        r.insert(t, 1, &frag(3, 0, 1, &[0; 101])),
        Outcome::Dropped(DropReason::TooLarge)
    );
    assert_eq!(
        r.insert(t, 1, &frag(3, 0, 1, &[0; 100])),
        Outcome::Complete(vec![0; 100])
    );
    // Exactly at the limit completes.
    assert_eq!(
        r.insert(t, 1, &frag(4, 0, 2, &[1; 50])),
        Outcome::Incomplete
    );
    assert_eq!(
        r.insert(t, 1, &frag(4, 1, 2, &[2; 50])),
        Outcome::Complete([[1; 50], [2; 50]].concat())
    );
    check_invariants(&r);
}

#[test]
fn full_slots_evict_the_oldest_partial() {
    let t = Instant::now();
    let limits = ReassemblyLimits {
        max_partials_per_owner: 2,
        ..ReassemblyLimits::default()
    };
    let mut r = Reassembler::new(limits.clone());
    let none = [(DropReason::Evicted, 0), (DropReason::FairShare, 0)];
    let one = [(DropReason::Evicted, 1), (DropReason::FairShare, 0)];
    assert_eq!(r.insert(t, 1, &frag(1, 0, 3, b"a")), Outcome::Incomplete);
    assert_eq!(r.insert(t, 1, &frag(2, 0, 3, b"a")), Outcome::Incomplete);
    // Activity does not make a partial younger: 1 stays the oldest.
    assert_eq!(r.insert(t, 1, &frag(1, 1, 3, b"b")), Outcome::Incomplete);
    assert_eq!(r.take_evictions(), none);
    assert_eq!(r.insert(t, 1, &frag(3, 0, 3, b"a")), Outcome::Incomplete);
    assert_eq!(r.take_evictions(), one);
    assert_eq!(r.take_evictions(), none, "taking resets");
    assert_eq!(r.owner_usage(1), (2, 2 * (1 + CHUNK_OVERHEAD)));
    assert!(!r.partials.contains_key(&(1, 1)));
    // The evicted message's late chunk starts it afresh (evicting 2).
    assert_eq!(r.insert(t, 1, &frag(1, 2, 3, b"c")), Outcome::Incomplete);
    assert_eq!(r.take_evictions(), one);
    assert!(!r.partials.contains_key(&(1, 2)));
    check_invariants(&r);
    // Single fragments need no slot; other owners have their own.
    assert_eq!(
        r.insert(t, 1, &frag(9, 0, 1, b"z")),
        Outcome::Complete(b"z".to_vec())
    );
    assert_eq!(r.insert(t, 2, &frag(3, 0, 3, b"a")), Outcome::Incomplete);
    assert_eq!(r.take_evictions(), none);
    // Completing frees a slot, so the next message evicts nothing.
    assert_eq!(r.insert(t, 1, &frag(3, 1, 3, b"b")), Outcome::Incomplete);
    assert_eq!(
        r.insert(t, 1, &frag(3, 2, 3, b"c")),
        Outcome::Complete(b"abc".to_vec())
    );
    assert_eq!(r.insert(t, 1, &frag(4, 0, 3, b"a")), Outcome::Incomplete);
    assert_eq!(r.take_evictions(), none);
    check_invariants(&r);

    // With no slots at all nothing is buffered, and nothing evicted.
    let mut r = Reassembler::new(ReassemblyLimits {
        max_partials_per_owner: 0,
        ..limits
    });
    assert_eq!(
        r.insert(t, 1, &frag(1, 0, 2, b"a")),
        Outcome::Dropped(DropReason::TooManyPartials)
    );
    assert_eq!(
        r.insert(t, 1, &frag(1, 0, 1, b"a")),
        Outcome::Complete(b"a".to_vec())
    );
    assert_eq!((r.partials(), r.take_evictions()), (0, none));
}

/// The guarantee in the module docs: a forger who fills an owner's slots
/// beforehand cannot stop the owner's next message; only as many new
/// msg_ids as there are slots, interleaved with it, can.
#[test]
fn a_message_survives_one_fewer_interleaved_new_messages_than_slots() {
    let limits = ReassemblyLimits::default();
    let slots = limits.max_partials_per_owner as u32;
    // (new msg_ids interleaved, times the message was evicted and
    // restarted by a later chunk)
    for (interleaved, restarts) in [(0, 0), (1, 0), (slots - 1, 0), (slots, 1), (100, 2)] {
        let t = Instant::now();
        let mut r = Reassembler::new(limits.clone());
        let mut bogus = 1000u32..;
        let mut forge = |r: &mut Reassembler, n: u32| {
            for id in bogus.by_ref().take(n as usize) {
                assert_eq!(
                    r.insert(t, 7, &frag(id, 0, 2, b"forged")),
                    Outcome::Incomplete
                );
            }
        };
        forge(&mut r, 100);
        assert_eq!(r.owner_usage(7).0, limits.max_partials_per_owner);
        let chunks: [&[u8]; 3] = [b"one ", b"two ", b"three"];
        let mut last = None;
        for (i, c) in chunks.iter().enumerate() {
            last = Some(r.insert(t, 7, &frag(5, i as u16, 3, c)));
            match i {
                0 => forge(&mut r, interleaved / 2),
                1 => forge(&mut r, interleaved - interleaved / 2),
                _ => {}
            }
        }
        let last = last.unwrap();
        if interleaved < slots {
            assert_eq!(last, Outcome::Complete(b"one two three".to_vec()));
        } else {
            // Evicted in between: the last chunk started a new partial.
            assert_eq!(last, Outcome::Incomplete, "{interleaved} interleaved");
        }
        let evicted = r.take_evictions()[0].1;
        let started = 100 + interleaved + 1 + restarts;
        assert_eq!(evicted, u64::from(started - slots));
        check_invariants(&r);
    }
}

#[test]
fn owner_bytes_evict_older_partials_only() {
    let t = Instant::now();
    let per_chunk = 100 + CHUNK_OVERHEAD;
    let limits = ReassemblyLimits {
        max_bytes_per_owner: 3 * per_chunk,
        ..ReassemblyLimits::default()
    };
    let mut r = Reassembler::new(limits);
    let c = [0u8; 100];
    let evicted = |r: &mut Reassembler| r.take_evictions()[0].1;
    for id in 1..=3 {
        assert_eq!(r.insert(t, 1, &frag(id, 0, 3, &c)), Outcome::Incomplete);
    }
    assert_eq!(r.owner_usage(1), (3, 3 * per_chunk));
    // The newest message grows over the budget: the oldest makes way.
    assert_eq!(r.insert(t, 1, &frag(3, 1, 3, &c)), Outcome::Incomplete);
    assert_eq!(evicted(&mut r), 1);
    assert!(!r.partials.contains_key(&(1, 1)));
    assert_eq!(r.owner_usage(1), (2, 3 * per_chunk));
    // An older message may not push out a newer one: it is dropped itself.
    assert_eq!(
        r.insert(t, 1, &frag(2, 1, 3, &c)),
        Outcome::Dropped(DropReason::OwnerBytes)
    );
    assert_eq!(evicted(&mut r), 0);
    assert_eq!(r.owner_usage(1), (1, 2 * per_chunk));
    // Another owner is unaffected.
    assert_eq!(r.insert(t, 2, &frag(2, 0, 3, &c)), Outcome::Incomplete);
    // A new message evicts what it needs, oldest first: here, the rest.
    let whole = [1u8; 3 * 100 + 2 * CHUNK_OVERHEAD];
    assert_eq!(r.insert(t, 1, &frag(4, 0, 2, &whole)), Outcome::Incomplete);
    assert_eq!(evicted(&mut r), 1);
    assert_eq!(r.owner_usage(1), (1, 3 * per_chunk));
    check_invariants(&r);
    // A message that cannot fit even alone is refused and evicts nothing.
    let over = [1u8; 3 * 100 + 2 * CHUNK_OVERHEAD + 1];
    assert_eq!(
        r.insert(t, 1, &frag(5, 0, 2, &over)),
        Outcome::Dropped(DropReason::OwnerBytes)
    );
    assert_eq!(
        r.insert(t, 1, &frag(4, 1, 2, b"x")),
        Outcome::Dropped(DropReason::OwnerBytes)
    );
    assert_eq!(evicted(&mut r), 0);
    assert_eq!(r.owner_usage(1), (0, 0));
    assert_eq!(r.total_bytes(), per_chunk);
    check_invariants(&r);
    // Not even a slot is freed for it.
    let mut r = Reassembler::new(ReassemblyLimits {
        max_partials_per_owner: 1,
        ..r.limits().clone()
    });
    assert_eq!(r.insert(t, 1, &frag(1, 0, 2, &c)), Outcome::Incomplete);
    assert_eq!(
        r.insert(t, 1, &frag(2, 0, 2, &over)),
        Outcome::Dropped(DropReason::OwnerBytes)
    );
    assert_eq!((evicted(&mut r), r.owner_usage(1)), (0, (1, per_chunk)));
}

#[test]
fn a_full_total_budget_is_shared_fairly() {
    let t = Instant::now();
    let pc = 100 + CHUNK_OVERHEAD;
    let limits = ReassemblyLimits {
        max_total_bytes: 6 * pc,
        max_bytes_per_owner: 6 * pc,
        ..ReassemblyLimits::default()
    };
    let mut r = Reassembler::new(limits);
    let c = [0u8; 100];
    let fair = |r: &mut Reassembler| {
        let [(_, own), (_, fair)] = r.take_evictions();
        assert_eq!(own, 0);
        fair
    };
    // Owner 1 alone may take the whole budget: 3 messages of 2 chunks.
    for id in 1..=3 {
        for index in 0..2 {
            let out = r.insert(t, 1, &frag(id, index, 4, &c));
            assert_eq!(out, Outcome::Incomplete);
        }
    }
    assert_eq!(r.total_bytes(), 6 * pc);
    // Owner 2 is within its fair share (half): owner 1's oldest makes way.
    assert_eq!(r.insert(t, 2, &frag(1, 0, 4, &c)), Outcome::Incomplete);
    assert_eq!(fair(&mut r), 1);
    assert_eq!(r.owner_usage(1), (2, 4 * pc));
    assert_eq!(r.insert(t, 2, &frag(1, 1, 4, &c)), Outcome::Incomplete);
    assert_eq!(fair(&mut r), 0);
    // Up to exactly its share (3 chunks), again at the expense of the largest.
    assert_eq!(r.insert(t, 2, &frag(2, 0, 4, &c)), Outcome::Incomplete);
    assert_eq!(fair(&mut r), 1);
    assert_eq!(
        (r.owner_usage(1), r.owner_usage(2)),
        ((1, 2 * pc), (2, 3 * pc))
    );
    assert_eq!(r.insert(t, 2, &frag(2, 1, 4, &c)), Outcome::Incomplete);
    assert_eq!(r.total_bytes(), 6 * pc);
    // Beyond its share, owner 2 competes with no one: its message is dropped.
    assert_eq!(
        r.insert(t, 2, &frag(2, 2, 4, &c)),
        Outcome::Dropped(DropReason::TotalBytes)
    );
    assert_eq!(fair(&mut r), 0);
    assert_eq!(
        (r.owner_usage(1), r.owner_usage(2)),
        ((1, 2 * pc), (1, 2 * pc))
    );
    assert_eq!(r.insert(t, 1, &frag(3, 2, 4, &c)), Outcome::Incomplete);
    // A third owner: shares are now 2 chunks, and owner 1 holds the most.
    assert_eq!(r.insert(t, 3, &frag(1, 0, 4, &c)), Outcome::Incomplete);
    assert_eq!(r.total_bytes(), 6 * pc);
    assert_eq!(r.insert(t, 3, &frag(1, 1, 4, &c)), Outcome::Incomplete);
    assert_eq!(fair(&mut r), 1);
    assert_eq!(r.owner_usage(1), (0, 0));
    assert_eq!(
        (r.owner_usage(2), r.owner_usage(3)),
        ((1, 2 * pc), (1, 2 * pc))
    );
    check_invariants(&r);
    // A chunk larger than the whole budget is refused outright.
    let mut r = Reassembler::new(ReassemblyLimits {
        max_bytes_per_owner: 100 * pc,
        ..r.limits().clone()
    });
    assert_eq!(r.insert(t, 1, &frag(1, 0, 2, &c)), Outcome::Incomplete);
    let huge = [0u8; 6 * 100 + 5 * CHUNK_OVERHEAD + 1];
    assert_eq!(
        r.insert(t, 2, &frag(1, 0, 2, &huge)),
        Outcome::Dropped(DropReason::TotalBytes)
    );
    assert_eq!(fair(&mut r), 0);
    assert_eq!(r.total_bytes(), pc);
    check_invariants(&r);
}

#[test]
fn expiry_at_exactly_max_age() {
    let base = Instant::now();
    let sec = Duration::from_secs(1);
    let limits = ReassemblyLimits::default();
    let age = limits.max_age;
    let mut r = Reassembler::new(limits);
    assert_eq!(r.next_expiry(), None);
    assert_eq!(r.insert(base, 1, &frag(1, 0, 2, b"a")), Outcome::Incomplete);
    assert_eq!(
        r.insert(base + sec, 1, &frag(2, 0, 2, b"a")),
        Outcome::Incomplete
    );
    assert_eq!(
        r.insert(base + 2 * sec, 2, &frag(3, 0, 2, b"a")),
        Outcome::Incomplete
    );
    // The middle one completes, so only two can expire.
    assert_eq!(
        r.insert(base + 2 * sec, 1, &frag(2, 1, 2, b"b")),
        Outcome::Complete(b"ab".to_vec())
    );
    assert_eq!(r.next_expiry(), Some(base + age));
    assert_eq!(r.expire(base + age - Duration::from_nanos(1)), 0);
    assert_eq!(r.partials(), 2);
    assert_eq!(r.expire(base + age), 1);
    assert_eq!(r.owner_usage(1), (0, 0));
    // The completed message's entry is skipped, not counted.
    assert_eq!(r.next_expiry(), Some(base + 2 * sec + age));
    assert_eq!(r.expire(base + 2 * sec + age), 1);
    assert_eq!(r.next_expiry(), None);
    assert_eq!((r.partials(), r.total_bytes()), (0, 0));
    check_invariants(&r);
}

#[test]
fn clock_stepping_back_never_expires_early() {
    let base = Instant::now();
    let sec = Duration::from_secs(1);
    let mut r = Reassembler::new(ReassemblyLimits::default());
    assert_eq!(
        r.insert(base + 5 * sec, 1, &frag(1, 0, 2, b"a")),
        Outcome::Incomplete
    );
    assert_eq!(r.insert(base, 1, &frag(2, 0, 2, b"a")), Outcome::Incomplete);
    check_invariants(&r);
    assert_eq!(r.expire(base + 10 * sec), 0);
    assert_eq!(r.expire(base + 15 * sec), 2);
}

#[test]
fn remove_owner_frees_usage() {
    let t = Instant::now();
    let mut r = Reassembler::new(ReassemblyLimits::default());
    for id in 0..5 {
        assert_eq!(r.insert(t, 1, &frag(id, 0, 4, b"abc")), Outcome::Incomplete);
    }
    assert_eq!(r.insert(t, 2, &frag(0, 0, 4, b"abc")), Outcome::Incomplete);
    assert_eq!(r.owner_usage(1), (5, 5 * (3 + CHUNK_OVERHEAD)));
    r.remove_owner(1);
    assert_eq!(r.owner_usage(1), (0, 0));
    assert_eq!(r.partials(), 1);
    assert_eq!(r.total_bytes(), 3 + CHUNK_OVERHEAD);
    assert_eq!(r.next_expiry(), Some(t + r.limits().max_age));
    check_invariants(&r);
    r.remove_owner(2);
    r.remove_owner(3);
    assert_eq!((r.partials(), r.total_bytes()), (0, 0));
    assert_eq!(r.next_expiry(), None);
    assert!(r.owners.is_empty());
    check_invariants(&r);
}

#[test]
fn huge_count_flood_stays_bounded() {
    let t = Instant::now();
    let limits = ReassemblyLimits::default();
    let mut r = Reassembler::new(limits.clone());
    for owner in 0..4u64 {
        for msg_id in 0..1000u32 {
            for index in 0..64u16 {
                let out = r.insert(t, owner, &frag(msg_id, index, u16::MAX, b"x"));
                assert_eq!(out, Outcome::Incomplete);
                assert!(r.total_bytes() <= limits.max_total_bytes);
                let (held, bytes) = r.owner_usage(owner);
                assert!(held <= limits.max_partials_per_owner);
                assert!(bytes <= limits.max_bytes_per_owner);
            }
        }
        check_invariants(&r);
    }
    // Each new msg_id beyond the slots evicted its owner's oldest.
    let slots = limits.max_partials_per_owner;
    assert_eq!(
        r.take_evictions(),
        [
            (DropReason::Evicted, 4 * (1000 - slots as u64)),
            (DropReason::FairShare, 0)
        ]
    );
    assert_eq!(r.partials(), 4 * slots);
    assert_eq!(
        r.total_bytes(),
        4 * limits.max_partials_per_owner * 64 * (1 + CHUNK_OVERHEAD)
    );
    // Buffers reflect bytes received, not the claimed count.
    for p in r.partials.values() {
        assert!(p.data.capacity() <= 128);
        assert!(p.chunks.capacity() <= 128);
    }

    // Where the claimed count cannot fit at all it is refused before buffering.
    let mut r = Reassembler::new(ReassemblyLimits {
        max_message_bytes: 60_000,
        ..ReassemblyLimits::default()
    });
    for msg_id in 0..1000u32 {
        for index in 0..64u16 {
            assert_eq!(
                r.insert(t, 1, &frag(msg_id, index, u16::MAX, b"x")),
                Outcome::Dropped(DropReason::TooLarge)
            );
        }
    }
    assert_eq!((r.partials(), r.total_bytes()), (0, 0));
}

#[test]
fn expiry_queue_stays_bounded_when_messages_complete() {
    let t = Instant::now();
    let mut r = Reassembler::new(ReassemblyLimits::default());
    // A long-lived partial at the front keeps stale entries from being popped.
    assert_eq!(
        r.insert(t, 0, &frag(u32::MAX, 0, 2, b"x")),
        Outcome::Incomplete
    );
    for i in 0..100_000u32 {
        let owner = u64::from(i % 16) + 1;
        assert_eq!(
            r.insert(t, owner, &frag(i, 1, 2, b"b")),
            Outcome::Incomplete
        );
        assert_eq!(
            r.insert(t, owner, &frag(i, 0, 2, b"a")),
            Outcome::Complete(b"ab".to_vec())
        );
        assert!(r.expiry.len() <= 2 * r.partials() + COMPACT_SLACK + 1);
    }
    assert_eq!(r.partials(), 1);
    check_invariants(&r);
    assert_eq!(r.expire(t + r.limits().max_age), 1);
    assert!(r.expiry.is_empty());
}

#[test]
fn drop_reason_names() {
    let names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(
        names,
        [
            "duplicate",
            "index_out_of_range",
            "count_mismatch",
            "too_large",
            "too_many_partials",
            "owner_bytes",
            "total_bytes",
            "expired",
            "evicted",
            "fair_share"
        ]
    );
    assert_eq!(DropReason::TooManyPartials.to_string(), "too_many_partials");
}

#[test]
fn random_fragments_keep_invariants() {
    let limits = ReassemblyLimits {
        max_partials_per_owner: 4,
        max_bytes_per_owner: 2_000,
        max_total_bytes: 5_000,
        max_message_bytes: 1_500,
        max_age: Duration::from_millis(500),
    };
    let mut rng = XorShift::new(0xDEAD_BEEF_CAFE_F00D);
    let base = Instant::now();
    let mut now = base;
    let mut r = Reassembler::new(limits.clone());
    let mut completed = 0;
    let mut dropped = [0u64; DropReason::ALL.len()];
    for step in 0..200_000u32 {
        now += Duration::from_micros(rng.below(200));
        match rng.below(1000) {
            0 => r.remove_owner(rng.below(6)),
            1..=20 => {
                r.expire(now);
                if let Some(at) = r.next_expiry() {
                    assert!(at > now);
                }
            }
            _ => {
                let owner = rng.below(6);
                let msg_id = rng.below(12) as u32;
                let count = match rng.below(10) {
                    0 => rng.next() as u16,
                    1 => 1,
                    _ => 1 + rng.below(5) as u16,
                };
                let index = if rng.below(20) == 0 {
                    rng.next() as u16
                } else {
                    rng.below(u64::from(count).max(1)) as u16
                };
                let len = match rng.below(10) {
                    0 => 1 + rng.below(1_600) as usize,
                    _ => rng.below(300) as usize,
                };
                let mut value = Vec::with_capacity(8 + len);
                value.extend_from_slice(&msg_id.to_be_bytes());
                value.extend_from_slice(&index.to_be_bytes());
                value.extend_from_slice(&count.to_be_bytes());
                value.extend_from_slice(&rng.bytes(len));
                if let Some(f) = parse_fragment(&value) {
                    match r.insert(now, owner, &f) {
                        Outcome::Complete(p) => {
                            assert!(p.len() <= limits.max_message_bytes);
                            completed += 1;
                        }
                        Outcome::Dropped(why) => {
                            assert!(
                                !matches!(
                                    why,
                                    DropReason::Expired
                                        | DropReason::Evicted
                                        | DropReason::FairShare
                                ),
                                "{why} reported by insert"
                            );
                            dropped[why as usize] += 1;
                        }
                        Outcome::Incomplete => {}
                    }
                    for (why, n) in r.take_evictions() {
                        dropped[why as usize] += n;
                    }
                }
            }
        }
        assert!(r.total_bytes() <= limits.max_total_bytes);
        for owner in 0..6 {
            let (held, bytes) = r.owner_usage(owner);
            assert!(held <= limits.max_partials_per_owner);
            assert!(bytes <= limits.max_bytes_per_owner);
        }
        if step % 1000 == 0 {
            check_invariants(&r);
        }
    }
    check_invariants(&r);
    // The generator must actually exercise both paths.
    assert!(completed > 100, "completed {completed}");
    assert!(
        dropped.iter().filter(|&&n| n > 0).count() >= 5,
        "{dropped:?}"
    );
    for why in [
        DropReason::Evicted,
        DropReason::FairShare,
        DropReason::TotalBytes,
    ] {
        assert!(dropped[why as usize] > 0, "no {why}: {dropped:?}");
    }
    // Everything left eventually expires.
    r.expire(now + limits.max_age);
    assert_eq!((r.partials(), r.total_bytes()), (0, 0));
    assert!(r.owners.is_empty());
}
