//! The reassembly fuzz target: a [`Reassembler`] driven by arbitrary
//! inserts and expiries, checked against a shadow model of what it must hold.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::reassembly::{DropReason, Outcome, Reassembler, ReassemblyLimits, CHUNK_OVERHEAD};
use crate::wire::fragment::FragmentHeader;

use super::ByteReader;

const R_OWNERS: u64 = 4;

fn reassembly_limits() -> ReassemblyLimits {
    ReassemblyLimits {
        max_partials_per_owner: 3,
        max_bytes_per_owner: 900,
        max_total_bytes: 2_000,
        max_message_bytes: 600,
        max_age: Duration::from_millis(1_000),
    }
}

/// What the model knows about one buffered message.
struct ShadowPartial {
    count: u16,
    created: Instant,
    /// First-fragment arrival order, by which an owner's partials are evicted.
    serial: u64,
    chunks: BTreeMap<u16, Vec<u8>>,
}

impl ShadowPartial {
    fn cost(&self) -> usize {
        self.chunks.values().map(|c| c.len() + CHUNK_OVERHEAD).sum()
    }
}

/// The reassembly rules (module docs of `reassembly`) restated the naive
/// way, scanning every partial where the reassembler keeps indexes, to
/// predict exactly what it must answer and evict.
struct Shadow {
    limits: ReassemblyLimits,
    partials: HashMap<(u64, u32), ShadowPartial>,
    next_serial: u64,
    /// Evictions since the last check: (same owner, fair share).
    evicted: (u64, u64),
}

impl Shadow {
    fn usage(&self, owner: u64) -> (usize, usize) {
        let mine = self.partials.iter().filter(|(k, _)| k.0 == owner);
        mine.fold((0, 0), |(n, b), (_, p)| (n + 1, b + p.cost()))
    }

    fn total(&self) -> usize {
        self.partials.values().map(ShadowPartial::cost).sum()
    }

    /// Evicts `owner`'s oldest partial unless its serial is `keep`.
    fn evict_oldest(&mut self, owner: u64, keep: Option<u64>) -> bool {
        let oldest = self
            .partials
            .iter()
            .filter(|(k, _)| k.0 == owner)
            .min_by_key(|(_, p)| p.serial)
            .map(|(k, p)| (*k, p.serial));
        match oldest {
            Some((key, serial)) if Some(serial) != keep => self.partials.remove(&key).is_some(),
            _ => false,
        }
    }

    fn make_room(
        &mut self,
        owner: u64,
        growing: Option<(u64, usize)>,
        cost: usize,
    ) -> Result<(), DropReason> {
        let limits = self.limits.clone();
        let (keep, alone) = growing.map_or((None, cost), |(s, held)| (Some(s), held + cost));
        if alone > limits.max_bytes_per_owner {
            return Err(DropReason::OwnerBytes);
        }
        if alone > limits.max_total_bytes {
            return Err(DropReason::TotalBytes);
        }
        while self.usage(owner).1 + cost > limits.max_bytes_per_owner {
            if !self.evict_oldest(owner, keep) {
                return Err(DropReason::OwnerBytes);
            }
            self.evicted.0 += 1;
        }
        while self.total() + cost > limits.max_total_bytes {
            let holders: HashSet<u64> = self.partials.keys().map(|k| k.0).collect();
            let n = holders.len() + usize::from(!holders.contains(&owner));
            if self.usage(owner).1 + cost > limits.max_total_bytes / n {
                return Err(DropReason::TotalBytes);
            }
            let largest = holders
                .iter()
                .map(|&o| (self.usage(o).1, o))
                .max()
                .map(|(_, o)| o);
            match largest {
                Some(o) if o != owner && self.evict_oldest(o, None) => self.evicted.1 += 1,
                _ => return Err(DropReason::TotalBytes),
            }
        }
        Ok(())
    }

    fn insert(
        &mut self,
        now: Instant,
        owner: u64,
        msg_id: u32,
        index: u16,
        count: u16,
        chunk: &[u8],
    ) -> Outcome {
        let limits = self.limits.clone();
        let key = (owner, msg_id);
        let cost = chunk.len() + CHUNK_OVERHEAD;
        if let Some(p) = self.partials.get(&key) {
            let have: usize = p.chunks.values().map(Vec::len).sum();
            let missing = usize::from(p.count).saturating_sub(p.chunks.len() + 1);
            let growing = (p.serial, p.cost());
            let rule = if count != p.count {
                Err(DropReason::CountMismatch)
            } else if index >= p.count {
                Err(DropReason::IndexOutOfRange)
            } else if p.chunks.contains_key(&index) {
                Err(DropReason::Duplicate)
            } else if have + chunk.len() + missing > limits.max_message_bytes {
                Err(DropReason::TooLarge)
            } else {
                self.make_room(owner, Some(growing), cost)
            };
            if let Err(why) = rule {
                self.partials.remove(&key);
                return Outcome::Dropped(why);
            }
            let p = self
                .partials
                .get_mut(&key)
                .expect("make_room kept the growing partial");
            p.chunks.insert(index, chunk.to_vec());
            if p.chunks.len() < usize::from(count) {
                return Outcome::Incomplete;
            }
            let p = self.partials.remove(&key).expect("just completed");
            return Outcome::Complete(p.chunks.into_values().flatten().collect());
        }
        if index >= count {
            return Outcome::Dropped(DropReason::IndexOutOfRange);
        }
        if chunk.len() + usize::from(count) - 1 > limits.max_message_bytes {
            return Outcome::Dropped(DropReason::TooLarge);
        }
        if count == 1 {
            return Outcome::Complete(chunk.to_vec());
        }
        if limits.max_partials_per_owner == 0 {
            return Outcome::Dropped(DropReason::TooManyPartials);
        }
        if cost > limits.max_bytes_per_owner {
            return Outcome::Dropped(DropReason::OwnerBytes);
        }
        if cost > limits.max_total_bytes {
            return Outcome::Dropped(DropReason::TotalBytes);
        }
        while self.usage(owner).0 >= limits.max_partials_per_owner {
            assert!(self.evict_oldest(owner, None));
            self.evicted.0 += 1;
        }
        if let Err(why) = self.make_room(owner, None, cost) {
            return Outcome::Dropped(why);
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let chunks = BTreeMap::from([(index, chunk.to_vec())]);
        self.partials.insert(
            key,
            ShadowPartial {
                count,
                created: now,
                serial,
                chunks,
            },
        );
        Outcome::Incomplete
    }
}

/// A [`Reassembler`] with small limits driven by a program of operations,
/// checked against a naive model of the same rules ([`Shadow`]).
///
/// Each op is one byte (low 2 bits pick it) plus arguments:
/// insert a fragment (owner, msg_id, index, count, chunk length, fill byte),
/// advance the clock, expire, or remove an owner. Every insert must give
/// the model's outcome (the payload of a completed message is the model's
/// chunks in index order; every drop frees the whole message) and evict
/// what the model evicts, counted by reason. After every op:
/// `total_bytes <= max_total_bytes`, per-owner usage within the limits, the
/// partial count and byte accounting equal the model's, and
/// [`Reassembler::next_expiry`] equals the model's oldest partial + `max_age`.
pub fn reassembly(data: &[u8]) {
    let limits = reassembly_limits();
    let mut r = Reassembler::new(limits.clone());
    let mut shadow = Shadow {
        limits: limits.clone(),
        partials: HashMap::new(),
        next_serial: 0,
        evicted: (0, 0),
    };
    let base = Instant::now();
    let mut now = base;
    let mut input = ByteReader::new(data);
    while let Some(op) = input.u8() {
        match op & 3 {
            0 | 1 => {
                let Some(frag) = reassembly_insert(&mut input, op) else {
                    break;
                };
                let (owner, msg_id, index, count, chunk) = frag;
                let f = FragmentHeader {
                    msg_id,
                    index,
                    count,
                    chunk: &chunk,
                };
                let got = r.insert(now, owner, &f);
                let want = shadow.insert(now, owner, msg_id, index, count, &chunk);
                assert_eq!(
                    got, want,
                    "insert outcome ({owner}, {msg_id}, {index}/{count})"
                );
                let (own, fair) = std::mem::take(&mut shadow.evicted);
                assert_eq!(
                    r.take_evictions(),
                    [(DropReason::Evicted, own), (DropReason::FairShare, fair)],
                    "evictions"
                );
            }
            2 => {
                let Some(ms) = input.u16() else { break };
                now += Duration::from_millis(u64::from(ms));
                if op & 4 != 0 {
                    let n = r.expire(now);
                    let before = shadow.partials.len();
                    shadow
                        .partials
                        .retain(|_, p| now.saturating_duration_since(p.created) < limits.max_age);
                    assert_eq!(n, before - shadow.partials.len(), "expire count");
                    if let Some(at) = r.next_expiry() {
                        assert!(at > now, "expire left a due partial");
                    }
                }
            }
            _ => {
                let owner = u64::from(op >> 2) % (R_OWNERS + 1);
                r.remove_owner(owner);
                shadow.partials.retain(|k, _| k.0 != owner);
                assert_eq!(r.owner_usage(owner), (0, 0), "remove_owner left usage");
            }
        }
        // Invariants.
        assert!(
            r.total_bytes() <= limits.max_total_bytes,
            "total bytes over limit"
        );
        assert_eq!(r.partials(), shadow.partials.len(), "partial count");
        assert_eq!(r.total_bytes(), shadow.total(), "total byte accounting");
        for owner in 0..=R_OWNERS {
            let (held, bytes) = r.owner_usage(owner);
            assert!(held <= limits.max_partials_per_owner, "partials over limit");
            assert!(
                bytes <= limits.max_bytes_per_owner,
                "owner bytes over limit"
            );
            assert_eq!((held, bytes), shadow.usage(owner), "owner accounting");
        }
        let oldest = shadow.partials.values().map(|p| p.created).min();
        assert_eq!(
            r.next_expiry(),
            oldest.map(|t| t + limits.max_age),
            "next_expiry"
        );
    }
}

type Frag = (u64, u32, u16, u16, Vec<u8>);

/// Decodes an insert op; `op & 1` selects full-width fields.
fn reassembly_insert(input: &mut ByteReader<'_>, op: u8) -> Option<Frag> {
    let owner = u64::from(op >> 2) % (R_OWNERS + 1);
    let (msg_id, index, count) = if op & 1 == 0 {
        // Small values, so messages actually complete and collide.
        let a = input.u8()?;
        let b = input.u8()?;
        (
            u32::from(a & 3),
            u16::from(b & 7),
            u16::from(b >> 3) % 8 + 1,
        )
    } else {
        (input.u32()?, input.u16()?, input.u16()?)
    };
    let len = usize::from(input.u8()?) * 3 + 1;
    let fill = input.u8()?;
    let chunk = (0..len)
        .map(|i| {
            fill.wrapping_add(i as u8)
                .wrapping_add((index as u8).wrapping_mul(17))
        })
        .collect();
    Some((owner, msg_id, index, count, chunk))
}
