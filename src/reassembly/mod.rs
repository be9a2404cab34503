//! Bounded reassembly of FRAGMENTs, shared by the relay and client cores.
//!
//! Reassembly buffers attacker-controlled data, so every limit is enforced on
//! bytes actually received (plus a fixed per-chunk overhead), never on the
//! claimed `count`. Any protocol violation inside a message (duplicate index,
//! index out of range, disagreeing count, oversize) discards the whole message:
//! keeping half of a message that can no longer complete would only pin memory
//! until it expires. Nothing here panics on input.
//!
//! # When a limit is reached: eviction, oldest first
//!
//! FRAGMENTs are reassembled before the token they carry is authenticated,
//! so whoever can forge an owner's source address fills that owner's slots
//! and bytes. If a full owner refused new messages, a forger could starve it:
//! every genuine message would be refused for as long as the forged partials
//! live, and the forger renews them for free. So room is made instead:
//!
//! - A new message of an owner whose `max_partials_per_owner` slots are full
//!   evicts the owner's oldest partial ([`DropReason::Evicted`]).
//! - A chunk that would take its owner over `max_bytes_per_owner` evicts
//!   that owner's partials *older than its own message*, oldest first
//!   ([`DropReason::Evicted`]); when its message is the owner's oldest and
//!   still does not fit, that message is dropped ([`DropReason::OwnerBytes`]).
//! - A chunk that would take the total over `max_total_bytes` is the global
//!   budget's business. An owner whose bytes, with the chunk, stay within its
//!   fair share (`max_total_bytes` divided by the owners holding partials,
//!   itself included) takes room from the owner holding the most bytes,
//!   whose oldest partials are evicted one by one ([`DropReason::FairShare`]).
//!   An owner beyond its fair share competes with no one: its chunk's
//!   message is dropped ([`DropReason::TotalBytes`]).
//!
//! Age is first-fragment arrival, not last activity. A forger refreshes a
//! partial as cheaply as it starts one, so under least-recently-used one new
//! msg_id, after touching the others, would push out a genuine message
//! between two of its fragments; by arrival, only *new* messages count and
//! nobody can make a partial younger. The oldest partial is also the one
//! nearest expiry, and the likeliest abandoned. And arrival order never
//! changes, so keeping it costs nothing per fragment.
//!
//! # What an owner is guaranteed
//!
//! While the total budget has room, nothing that arrived before a message's
//! first fragment can push that message out. Precisely: a message X of
//! owner O, intact and within the limits on its own, completes unless,
//! between its first fragment and its last, one of these happens:
//!
//! - O starts `max_partials_per_owner` or more other new messages (so one
//!   fewer may be interleaved with X, by anyone who can send as O);
//! - the partials O starts meanwhile hold, with X, more than
//!   `max_bytes_per_owner` (partials older than X go first, and an older
//!   partial that grows can evict only partials older than itself);
//! - the total budget is full and O, holding the most bytes, gives way to
//!   an owner below its fair share (again its partials older than X first);
//! - the total budget is full and O, with X's next chunk, is beyond its fair
//!   share: only here does what O held before X count, and X is dropped;
//! - `max_age` passes.
//!
//! With the relay's defaults (8 slots, 256 KiB per client, 8 MiB in total)
//! the total budget cannot fill while 32 or fewer clients hold partials, so
//! a forger who spoofs one member can only churn that member's slots: the
//! member's message, sent as one burst, gets through unless the forger
//! lands 8 new msg_ids, or 256 KiB less the message, inside that burst.
//! Filling the total budget takes more than 32 clients at their byte limit
//! (a forger spoofing many members at once); then a member at or beyond its
//! fair share gets no new bytes until its partials complete, expire or give
//! way under the fair-share rule, so such a forger can delay it. Nor does
//! the guarantee cover an on-path attacker, who sees the msg_id and can
//! spoil X with a duplicate index (it could as well drop X).
//!
//! Costs: an insert is O(log n) amortised in the partials and owners held
//! (per-owner arrival order and a by-bytes index of owners are ordered
//! maps; each partial is evicted at most once).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::wire::fragment::FragmentHeader;

/// Charged against the byte limits for every buffered chunk on top of its
/// length, so that floods of 1-byte chunks cannot make the bookkeeping
/// (chunk index entries, map and queue slots) outgrow the budget.
pub const CHUNK_OVERHEAD: usize = 32;

/// Stale expiry entries tolerated beyond twice the live partial count before
/// the queue is compacted; the slack keeps tiny queues from compacting on
/// every call.
const COMPACT_SLACK: usize = 64;

/// Bounds on what a [`Reassembler`] may hold, so memory stays fixed whatever peers send.
#[derive(Clone, Debug)]
pub struct ReassemblyLimits {
    /// Incomplete messages one owner may have in flight (default 8); a new
    /// one beyond it evicts the owner's oldest.
    pub max_partials_per_owner: usize,
    /// Accounted bytes one owner may have buffered (default 256 KiB).
    pub max_bytes_per_owner: usize,
    /// Accounted bytes buffered across all owners (default 8 MiB), shared
    /// fairly between the owners holding partials when it is full.
    pub max_total_bytes: usize,
    /// Largest reassembled payload (default 64 KiB).
    pub max_message_bytes: usize,
    /// How long an incomplete message may wait for its missing chunks (default 10 s).
    pub max_age: Duration,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        ReassemblyLimits {
            max_partials_per_owner: 8,
            max_bytes_per_owner: 256 * 1024,
            max_total_bytes: 8 * 1024 * 1024,
            max_message_bytes: 64 * 1024,
            max_age: Duration::from_secs(10),
        }
    }
}

/// Why a message (or a lone fragment) was discarded; one counter per variant is the intended use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The index was already received for this message.
    Duplicate,
    /// `index >= count`.
    IndexOutOfRange,
    /// `count` differs from earlier fragments of the same message.
    CountMismatch,
    /// The message exceeds, or can no longer fit in, `max_message_bytes`.
    TooLarge,
    /// `max_partials_per_owner` is 0: no message may be buffered at all.
    TooManyPartials,
    /// The chunk would exceed `max_bytes_per_owner` although every older
    /// partial of its owner made way.
    OwnerBytes,
    /// The chunk would exceed `max_total_bytes`, and its owner would be
    /// beyond its fair share of it.
    TotalBytes,
    /// The message was still incomplete after `max_age`; only [`Reassembler::expire`] reports this.
    Expired,
    /// The owner's oldest partial made way for the same owner's newer
    /// message (slots or owner bytes full); reported through
    /// `Reassembler::take_evictions`.
    Evicted,
    /// The oldest partial of the owner holding the most bytes made way for
    /// an owner below its fair share of a full total budget; reported
    /// through `Reassembler::take_evictions`.
    FairShare,
}

impl DropReason {
    /// Every reason, so callers can build one metric per variant without listing them.
    pub const ALL: [DropReason; 10] = [
        DropReason::Duplicate,
        DropReason::IndexOutOfRange,
        DropReason::CountMismatch,
        DropReason::TooLarge,
        DropReason::TooManyPartials,
        DropReason::OwnerBytes,
        DropReason::TotalBytes,
        DropReason::Expired,
        DropReason::Evicted,
        DropReason::FairShare,
    ];

    /// Stable snake_case name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Duplicate => "duplicate",
            DropReason::IndexOutOfRange => "index_out_of_range",
            DropReason::CountMismatch => "count_mismatch",
            DropReason::TooLarge => "too_large",
            DropReason::TooManyPartials => "too_many_partials",
            DropReason::OwnerBytes => "owner_bytes",
            DropReason::TotalBytes => "total_bytes",
            DropReason::Expired => "expired",
            DropReason::Evicted => "evicted",
            DropReason::FairShare => "fair_share",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`Reassembler::insert`] did with a fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Buffered; the message still misses chunks.
    Incomplete,
    /// The fragment completed its message: here is the whole payload.
    Complete(Vec<u8>),
    /// The fragment was refused; if its message was buffered, all of it was freed.
    Dropped(DropReason),
}

/// Where one received chunk sits inside [`Partial::data`].
#[derive(Clone, Copy, Debug)]
struct ChunkRef {
    index: u16,
    offset: usize,
    len: usize,
}

/// An incomplete message. Chunks are appended in arrival order to one buffer
/// (one allocation that grows geometrically by an eighth, instead of one per
/// chunk).
#[derive(Debug)]
struct Partial {
    count: u16,
    /// Arrival order of first fragments, unique per reassembler: orders an
    /// owner's partials for eviction, and tells a partial from an earlier
    /// one with the same key, so leftover expiry entries of the earlier one
    /// are recognised as stale.
    serial: u64,
    data: Vec<u8>,
    /// Sorted by index, for duplicate detection by binary search.
    chunks: Vec<ChunkRef>,
    /// Bytes charged to the limits for this message.
    accounted: usize,
}

/// Per-owner bookkeeping: what to evict first, and what `remove_owner` frees
/// without scanning every partial.
#[derive(Debug, Default)]
struct OwnerUsage {
    /// The owner's partials by serial (first-fragment arrival), oldest first.
    by_age: BTreeMap<u64, u32>,
    bytes: usize,
}

#[derive(Clone, Copy, Debug)]
struct ExpiryEntry {
    created: Instant,
    owner: u64,
    msg_id: u32,
    serial: u64,
}

type Key = (u64, u32);

fn is_live(partials: &HashMap<Key, Partial>, e: &ExpiryEntry) -> bool {
    partials
        .get(&(e.owner, e.msg_id))
        .is_some_and(|p| p.serial == e.serial)
}

/// Reassembles FRAGMENT messages per owner within [`ReassemblyLimits`].
///
/// Owner = an opaque u64 the caller uses per client. The caller drives time:
/// call [`expire`](Self::expire) periodically (e.g. at
/// [`next_expiry`](Self::next_expiry)); `insert` never expires on its own so
/// every expiry is reported through `expire`'s return value. Partials that
/// `insert` evicts to make room are counted until
/// [`take_evictions`](Self::take_evictions) collects them.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    partials: HashMap<Key, Partial>,
    owners: HashMap<u64, OwnerUsage>,
    /// (bytes, owner) of every owner in `owners`: the last is the one that
    /// gives way under the fair-share rule.
    by_bytes: BTreeSet<(usize, u64)>,
    /// Creation order of partials; may hold stale entries of finished messages.
    expiry: VecDeque<ExpiryEntry>,
    total_bytes: usize,
    next_serial: u64,
    /// Partials evicted since the last `take_evictions`: (same owner, fair share).
    evicted: (u64, u64),
}

impl Reassembler {
    /// Creates an empty reassembler enforcing `limits`.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            limits,
            partials: HashMap::new(),
            owners: HashMap::new(),
            by_bytes: BTreeSet::new(),
            expiry: VecDeque::new(),
            total_bytes: 0,
            next_serial: 0,
            evicted: (0, 0),
        }
    }

    #[cfg(test)]
    /// The limits this reassembler enforces.
    pub fn limits(&self) -> &ReassemblyLimits {
        &self.limits
    }

    /// Feeds one fragment received from `owner` at `now`.
    ///
    /// A `count == 1` fragment completes at once without being buffered. The
    /// fragment should come from [`parse_fragment`]; a hand-built one with
    /// `count == 0` is reported as `IndexOutOfRange`. Making room may evict
    /// other partials (see the module docs); those are counted for
    /// [`take_evictions`](Self::take_evictions), not reported here.
    ///
    /// [`parse_fragment`]: crate::wire::fragment::parse_fragment
    pub fn insert(&mut self, now: Instant, owner: u64, frag: &FragmentHeader<'_>) -> Outcome {
        let key = (owner, frag.msg_id);
        let cost = frag.chunk.len().saturating_add(CHUNK_OVERHEAD);
        let outcome = if self.partials.contains_key(&key) {
            self.extend_partial(key, frag, cost)
        } else {
            self.start_partial(now, key, frag, cost)
        };
        self.tidy_expiry();
        outcome
    }

    /// Partials evicted by `insert` since the last call, by reason
    /// ([`DropReason::Evicted`], then [`DropReason::FairShare`]); resets the counts.
    pub fn take_evictions(&mut self) -> [(DropReason, u64); 2] {
        let (own, fair) = std::mem::take(&mut self.evicted);
        [(DropReason::Evicted, own), (DropReason::FairShare, fair)]
    }

    /// Drops every partial created at or before now - max_age; returns how many were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut dropped: usize = 0;
        while let Some(&e) = self.expiry.front() {
            if is_live(&self.partials, &e) {
                if now.saturating_duration_since(e.created) < self.limits.max_age {
                    break;
                }
                self.remove_partial((e.owner, e.msg_id));
                dropped = dropped.saturating_add(1);
            }
            self.expiry.pop_front();
        }
        self.maybe_compact();
        dropped
    }

    /// When the oldest partial expires (None when nothing is buffered).
    ///
    /// Also None if that instant is not representable, i.e. it never expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        // Mutating calls pop stale entries off the front, so this finds the
        // first live entry immediately.
        self.expiry
            .iter()
            .find(|e| is_live(&self.partials, e))
            .and_then(|e| e.created.checked_add(self.limits.max_age))
    }

    /// Frees everything an owner holds (client left).
    pub fn remove_owner(&mut self, owner: u64) {
        if let Some(usage) = self.owners.remove(&owner) {
            self.by_bytes.remove(&(usage.bytes, owner));
            for msg_id in usage.by_age.into_values() {
                if let Some(p) = self.partials.remove(&(owner, msg_id)) {
                    self.total_bytes = self.total_bytes.saturating_sub(p.accounted);
                }
            }
        }
        self.tidy_expiry();
    }

    /// (partial messages, accounted bytes) held for an owner.
    pub fn owner_usage(&self, owner: u64) -> (usize, usize) {
        self.owners
            .get(&owner)
            .map_or((0, 0), |u| (u.by_age.len(), u.bytes))
    }

    /// Accounted bytes held across all owners (chunk bytes plus [`CHUNK_OVERHEAD`] each).
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    #[cfg(any(test, fuzzing))]
    /// Incomplete messages held across all owners.
    pub fn partials(&self) -> usize {
        self.partials.len()
    }

    fn start_partial(
        &mut self,
        now: Instant,
        key: Key,
        frag: &FragmentHeader<'_>,
        cost: usize,
    ) -> Outcome {
        let limits = &self.limits;
        if frag.index >= frag.count {
            return Outcome::Dropped(DropReason::IndexOutOfRange);
        }
        // Every other chunk is non-empty, so this is the smallest the message can end up.
        let missing = usize::from(frag.count).saturating_sub(1);
        if frag.chunk.len().saturating_add(missing) > limits.max_message_bytes {
            return Outcome::Dropped(DropReason::TooLarge);
        }
        if frag.count == 1 {
            return Outcome::Complete(frag.chunk.to_vec());
        }
        if limits.max_partials_per_owner == 0 {
            return Outcome::Dropped(DropReason::TooManyPartials);
        }
        // Refused before anything is evicted for it.
        if let Err(reason) = fits_alone(limits, cost) {
            return Outcome::Dropped(reason);
        }
        // A new message displaces the owner's oldest (see the module docs).
        while self.owner_usage(key.0).0 >= self.limits.max_partials_per_owner {
            if !self.evict_oldest(key.0, None) {
                break;
            }
            self.evicted.0 = self.evicted.0.saturating_add(1);
        }
        if let Err(reason) = self.make_room(key.0, None, cost) {
            return Outcome::Dropped(reason);
        }

        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        // Keep the queue sorted even if a caller's clock steps back; a partial
        // then merely lives a little longer, it never expires early.
        let created = match self.expiry.back() {
            Some(back) if back.created > now => back.created,
            _ => now,
        };
        self.maybe_compact();
        self.expiry.push_back(ExpiryEntry {
            created,
            owner: key.0,
            msg_id: key.1,
            serial,
        });
        self.partials.insert(
            key,
            Partial {
                count: frag.count,
                serial,
                data: frag.chunk.to_vec(),
                chunks: vec![ChunkRef {
                    index: frag.index,
                    offset: 0,
                    len: frag.chunk.len(),
                }],
                accounted: cost,
            },
        );
        self.owners
            .entry(key.0)
            .or_default()
            .by_age
            .insert(serial, key.1);
        self.charge(key.0, cost);
        Outcome::Incomplete
    }

    fn extend_partial(&mut self, key: Key, frag: &FragmentHeader<'_>, cost: usize) -> Outcome {
        let Some(p) = self.partials.get(&key) else {
            return Outcome::Incomplete;
        };
        let growing = (p.serial, p.accounted);
        let checked = check_extend(p, frag, &self.limits)
            .and_then(|pos| self.make_room(key.0, Some(growing), cost).map(|()| pos));
        let pos = match checked {
            Ok(pos) => pos,
            Err(reason) => {
                self.remove_partial(key);
                return Outcome::Dropped(reason);
            }
        };
        // make_room evicts only partials older than this one or of other
        // owners, so it is still there.
        let Some(p) = self.partials.get_mut(&key) else {
            return Outcome::Incomplete;
        };
        // Vec's own doubling would let the buffers reach twice the bytes
        // the limits account for; see `reserve_bounded`.
        reserve_bounded(&mut p.chunks, 1);
        reserve_bounded(&mut p.data, frag.chunk.len());
        p.chunks.insert(
            pos,
            ChunkRef {
                index: frag.index,
                offset: p.data.len(),
                len: frag.chunk.len(),
            },
        );
        p.data.extend_from_slice(frag.chunk);
        p.accounted = p.accounted.saturating_add(cost);
        let complete = p.chunks.len() >= usize::from(p.count);
        self.charge(key.0, cost);
        if !complete {
            return Outcome::Incomplete;
        }
        match self.remove_partial(key) {
            Some(p) => Outcome::Complete(assemble(p)),
            None => Outcome::Incomplete,
        }
    }

    /// Evicts until `cost` more bytes of `owner` fit both byte limits, by
    /// the rules in the module docs; `growing` is the (serial, accounted
    /// bytes) of the partial the bytes are for (None for a new message),
    /// which is never evicted here, nor is anything of its owner younger
    /// than it.
    ///
    /// A message that could not fit even alone is refused before anything
    /// is evicted. Otherwise, if the total budget refuses it after the owner
    /// budget made room, what the owner budget evicted stays evicted: it
    /// was the owner's own, older than the refused message, and would have
    /// made way for it had the total budget allowed.
    fn make_room(
        &mut self,
        owner: u64,
        growing: Option<(u64, usize)>,
        cost: usize,
    ) -> Result<(), DropReason> {
        let (keep, alone) = growing.map_or((None, cost), |(serial, accounted)| {
            (Some(serial), accounted.saturating_add(cost))
        });
        fits_alone(&self.limits, alone)?;
        while self.owner_usage(owner).1.saturating_add(cost) > self.limits.max_bytes_per_owner {
            if !self.evict_oldest(owner, keep) {
                return Err(DropReason::OwnerBytes);
            }
            self.evicted.0 = self.evicted.0.saturating_add(1);
        }
        while self.total_bytes.saturating_add(cost) > self.limits.max_total_bytes {
            let mine = self.owners.get(&owner).map(|u| u.bytes);
            let holders = self
                .owners
                .len()
                .saturating_add(usize::from(mine.is_none()));
            let fair_share = self.limits.max_total_bytes / holders.max(1);
            if mine.unwrap_or(0).saturating_add(cost) > fair_share {
                return Err(DropReason::TotalBytes);
            }
            // Below its fair share while the total is full, the owner is
            // not the largest (the others average more than the share), so
            // the largest is someone else; the guard is for safety only.
            let Some(&(_, largest)) = self.by_bytes.last() else {
                return Err(DropReason::TotalBytes);
            };
            if largest == owner || !self.evict_oldest(largest, None) {
                return Err(DropReason::TotalBytes);
            }
            self.evicted.1 = self.evicted.1.saturating_add(1);
        }
        Ok(())
    }

    /// Evicts `owner`'s oldest partial unless it is `keep` (by serial);
    /// false if nothing was evicted.
    fn evict_oldest(&mut self, owner: u64, keep: Option<u64>) -> bool {
        let oldest = self
            .owners
            .get(&owner)
            .and_then(|u| u.by_age.first_key_value());
        match oldest {
            Some((&serial, &msg_id)) if Some(serial) != keep => {
                self.remove_partial((owner, msg_id)).is_some()
            }
            _ => false,
        }
    }

    /// Adds `cost` to an owner (which must have an entry) and to the total.
    fn charge(&mut self, owner: u64, cost: usize) {
        if let Some(usage) = self.owners.get_mut(&owner) {
            self.by_bytes.remove(&(usage.bytes, owner));
            usage.bytes = usage.bytes.saturating_add(cost);
            self.by_bytes.insert((usage.bytes, owner));
        }
        self.total_bytes = self.total_bytes.saturating_add(cost);
    }

    /// Removes one partial and releases its accounting; its expiry entry becomes stale.
    fn remove_partial(&mut self, key: Key) -> Option<Partial> {
        let p = self.partials.remove(&key)?;
        self.total_bytes = self.total_bytes.saturating_sub(p.accounted);
        if let Some(usage) = self.owners.get_mut(&key.0) {
            self.by_bytes.remove(&(usage.bytes, key.0));
            usage.bytes = usage.bytes.saturating_sub(p.accounted);
            usage.by_age.remove(&p.serial);
            if usage.by_age.is_empty() {
                self.owners.remove(&key.0);
            } else {
                self.by_bytes.insert((usage.bytes, key.0));
            }
        }
        Some(p)
    }

    /// Pops stale entries off the front (so `next_expiry` is O(1)) and bounds the rest.
    fn tidy_expiry(&mut self) {
        while let Some(e) = self.expiry.front() {
            if is_live(&self.partials, e) {
                break;
            }
            self.expiry.pop_front();
        }
        self.maybe_compact();
    }

    /// Stale entries behind a long-lived partial cannot be popped from the
    /// front, so once they outnumber live ones, filter them out. Each
    /// compaction removes more entries than remain, so the cost is amortised
    /// O(1) per push.
    fn maybe_compact(&mut self) {
        let bound = self
            .partials
            .len()
            .saturating_mul(2)
            .saturating_add(COMPACT_SLACK);
        if self.expiry.len() > bound {
            let partials = &self.partials;
            self.expiry.retain(|e| is_live(partials, e));
        }
    }
}

/// Whether a message of `bytes` accounted bytes could be held at all, were
/// everything else evicted.
fn fits_alone(limits: &ReassemblyLimits, bytes: usize) -> Result<(), DropReason> {
    if bytes > limits.max_bytes_per_owner {
        Err(DropReason::OwnerBytes)
    } else if bytes > limits.max_total_bytes {
        Err(DropReason::TotalBytes)
    } else {
        Ok(())
    }
}

/// Validates adding `frag` to `p`; returns where its index goes in `p.chunks`.
/// The byte budgets are `make_room`'s business.
fn check_extend(
    p: &Partial,
    frag: &FragmentHeader<'_>,
    limits: &ReassemblyLimits,
) -> Result<usize, DropReason> {
    if frag.count != p.count {
        return Err(DropReason::CountMismatch);
    }
    if frag.index >= p.count {
        return Err(DropReason::IndexOutOfRange);
    }
    let pos = match p.chunks.binary_search_by_key(&frag.index, |c| c.index) {
        Ok(_) => return Err(DropReason::Duplicate),
        Err(pos) => pos,
    };
    // Chunks still missing after this one are at least 1 byte each.
    let missing = usize::from(p.count).saturating_sub(p.chunks.len().saturating_add(1));
    let min_size = p
        .data
        .len()
        .saturating_add(frag.chunk.len())
        .saturating_add(missing);
    if min_size > limits.max_message_bytes {
        return Err(DropReason::TooLarge);
    }
    Ok(pos)
}

/// Makes room for `additional` more items, growing by at least an eighth of
/// the length. Growth stays geometric, so appends stay amortised O(1) and
/// tiny chunks cannot make us copy quadratically; yet the capacity never
/// exceeds the length by more than an eighth, so the buffers stay within
/// 1.125× of the chunk bytes the limits account (and the chunk index within
/// [`CHUNK_OVERHEAD`] per chunk), where doubling would allow 2×.
fn reserve_bounded<T>(v: &mut Vec<T>, additional: usize) {
    if v.capacity().saturating_sub(v.len()) < additional {
        v.reserve_exact(additional.max(v.len() / 8));
    }
}

/// Concatenates a complete partial's chunks in index order.
fn assemble(p: Partial) -> Vec<u8> {
    // In-order arrival (the common case) already left the payload contiguous.
    let mut expected = 0usize;
    let in_order = p.chunks.iter().all(|c| {
        let ok = c.offset == expected;
        expected = expected.saturating_add(c.len);
        ok
    });
    if in_order {
        return p.data;
    }
    let mut out = Vec::with_capacity(p.data.len());
    for c in &p.chunks {
        if let Some(bytes) = p.data.get(c.offset..c.offset.saturating_add(c.len)) {
            out.extend_from_slice(bytes);
        }
    }
    out
}

#[cfg(test)]
mod tests;
