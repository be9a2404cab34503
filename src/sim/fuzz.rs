//! Fuzz bodies, kept in the library so that the corpus under `fuzz/corpus/`
//! replays as an ordinary `cargo test` (`tests/fuzz_corpus.rs`) and the
//! cargo-fuzz targets under `fuzz/` stay one-line wrappers.
//!
//! Every function takes arbitrary bytes, must never panic on them, and
//! panics (with a message saying which invariant broke) only when the code
//! under test misbehaves. Not part of the public API.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::PublicKey;

use crate::client::{ClientCore, ClientEvent, ClientOptions};
use crate::reassembly::{DropReason, Outcome, Reassembler, ReassemblyLimits, CHUNK_OVERHEAD};
use crate::relay::config::Config;
use crate::relay::{Event, Relay, Transmits};
use crate::session::fernet::{self, FernetKey};
use crate::session::key::ServerKey;
use crate::wire::fragment::{self, FragmentHeader, FRAGMENT_OVERHEAD};
use crate::wire::tlv::{self, Reader};
use crate::wire::{self, inner, outer, Inner, InnerError, COOKIE_LEN};

/// A cursor over the fuzz input. Every read returns `None` once the input
/// is used up, which ends the program being decoded.
struct ByteReader<'a> {
    rest: &'a [u8],
}

impl<'a> ByteReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        ByteReader { rest: data }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }

    fn u64(&mut self) -> Option<u64> {
        Some((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        head
    }

    /// A length byte, then that many bytes (scaled by `unit`).
    fn blob(&mut self, unit: usize) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?).saturating_mul(unit);
        Some(self.take(n))
    }
}

// ---------------------------------------------------------------------------
// tlv

/// TLV reader and [`tlv::validate`] on arbitrary bytes.
///
/// Checks that the reader never panics, that `validate` succeeds exactly when
/// the reader yields no error, that after an error the reader yields nothing
/// more, that the TLVs read tile the consumed prefix exactly, and that
/// re-encoding a valid stream with [`tlv::put`] reproduces the input.
pub fn tlv(data: &[u8]) {
    let mut reader = Reader::new(data);
    let mut tlvs = Vec::new();
    let mut failed = false;
    for item in reader.by_ref() {
        match item {
            Ok(t) => {
                assert!(!failed, "TLV yielded after an error");
                tlvs.push(t);
            }
            Err(tlv::Malformed) => {
                assert!(!failed, "two errors from one reader");
                failed = true;
            }
        }
    }
    assert_eq!(reader.next(), None, "reader resumed after the end");
    assert_eq!(
        tlv::validate(data).is_ok(),
        !failed,
        "validate disagrees with the reader"
    );
    let consumed: usize = tlvs.iter().map(|t| tlv::HEADER_LEN + t.value.len()).sum();
    let mut again = Vec::with_capacity(consumed);
    for t in &tlvs {
        assert!(t.value.len() <= tlv::MAX_VALUE_LEN);
        tlv::put(&mut again, t.kind, t.value);
    }
    if failed {
        // The good prefix re-encodes to itself; what follows cannot be framed.
        assert!(consumed < data.len(), "error with nothing left to read");
        assert_eq!(&data[..consumed], &again[..], "prefix does not round-trip");
    } else {
        assert_eq!(again, data, "valid stream does not round-trip");
    }
}

// ---------------------------------------------------------------------------
// inner

/// [`wire::Inner::parse`] on arbitrary bytes, against a reference model.
///
/// The model walks the TLVs in order like the protocol text (§4) describes:
/// the first framing error, duplicate known type or badly sized SEQ/REASON
/// decides the error; otherwise SEQ must be present. Accepted plaintexts
/// are re-encoded canonically and must parse to the same value.
pub fn inner(data: &[u8]) {
    let got = Inner::parse(data);
    let want = inner_model(data);
    assert_eq!(got, want, "Inner::parse disagrees with the model");
    if let Ok(m) = got {
        assert!(tlv::validate(data).is_ok(), "accepted a malformed stream");
        let mut p = Vec::new();
        if m.gseq {
            inner::put_gseq(&mut p, m.seq);
        } else {
            wire::put_seq(&mut p, m.seq);
        }
        let fields = [
            (inner::BODY, m.body),
            (inner::SENDER_ID, m.sender_id),
            (inner::CLIENT_ID, m.client_id),
            (inner::PEER_JOINED, m.peer_joined),
            (inner::PEER_LEFT, m.peer_left),
        ];
        for (kind, v) in fields {
            if let Some(v) = v {
                tlv::put(&mut p, kind, v);
            }
        }
        if let Some(r) = m.reason {
            tlv::put_u8(&mut p, inner::REASON, r);
        }
        if m.server_closing {
            tlv::put(&mut p, inner::SERVER_CLOSING, &[]);
        }
        if let Some(c) = m.caps {
            tlv::put(&mut p, inner::CAPS, &c.to_be_bytes());
        }
        if let Some((epoch, key)) = m.group_key {
            inner::put_group_key(&mut p, epoch, key);
        }
        if let Some(a) = m.group_addr {
            inner::put_group_addr(&mut p, a);
        }
        if let Some(k) = m.group_signer {
            tlv::put(&mut p, inner::GROUP_SIGNER, k);
        }
        if let Some(e) = m.key_request {
            tlv::put(&mut p, inner::KEY_REQUEST, &e.to_be_bytes());
        }
        if m.probe {
            tlv::put(&mut p, inner::PROBE, &[]);
        }
        assert_eq!(
            Inner::parse(&p),
            Ok(m),
            "canonical form does not round-trip"
        );
    }
}

fn inner_model(data: &[u8]) -> Result<Inner<'_>, InnerError> {
    let mut out = Inner::default();
    let mut seen = HashSet::new();
    for t in Reader::new(data) {
        let Ok(t) = t else {
            return Err(InnerError::Malformed);
        };
        if !(inner::SEQ..=inner::PROBE).contains(&t.kind) {
            continue; // unknown inner types are skipped
        }
        if !seen.insert(t.kind) {
            return Err(InnerError::Duplicate);
        }
        let v = t.value;
        let u32_of = |v: &[u8]| -> Result<u32, InnerError> {
            Ok(u32::from_be_bytes(
                v.try_into().map_err(|_| InnerError::BadField)?,
            ))
        };
        match t.kind {
            inner::SEQ | inner::GSEQ if v.len() == 8 => {
                let mut b = [0; 8];
                b.copy_from_slice(v);
                out.seq = u64::from_be_bytes(b);
                out.gseq = t.kind == inner::GSEQ;
            }
            inner::SEQ | inner::GSEQ => return Err(InnerError::BadField),
            inner::BODY => out.body = Some(v),
            inner::SENDER_ID => out.sender_id = Some(v),
            inner::CLIENT_ID => out.client_id = Some(v),
            inner::PEER_JOINED => out.peer_joined = Some(v),
            inner::PEER_LEFT => out.peer_left = Some(v),
            inner::REASON if v.len() == 1 => out.reason = Some(v[0]),
            inner::REASON => return Err(InnerError::BadField),
            inner::SERVER_CLOSING => out.server_closing = true,
            inner::CAPS => out.caps = Some(u32_of(v)?),
            inner::GROUP_KEY if v.len() == inner::GROUP_KEY_LEN => {
                out.group_key = Some((u32_of(&v[..4])?, &v[4..]));
            }
            inner::GROUP_KEY => return Err(InnerError::BadField),
            inner::GROUP_ADDR => out.group_addr = Some(inner::parse_group_addr(v)?),
            inner::GROUP_SIGNER if v.len() == inner::SIGNER_LEN => out.group_signer = Some(v),
            inner::GROUP_SIGNER => return Err(InnerError::BadField),
            inner::KEY_REQUEST => out.key_request = Some(u32_of(v)?),
            _ => out.probe = true,
        }
    }
    if seen.contains(&inner::SEQ) != seen.contains(&inner::GSEQ) {
        Ok(out)
    } else {
        Err(InnerError::BadField)
    }
}

// ---------------------------------------------------------------------------
// reassembly

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

// ---------------------------------------------------------------------------
// core

/// Simulated clients at most.
const CLIENTS: usize = 4;
/// The wall clock the cores start with (no Fernet timestamp is checked, so
/// any value works; a fixed one keeps a case reproducible byte for byte).
const UNIX_START: u64 = 1_700_000_000;
/// Stranger addresses.
const STRANGERS: u8 = 4;
/// Datagrams whose SESSION_KEY reaches RSA per input (~2 ms each).
const RSA_BUDGET: u32 = 4;
/// Ops decoded per input.
const MAX_OPS: usize = 96;
/// Recorded datagrams the replay op can pick from.
const HISTORY: usize = 48;
/// Marks bodies the harness sends through a ClientCore.
const BODY_MAGIC: [u8; 2] = [0xB0, 0xD1];
/// Timer-wheel resolution of the relay, plus slack.
const TIMER_SLACK: Duration = Duration::from_millis(150);

/// One key per process: generation costs 60–130 ms.
fn server_key() -> &'static ServerKey {
    static KEY: OnceLock<ServerKey> = OnceLock::new();
    KEY.get_or_init(|| ServerKey::generate().expect("RSA key generation"))
}

fn server_public() -> &'static PublicKey {
    static PUBLIC: OnceLock<PublicKey> = OnceLock::new();
    PUBLIC.get_or_init(|| {
        PublicKey::from_public_key_der(server_key().public_der()).expect("own DER parses")
    })
}

/// The relay's `max_datagram` choices: `mcrelay serve` accepts 548..=65507
/// (PROTOCOL.md: 548 keeps SERVER_KEY + COOKIE + VERSIONS, 324 bytes, in one datagram).
const RELAY_MAX_DATAGRAMS: [usize; 8] = [548, 576, 600, 900, 1200, 1500, 9000, 65507];
/// The clients' choices: smaller ones make them send many small fragments.
const CLIENT_MAX_DATAGRAMS: [usize; 8] = [64, 100, 200, 548, 1200, 1500, 9000, 65507];

/// Relay configuration chosen by the first bytes of the input.
fn fuzz_config(input: &mut ByteReader<'_>) -> Config {
    let a = input.u8().unwrap_or(4);
    let b = input.u8().unwrap_or(0);
    let mut c = Config {
        max_datagram: RELAY_MAX_DATAGRAMS[usize::from(a & 7)],
        max_clients: usize::from((a >> 3) & 3) + 1,
        client_timeout: [
            Duration::from_secs(60),
            Duration::from_secs(5),
            Duration::from_secs(1),
            Duration::from_millis(120),
        ][usize::from(a >> 5 & 3)],
        ..Config::default()
    };
    if a & 0x80 != 0 {
        c.access_token = Some(b"letmein".to_vec());
    }
    if b & 1 != 0 {
        c.reassembly = ReassemblyLimits {
            max_partials_per_owner: 2,
            max_bytes_per_owner: 3_000,
            max_total_bytes: 5_000,
            max_message_bytes: 2_500,
            max_age: Duration::from_millis(700),
        };
    }
    if b & 2 != 0 {
        c.handshake_rate = 1;
        c.handshake_burst = 1;
    }
    if b & 4 != 0 {
        c.rsa_rate = 1;
    }
    if b & 8 != 0 {
        c.reject_rate = 1;
        c.reject_global_rate = 2;
    }
    c
}

/// Where a datagram handed to the relay came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Produced by the ClientCore of this client.
    Core(usize),
    /// Anything else (raw, replayed, harness-crafted).
    Other,
}

struct SimClient {
    addr: SocketAddr,
    id: String,
    core: ClientCore,
    /// The relay's session for this address is the one this ClientCore holds
    /// and both SEQ spaces are untouched by anyone else: what it sends is relayed.
    tx_ok: bool,
    /// Same for receiving: what the relay fans out reaches this ClientCore.
    rx_ok: bool,
    /// The last cookie the relay issued to this address.
    cookie: Option<[u8; COOKIE_LEN]>,
    /// A Fernet key the harness registered for this address itself (op 11),
    /// used to craft tokens with arbitrary plaintexts (op 12).
    crafted_key: Option<FernetKey>,
    /// Deliveries of each (sender, body) to this client.
    received: HashMap<(String, Vec<u8>), u32>,
    /// Reassembles what the relay sends this address, to see its cookies.
    sniffer: Reassembler,
}

impl SimClient {
    /// Remembers the cookie in a SERVER_KEY answer, whole or fragmented.
    fn sniff_cookie(&mut self, now: Instant, d: &[u8]) {
        let mut found = cookie_of(d);
        for t in Reader::new(d).flatten() {
            if t.kind != outer::FRAGMENT {
                continue;
            }
            if let Some(f) = fragment::parse_fragment(t.value) {
                if let Outcome::Complete(p) = self.sniffer.insert(now, 0, &f) {
                    found = found.or(cookie_of(&p));
                }
            }
        }
        if found.is_some() {
            self.cookie = found;
        }
    }
}

/// A datagram seen on the simulated wire.
#[derive(Clone)]
struct Recorded {
    /// Source (to the relay) or destination (from the relay).
    addr: SocketAddr,
    from_relay: bool,
    data: Vec<u8>,
}

struct Sim {
    relay: Relay,
    config: Config,
    client_max_datagram: usize,
    now: Instant,
    clients: Vec<SimClient>,
    /// Ids the relay registered, from its events.
    registered: HashSet<String>,
    /// Recorded datagrams: (client address, sent by the relay?, bytes).
    history: VecDeque<Recorded>,
    out: Transmits,
    rsa_left: u32,
    /// Bodies sent through a ClientCore (sender id, body).
    legit: HashSet<(String, Vec<u8>)>,
    /// Bodies in harness-crafted tokens; may legitimately arrive more than once.
    crafted: HashSet<(String, Vec<u8>)>,
    next_body: u32,
    report: CoreReport,
    /// The harness's own randomness (crafted keys and IVs), fixed-seeded.
    rng: StdRng,
    /// Ids a shutdown just dropped, for checking its datagrams' addressees.
    unregistered_by_shutdown: HashSet<String>,
    /// Print every op and datagram (`MCRELAY_FUZZ_TRACE=1`, for reproducing).
    trace: bool,
}

fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1 + i as u8], 4000 + i as u16))
}

fn stranger_addr(s: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1 + s], 5000 + u16::from(s)))
}

fn has_type(d: &[u8], kind: u16) -> bool {
    Reader::new(d).flatten().any(|t| t.kind == kind)
}

fn cookie_of(d: &[u8]) -> Option<[u8; COOKIE_LEN]> {
    Reader::new(d)
        .flatten()
        .find(|t| t.kind == outer::COOKIE)
        .and_then(|t| t.value.try_into().ok())
}

/// Structure-aware fuzzing of the whole relay core.
///
/// The input is a program run against one [`Relay`] with a fake clock and
/// [`CLIENTS`] simulated clients, each driven by a real [`ClientCore`] so
/// registered-client states are reachable without breaking RSA. The first
/// bytes choose the [`Config`] (max datagram 548..=65507 like the CLI allows,
/// the clients' max datagram 64..=65507, max clients 1–4,
/// timeouts, access token, small reassembly and rate limits). Then each op
/// is one byte (low nibble = op, bits 4–5 = client) plus arguments:
///
/// | op | action |
/// |----|--------|
/// | 0 | full handshake of client i through its ClientCore |
/// | 1, 14 | client i sends a body of a chosen length (fragmented when over its max datagram) |
/// | 2 / 3 | client i sends KEEPALIVE / BYE |
/// | 4, 15 | raw bytes from client i's address |
/// | 5 | raw bytes from a stranger address |
/// | 6 | replay a recorded datagram (either direction) from a chosen source, or its first value in another outer type, possibly fragmented |
/// | 7 | client i sends a body whose fragments are reordered, duplicated or lost |
/// | 8 | advance the clock and run the due timers |
/// | 9 | kick client i, or a garbage id |
/// | 10 | shutdown |
/// | 11 | harness-built COOKIE + SESSION_KEY for client i (valid key, bad token, raw plaintext or raw ciphertext) |
/// | 12 | token with an arbitrary plaintext under the key of op 11, whole or fragmented |
/// | 13 | hand-built FRAGMENT from client i |
///
/// At most [`RSA_BUDGET`] datagrams per input reach RSA decryption.
///
/// Checked after every datagram and op: reassembly bytes within the limit,
/// client count within `max_clients` and equal to what the relay's events
/// say, every datagram sent at most `max_datagram` bytes and well framed, a
/// REJECT is always exactly 5 bytes, an unregistered source never gets more
/// than 3× the bytes it sent and strangers' datagrams never cause traffic to
/// anyone else, relayed bodies are authentic (sent by that sender), never
/// echoed and never delivered twice, bodies from an in-sync sender reach every
/// in-sync peer exactly once when they fit the reassembly limits, idle
/// clients and stale fragments are gone after their timeouts, and
/// `handle_timeout` leaves no timer due.
pub fn core(data: &[u8]) {
    core_report(data);
}

/// What one [`core`] run reached, so tests can check that the harness
/// really gets past the handshake (a harness that never registers a client
/// would fuzz almost nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreReport {
    /// Ops executed.
    pub ops: usize,
    /// Handshakes the relay completed.
    pub handshakes: u64,
    /// WELCOMEs the ClientCores accepted.
    pub welcomes: u64,
    /// Relayed bodies the ClientCores accepted.
    pub messages: u64,
    /// Messages the relay reassembled from fragments.
    pub reassembled: u64,
    /// Clients that left (bye, timeout, kick).
    pub left: u64,
}

/// [`core`], returning what the run reached.
pub fn core_report(data: &[u8]) -> CoreReport {
    let mut input = ByteReader::new(data);
    let config = fuzz_config(&mut input);
    let key = server_key().clone();
    let now = Instant::now();
    let client_max_datagram = CLIENT_MAX_DATAGRAMS[usize::from(input.u8().unwrap_or(4) & 7)];
    let clients = (0..CLIENTS)
        .map(|i| {
            let token = match (&config.access_token, i) {
                (Some(_), 3) => Some(b"wrong".to_vec()),
                (Some(t), _) => Some(t.clone()),
                (None, _) => None,
            };
            SimClient {
                addr: client_addr(i),
                id: client_addr(i).to_string(),
                core: ClientCore::new(
                    ClientOptions {
                        access_token: token,
                        pin: None,
                        max_datagram: client_max_datagram,
                        // The simulator routes unicast only.
                        group: false,
                    },
                    now,
                    UNIX_START,
                    [i as u8 + 1; 32],
                ),
                tx_ok: false,
                rx_ok: false,
                cookie: None,
                crafted_key: None,
                received: HashMap::new(),
                sniffer: Reassembler::new(ReassemblyLimits::default()),
            }
        })
        .collect();
    let mut sim = Sim {
        relay: Relay::new(config.clone(), key, now, UNIX_START, [0x5e; 32]),
        config,
        client_max_datagram,
        now,
        clients,
        registered: HashSet::new(),
        history: VecDeque::new(),
        out: Transmits::new(),
        rsa_left: RSA_BUDGET,
        legit: HashSet::new(),
        crafted: HashSet::new(),
        next_body: 0,
        report: CoreReport::default(),
        rng: StdRng::from_seed([0x3a; 32]),
        unregistered_by_shutdown: HashSet::new(),
        trace: std::env::var_os("MCRELAY_FUZZ_TRACE").is_some(),
    };
    for _ in 0..MAX_OPS {
        if input.is_empty() || sim.step(&mut input).is_none() {
            break;
        }
        sim.report.ops += 1;
        sim.check_state();
    }
    sim.check_state();
    let stats = sim.relay.stats();
    sim.report.handshakes = stats.handshakes_completed;
    sim.report.reassembled = stats.reassembled;
    sim.report.left = stats.clients_left + stats.clients_timed_out + stats.clients_kicked;
    sim.report
}

impl Sim {
    /// Decodes and runs one op; None when the input ran out.
    fn step(&mut self, input: &mut ByteReader<'_>) -> Option<()> {
        let b = input.u8()?;
        let i = usize::from(b >> 4) & 3;
        if self.trace {
            eprintln!(
                "op {:2} client {i} flag {} | registered {:?}",
                b & 15,
                b >> 6,
                self.registered
            );
        }
        let addr = self.clients[i].addr;
        match b & 15 {
            0 => self.handshake(i),
            1 | 14 => {
                let len = usize::from(input.u16()? % 4096);
                self.send_body(i, len, None);
            }
            2 | 3 => {
                let mut d = Vec::new();
                if b & 15 == 2 {
                    self.clients[i].core.keepalive(&mut d);
                } else {
                    self.clients[i].core.bye(&mut d);
                    self.clients[i].tx_ok = false;
                    self.clients[i].rx_ok = false;
                }
                for d in d {
                    self.deliver_to_relay(addr, d, Origin::Core(i));
                }
            }
            4 => {
                let d = input.blob(2)?.to_vec();
                self.deliver_to_relay(addr, d, Origin::Other);
            }
            15 => {
                // Many tiny TLVs of one type in one datagram, from a member's
                // address or a stranger's: the shapes that once cost a rescan
                // per TLV or earned one answer per TLV.
                let kind = [
                    outer::HELLO,
                    outer::SESSION_KEY,
                    outer::COOKIE,
                    outer::DATA,
                    outer::KEEPALIVE,
                    outer::BYE,
                    outer::FRAGMENT,
                    outer::REJECT,
                    outer::WELCOME,
                    0x7777,
                ][usize::from(input.u8()?) % 10];
                let value = input.blob(1)?;
                let per = tlv::HEADER_LEN + value.len();
                let count = usize::from(input.u16()?).min(65_507 / per);
                let mut d = Vec::with_capacity(count * per);
                for _ in 0..count {
                    tlv::put(&mut d, kind, value);
                }
                let src = if b & 0x40 != 0 {
                    stranger_addr(b >> 7)
                } else {
                    addr
                };
                self.deliver_to_relay(src, d, Origin::Other);
            }
            5 => {
                let s = input.u8()?;
                let d = input.blob(2)?.to_vec();
                self.deliver_to_relay(stranger_addr(s % STRANGERS), d, Origin::Other);
            }
            6 => {
                let k = usize::from(input.u8()?);
                let s = input.u8()?;
                let rewrap = if b & 0x40 != 0 {
                    Some(input.u8()?)
                } else {
                    None
                };
                self.replay(k, s, rewrap);
            }
            7 => {
                let len = usize::from(input.u16()? % 4096);
                let pattern = input.blob(1)?;
                self.send_body(i, len, Some(pattern));
            }
            8 => {
                let v = input.u16()?;
                let ms = if b & 0x40 != 0 {
                    u64::from(v) * 100 // up to ~1.8 h: cookie epochs, long idle
                } else {
                    u64::from(v % 4096)
                };
                self.advance(Duration::from_millis(ms));
            }
            9 => {
                let id = if b & 0x40 != 0 {
                    String::from_utf8_lossy(input.blob(1)?).into_owned()
                } else {
                    self.clients[i].id.clone()
                };
                let expected = id
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| self.registered.contains(&a.to_string()));
                self.out.clear();
                let kicked = id
                    .parse()
                    .is_ok_and(|id| self.relay.kick(&id, &mut self.out));
                assert_eq!(kicked, expected, "kick({id:?}) result");
                self.after_relay(None, 0, false);
            }
            10 => {
                self.out.clear();
                self.relay.shutdown(&mut self.out);
                assert_eq!(self.relay.client_count(), 0, "clients left after shutdown");
                assert!(
                    self.registered_transmits_only(),
                    "shutdown sent to strangers"
                );
                // Their farewells were addressed while they were registered.
                self.unregistered_by_shutdown = std::mem::take(&mut self.registered);
                for c in &mut self.clients {
                    c.tx_ok = false;
                    c.rx_ok = false;
                }
                self.after_relay(None, 0, false);
            }
            11 => {
                let mode = input.u8()?;
                let blob = input.blob(1)?;
                self.harness_session_key(i, mode, blob);
            }
            12 => {
                let kind = input.u8()?;
                let seq_mode = input.u8()?;
                let seq = match seq_mode & 3 {
                    0 => u64::from(seq_mode >> 2),
                    1 => input.u64()?,
                    _ => u64::from(input.u16()?),
                };
                let tail = input.blob(2)?;
                self.crafted_token(i, kind, seq_mode, seq, tail);
            }
            _ => {
                let msg_id = u32::from(input.u8()?);
                let index = u16::from(input.u8()?);
                let count = u16::from(input.u8()?);
                let chunk = input.blob(4)?;
                let mut v = Vec::new();
                v.extend_from_slice(&msg_id.to_be_bytes());
                v.extend_from_slice(&index.to_be_bytes());
                v.extend_from_slice(&count.to_be_bytes());
                v.extend_from_slice(chunk);
                let mut d = Vec::new();
                tlv::put(&mut d, outer::FRAGMENT, &v);
                self.deliver_to_relay(addr, d, Origin::Other);
            }
        }
        Some(())
    }

    /// Op 6: sends recorded datagram `k` again from its own address, another
    /// client's or a stranger's (`s`); with `rewrap`, its first TLV's value
    /// goes in another outer type, possibly fragmented. What the relay sent
    /// must never be accepted back (tokens are sealed under the receiver's
    /// own key, so only the direction tells them apart).
    fn replay(&mut self, k: usize, s: u8, rewrap: Option<u8>) {
        if self.history.is_empty() {
            return;
        }
        let rec = self.history[k % self.history.len()].clone();
        let src = match s % 8 {
            0..=3 => rec.addr,
            4..=5 => self.clients[usize::from(s >> 3) % CLIENTS].addr,
            _ => stranger_addr((s >> 3) % STRANGERS),
        };
        let mut datagrams = vec![rec.data];
        if let Some(w) = rewrap {
            let Some(value) = Reader::new(&datagrams[0]).flatten().next().map(|t| t.value) else {
                return;
            };
            let kind = [
                outer::DATA,
                outer::KEEPALIVE,
                outer::BYE,
                outer::WELCOME,
                outer::HELLO,
                outer::SESSION_KEY,
                outer::FRAGMENT,
                0x00ff,
            ][usize::from(w & 7)];
            let mut d = Vec::new();
            tlv::put(&mut d, kind, value);
            if w & 8 != 0 && d.len() > FRAGMENT_OVERHEAD + 1 {
                let room = (usize::from(w >> 4) * 16).max(FRAGMENT_OVERHEAD + 1);
                let mut frags = Vec::new();
                fragment::split(&d, room, u32::from(w), |f| frags.push(f.to_vec()));
                datagrams = frags;
            } else {
                datagrams = vec![d];
            }
        }
        for d in datagrams {
            if has_type(&d, outer::SESSION_KEY) {
                if self.rsa_left == 0 {
                    return;
                }
                self.rsa_left -= 1;
            }
            let st = self.relay.stats();
            let before = (
                st.messages_relayed,
                st.clients_left,
                st.handshakes_completed,
            );
            self.deliver_to_relay(src, d, Origin::Other);
            let st = self.relay.stats();
            let after = (
                st.messages_relayed,
                st.clients_left,
                st.handshakes_completed,
            );
            if rec.from_relay {
                assert_eq!(
                    before, after,
                    "the relay accepted its own datagram sent back (relayed, left, joined)"
                );
            }
        }
    }

    /// HELLO from client i's ClientCore; the relay's answers are delivered
    /// to the ClientCores, whose SESSION_KEY goes back to the relay.
    fn handshake(&mut self, i: usize) {
        let c = &mut self.clients[i];
        c.tx_ok = false;
        c.rx_ok = false;
        let hello = c.core.hello();
        let addr = c.addr;
        self.deliver_to_relay(addr, hello, Origin::Core(i));
    }

    /// Client i sends a fresh, unique body of `len` filler bytes. With a
    /// `pattern`, its datagrams are sent in the order/multiplicity the pattern
    /// picks; without, all are sent in order and delivery is checked.
    fn send_body(&mut self, i: usize, len: usize, pattern: Option<&[u8]>) {
        let mut body = BODY_MAGIC.to_vec();
        body.extend_from_slice(&self.next_body.to_be_bytes());
        self.next_body += 1;
        body.extend((0..len).map(|k| (k as u8).wrapping_mul(7) ^ (self.next_body as u8)));
        let mut datagrams = Vec::new();
        if !self.clients[i].core.send(&body, &mut datagrams) {
            return;
        }
        let sender = self.clients[i].id.clone();
        self.legit.insert((sender.clone(), body.clone()));
        let addr = self.clients[i].addr;
        let order: Vec<usize> = match pattern {
            Some(p) if !datagrams.is_empty() => p
                .iter()
                .map(|&k| usize::from(k) % datagrams.len())
                .collect(),
            Some(_) => Vec::new(),
            None => (0..datagrams.len()).collect(),
        };
        let expect = pattern.is_none() && self.clients[i].tx_ok && self.fits(i, &datagrams);
        let receivers: Vec<usize> = (0..CLIENTS)
            .filter(|&j| j != i && self.clients[j].rx_ok)
            .collect();
        for k in order {
            self.deliver_to_relay(addr, datagrams[k].clone(), Origin::Core(i));
        }
        if expect {
            for j in receivers {
                let c = &self.clients[j];
                if !c.rx_ok {
                    continue; // it was removed meanwhile
                }
                let n = c.received.get(&(sender.clone(), body.clone())).copied();
                assert_eq!(
                    n,
                    Some(1),
                    "body of {len} bytes from in-sync {sender} not delivered once to in-sync {}",
                    c.id
                );
            }
        }
    }

    /// Whether the relay must accept these datagrams from client i: a single
    /// unfragmented one, or fragments that fit the reassembly limits.
    fn fits(&self, i: usize, datagrams: &[Vec<u8>]) -> bool {
        let Some(first) = datagrams.first() else {
            return false;
        };
        if datagrams.len() == 1 && !has_type(first, outer::FRAGMENT) {
            return true;
        }
        let limits = &self.config.reassembly;
        let chunks: usize = datagrams.iter().map(|d| d.len() - FRAGMENT_OVERHEAD).sum();
        let cost = chunks + datagrams.len() * CHUNK_OVERHEAD;
        let id = &self.clients[i].id;
        let partials = self
            .relay
            .clients(self.now)
            .into_iter()
            .find(|c| c.id.to_string() == *id)
            .map_or(usize::MAX, |c| c.partials);
        partials == 0
            && limits.max_partials_per_owner > 0
            && chunks <= limits.max_message_bytes
            && cost <= limits.max_bytes_per_owner
            && self.relay.reassembly_bytes() + cost <= limits.max_total_bytes
    }

    /// Op 11: COOKIE + SESSION_KEY built by the harness for client i's
    /// address (fetching a cookie with a HELLO first if needed).
    fn harness_session_key(&mut self, i: usize, mode: u8, blob: &[u8]) {
        if self.rsa_left == 0 {
            return;
        }
        let addr = self.clients[i].addr;
        if self.clients[i].cookie.is_none() || mode & 0x80 != 0 {
            // A HELLO of our own; the answer also reaches the ClientCore,
            // which ignores it unless it awaits a key.
            let mut hello = Vec::new();
            let mut v = vec![0u8; wire::MIN_HELLO_LEN - tlv::HEADER_LEN];
            v[0] = wire::VERSION;
            tlv::put(&mut hello, outer::HELLO, &v);
            self.deliver_to_relay(addr, hello, Origin::Other);
        }
        let Some(cookie) = self.clients[i].cookie else {
            return;
        };
        let key_bytes: [u8; 32] = self.rng.random();
        let fernet_key = fernet::encode_key(&key_bytes);
        let ciphertext = match mode & 3 {
            3 => {
                // Raw ciphertext, usually of the modulus size so RSA runs.
                let mut ct = blob.to_vec();
                if mode & 4 == 0 {
                    ct.resize(256, 0);
                }
                ct
            }
            m => {
                let mut plain = Vec::new();
                match m {
                    0 => {
                        plain.extend_from_slice(fernet_key.as_bytes());
                        if let Some(t) = &self.config.access_token {
                            plain.extend_from_slice(t);
                        }
                    }
                    1 => {
                        plain.extend_from_slice(fernet_key.as_bytes());
                        plain.extend_from_slice(blob);
                    }
                    _ => plain.extend_from_slice(blob),
                }
                plain.truncate(190); // OAEP-SHA256 limit for RSA-2048
                match server_public().oaep_encrypt_with_rng::<Sha256, _>(&mut self.rng, &plain) {
                    Ok(ct) => ct,
                    Err(_) => return,
                }
            }
        };
        let mut d = Vec::new();
        tlv::put(&mut d, outer::COOKIE, &cookie);
        tlv::put(&mut d, outer::SESSION_KEY, &ciphertext);
        self.rsa_left -= 1;
        let joined_before = self.relay.stats().handshakes_completed;
        self.deliver_to_relay(addr, d, Origin::Other);
        if self.relay.stats().handshakes_completed > joined_before && mode & 3 != 3 {
            self.clients[i].crafted_key = Some(FernetKey::from_bytes(&key_bytes));
        }
    }

    /// Op 12: an outer TLV of a chosen type whose value is a Fernet token,
    /// under the key registered by op 11, over an arbitrary plaintext.
    fn crafted_token(&mut self, i: usize, kind: u8, seq_mode: u8, seq: u64, tail: &[u8]) {
        let Some(f) = &self.clients[i].crafted_key else {
            return;
        };
        let mut plain = Vec::new();
        if seq_mode & 4 == 0 {
            wire::put_seq(&mut plain, seq);
        }
        if seq_mode & 8 != 0 {
            tlv::put(&mut plain, inner::BODY, tail);
        } else {
            plain.extend_from_slice(tail);
        }
        let token = f.seal_text(UNIX_START, self.rng.random(), &plain);
        let fragmented = kind & 8 != 0;
        let kind = match kind % 8 {
            0..=3 => outer::DATA,
            4 => outer::KEEPALIVE,
            5 => outer::BYE,
            6 => outer::WELCOME,
            _ => u16::from(kind),
        };
        let c = &mut self.clients[i];
        c.tx_ok = false; // the relay's SEQ window for this address moved
        let sender = c.id.clone();
        let addr = c.addr;
        if let Ok(m) = Inner::parse(&plain) {
            if let Some(body) = m.body {
                self.crafted.insert((sender, body.to_vec()));
            }
        }
        let mut d = Vec::new();
        tlv::put(&mut d, kind, token.as_bytes());
        if fragmented && d.len() > self.client_max_datagram {
            let mut frags = Vec::new();
            fragment::split(&d, self.client_max_datagram, u32::from(kind), |f| {
                frags.push(f.to_vec())
            });
            for f in frags {
                self.deliver_to_relay(addr, f, Origin::Other);
            }
        } else {
            self.deliver_to_relay(addr, d, Origin::Other);
        }
    }

    /// Runs the relay's timers after moving the clock.
    fn advance(&mut self, by: Duration) {
        let quiet_since = self.now;
        self.now += by;
        let now = self.now;
        let mut rounds = 0;
        loop {
            self.out.clear();
            self.relay.handle_timeout(now, &mut self.out);
            assert!(self.registered_transmits_only(), "timer sent to strangers");
            self.after_relay(None, 0, false);
            match self.relay.poll_timeout() {
                Some(t) if t <= now => {
                    rounds += 1;
                    assert!(
                        rounds < 4,
                        "handle_timeout keeps a timer due ({rounds} rounds)"
                    );
                }
                Some(_) => break,
                None => panic!("poll_timeout is None (cookie rotation is always pending)"),
            }
        }
        // Nothing arrived since `quiet_since`: idle clients and stale partial
        // messages must be gone once their deadlines passed.
        if now.saturating_duration_since(quiet_since) >= self.config.client_timeout + TIMER_SLACK {
            assert_eq!(self.relay.client_count(), 0, "idle clients not timed out");
        }
        if now.saturating_duration_since(quiet_since)
            >= self.config.reassembly.max_age + TIMER_SLACK
        {
            assert_eq!(self.relay.reassembly_bytes(), 0, "stale fragments kept");
        }
    }

    fn is_registered(&self, a: SocketAddr) -> bool {
        self.registered.contains(&a.to_string())
    }

    fn registered_transmits_only(&self) -> bool {
        self.out.iter().all(|(dst, _)| self.is_registered(dst))
    }

    /// Hands one datagram to the relay, checks its answers, then delivers
    /// them; ClientCore replies (SESSION_KEY) go back to the relay.
    fn deliver_to_relay(&mut self, src: SocketAddr, d: Vec<u8>, origin: Origin) {
        let mut queue = VecDeque::from([(src, d, origin)]);
        while let Some((src, d, origin)) = queue.pop_front() {
            if let Origin::Core(_) = origin {
                if has_type(&d, outer::SESSION_KEY) {
                    if self.rsa_left == 0 {
                        continue; // over this input's RSA budget: "lost"
                    }
                    self.rsa_left -= 1;
                }
                if let Some(c) = cookie_of(&d) {
                    if let Some(i) = self.clients.iter().position(|c| c.addr == src) {
                        self.clients[i].cookie = Some(c);
                    }
                }
            }
            self.record(src, false, &d);
            let unvalidated = !self.is_registered(src);
            if self.trace {
                let types: Vec<u16> = Reader::new(&d).flatten().map(|t| t.kind).collect();
                eprintln!("  {src} -> relay: {} bytes, types {types:x?}", d.len());
            }
            self.out.clear();
            self.relay.handle_datagram(self.now, src, &d, &mut self.out);
            let replies = self.after_relay(Some(src), d.len(), unvalidated);
            queue.extend(replies);
        }
    }

    fn record(&mut self, addr: SocketAddr, from_relay: bool, d: &[u8]) {
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Recorded {
            addr,
            from_relay,
            data: d.to_vec(),
        });
    }

    /// Checks what the relay just queued in `self.out` and did (events), then
    /// delivers the datagrams to the ClientCores. Returns their replies.
    /// `src`/`len`/`unvalidated` describe the datagram that caused this.
    fn after_relay(
        &mut self,
        src: Option<SocketAddr>,
        len: usize,
        unvalidated: bool,
    ) -> Vec<(SocketAddr, Vec<u8>, Origin)> {
        let mut registered_before = self.registered.clone();
        registered_before.extend(std::mem::take(&mut self.unregistered_by_shutdown));
        // Events first: they say who is registered now.
        let events: Vec<Event> = self.relay.drain_events().collect();
        for e in events {
            if self.trace {
                eprintln!("  relay event {e:?}");
            }
            match e {
                Event::Joined { id, rekeyed } => {
                    let id = id.to_string();
                    let i = self.clients.iter().position(|c| c.id == id);
                    assert!(i.is_some(), "a non-client address {id} registered");
                    assert_eq!(
                        rekeyed,
                        self.registered.contains(&id),
                        "Joined {{ rekeyed }} wrong for {id}"
                    );
                    self.registered.insert(id);
                    if let Some(i) = i {
                        // In sync again only if its ClientCore gets the WELCOME.
                        self.clients[i].tx_ok = false;
                        self.clients[i].rx_ok = false;
                    }
                }
                Event::Left { id, reason } => {
                    let id = id.to_string();
                    assert!(
                        self.registered.remove(&id),
                        "{id} left ({reason:?}) unregistered"
                    );
                    if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
                        c.tx_ok = false;
                        c.rx_ok = false;
                    }
                }
                // The fuzzed relays are not federated.
                Event::Relayed { .. } => panic!("Relayed without federation"),
            }
        }
        assert_eq!(
            self.relay.client_count(),
            self.registered.len(),
            "client count differs from Joined/Left events"
        );

        let sent: Vec<(SocketAddr, Vec<u8>)> =
            self.out.iter().map(|(a, d)| (a, d.to_vec())).collect();
        let mut to_src = 0usize;
        for (dst, d) in &sent {
            assert!(
                d.len() <= self.config.max_datagram,
                "{}-byte datagram over max_datagram {} (types {:?})",
                d.len(),
                self.config.max_datagram,
                Reader::new(d).flatten().map(|t| t.kind).collect::<Vec<_>>()
            );
            assert!(tlv::validate(d).is_ok(), "relay sent a malformed datagram");
            if has_type(d, outer::REJECT) {
                assert_eq!(d.len(), 5, "REJECT datagram of {} bytes", d.len());
                assert!(
                    wire::RejectReason::from_u8(d[4]).is_some(),
                    "REJECT reason {}",
                    d[4]
                );
            }
            if Some(*dst) == src {
                to_src += d.len();
            } else {
                let known =
                    registered_before.contains(&dst.to_string()) || self.is_registered(*dst);
                assert!(known, "datagram to unregistered {dst} (not the source)");
            }
        }
        if let Some(src) = src {
            // One datagram, one answer: at most one SERVER_KEY and one REJECT.
            let to = |kind| {
                sent.iter()
                    .filter(|(dst, d)| *dst == src && has_type(d, kind))
                    .count()
            };
            assert!(
                to(outer::SERVER_KEY) <= 1,
                "several SERVER_KEYs for one datagram"
            );
            assert!(to(outer::REJECT) <= 1, "several REJECTs for one datagram");
            if unvalidated {
                assert!(
                    to_src <= len.saturating_mul(3),
                    "amplification: {to_src} bytes answered {len} from unvalidated {src}"
                );
            }
            if !self.clients.iter().any(|c| c.addr == src) {
                assert!(
                    sent.iter().all(|(dst, _)| *dst == src),
                    "a stranger's datagram caused traffic to others"
                );
            }
        }

        // Deliver to the ClientCores.
        let mut replies = Vec::new();
        for (dst, d) in sent {
            if self.trace {
                let types: Vec<u16> = Reader::new(&d).flatten().map(|t| t.kind).collect();
                eprintln!("  relay -> {dst}: {} bytes, types {types:x?}", d.len());
            }
            self.record(dst, true, &d);
            let Some(j) = self.clients.iter().position(|c| c.addr == dst) else {
                continue;
            };
            let mut out = Vec::new();
            let mut events = Vec::new();
            let c = &mut self.clients[j];
            c.sniff_cookie(self.now, &d);
            let _ = c.core.handle_datagram(self.now, &d, &mut out, &mut events);
            for e in events {
                self.client_event(j, e);
            }
            replies.extend(out.into_iter().map(|d| (dst, d, Origin::Core(j))));
        }
        replies
    }

    fn client_event(&mut self, j: usize, e: ClientEvent) {
        if self.trace {
            eprintln!("  {} event {e:?}", self.clients[j].id);
        }
        let c = &mut self.clients[j];
        match e {
            ClientEvent::Welcome { id } => {
                assert_eq!(id, c.id, "WELCOME with a foreign id");
                self.report.welcomes += 1;
                c.tx_ok = true;
                c.rx_ok = true;
            }
            ClientEvent::Message { sender, body } => {
                assert_ne!(sender, c.id, "message echoed to its sender");
                self.report.messages += 1;
                let key = (sender, body);
                let legit = self.legit.contains(&key);
                let crafted = self.crafted.contains(&key);
                assert!(
                    legit || crafted,
                    "{} got a body {} never sent ({} bytes)",
                    c.id,
                    key.0,
                    key.1.len()
                );
                let n = c.received.entry(key).or_insert(0);
                *n += 1;
                assert!(*n == 1 || crafted, "{} got one message {n} times", c.id);
            }
            ClientEvent::PeerJoined(id) => assert_ne!(id, c.id, "told about its own join"),
            ClientEvent::ServerClosing => {
                c.tx_ok = false;
                c.rx_ok = false;
            }
            ClientEvent::ServerKey { .. } | ClientEvent::PeerLeft { .. } => {}
            ClientEvent::Rejected(_) => {}
            // The simulated relay speaks v1: no group mode.
            ClientEvent::Downlink(_) | ClientEvent::DownlinkSilent(_) => {
                panic!("group mode from a v1 relay")
            }
        }
    }

    /// Invariants that hold between ops.
    fn check_state(&self) {
        let limits = &self.config.reassembly;
        assert!(
            self.relay.reassembly_bytes() <= limits.max_total_bytes,
            "reassembly holds {} > {}",
            self.relay.reassembly_bytes(),
            limits.max_total_bytes
        );
        assert!(self.relay.client_count() <= self.config.max_clients);
        assert_eq!(self.relay.client_count(), self.registered.len());
        for c in self.relay.clients(self.now) {
            assert!(c.partials <= limits.max_partials_per_owner);
            assert!(self.registered.contains(&c.id.to_string()));
        }
        assert!(self.relay.poll_timeout().is_some());
    }
}
