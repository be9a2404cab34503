//! The `core` fuzz target: a program of ops run against one relay core,
//! simulated clients and a fake clock. This module decodes the ops; `ops`
//! runs the composite ones, `v2` the protocol v2 ones (group members, the
//! downlink, forged GROUP_DATA, bound handshakes, clients-file reloads),
//! and `checks` routes the relay's output and checks the invariants after
//! every datagram and op.

mod checks;
mod ops;
mod v2;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use rsa::pkcs8::DecodePublicKey;
use rsa::PublicKey;

use crate::client::{ClientCore, ClientOptions};
use crate::reassembly::{Outcome, Reassembler, ReassemblyLimits};
use crate::relay::config::credentials::{token_digest, Credentials, Perms};
use crate::relay::config::Config;
use crate::relay::ClientId;
use crate::session::fernet::FernetKey;
use crate::wire::fragment;
use crate::wire::tlv::{self, Reader};
use crate::wire::{outer, COOKIE_LEN};

use super::ByteReader;
use crate::sim::net::{server_key, Net, RELAY_ADDR, UNIX_START};

/// Simulated clients at most.
const CLIENTS: usize = 4;
/// Stranger addresses.
const STRANGERS: u8 = 4;
/// Datagrams whose SESSION_KEY reaches RSA per input (~2 ms each): room
/// for three group members, a v1 client and some churn.
const RSA_BUDGET: u32 = 6;
/// Ops decoded per input.
const MAX_OPS: usize = 96;
/// Recorded datagrams the replay op can pick from.
const HISTORY: usize = 48;
/// Marks bodies the harness sends through a ClientCore.
const BODY_MAGIC: [u8; 2] = [0xB0, 0xD1];
/// Timer-wheel resolution of the relay, plus slack.
const TIMER_SLACK: Duration = Duration::from_millis(150);

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
    c.group_mode = b & 0x10 != 0;
    if b & 0x20 != 0 {
        c.credentials = Some(Arc::new(clients_table(&[])));
    }
    c
}

/// The named clients of a clients table: client i presents `NAMES[i]`'s
/// token, so each permission is represented.
const NAMES: [(&str, Perms); CLIENTS] = [
    ("alice", Perms::PUBSUB),
    ("bob", Perms::PUB),
    ("carol", Perms::SUB),
    ("dave", Perms::PUBSUB),
];

/// The token named client i presents.
fn name_token(i: usize) -> Vec<u8> {
    format!("{}-token", NAMES[i % CLIENTS].0).into_bytes()
}

/// A clients table of [`NAMES`], with `changes` applied to client i's line:
/// `Some(perms)` replaces its permissions, `None` removes it.
fn clients_table(changes: &[(usize, Option<Perms>)]) -> Credentials {
    let mut text = String::new();
    for (i, (name, perms)) in NAMES.iter().enumerate() {
        let perms = match changes.iter().find(|(k, _)| *k == i) {
            Some((_, Some(p))) => *p,
            Some((_, None)) => continue,
            None => *perms,
        };
        let hex: String = token_digest(&name_token(i))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        text.push_str(&format!("{name} {hex} {perms}\n"));
    }
    Credentials::parse(&text).expect("the harness's clients table parses")
}

/// How a simulated client speaks (chosen per client by the input).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// v2 without group mode (`group: false`).
    Pairwise,
    /// v1: the network strips VERSIONS from what the relay sends it, so
    /// its ClientCore answers with a v1 SESSION_KEY.
    V1,
    /// v2 asking for group mode: fed the downlink.
    Group,
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
    /// The id the relay gave this address last (its ClientCore's until
    /// another session registers there).
    id: String,
    kind: Kind,
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
    /// The key of a harness handshake under way: what the relay sends
    /// this address is also tried under it.
    crafted_pending: Option<FernetKey>,
    /// The highest SEQ the harness sealed under `crafted_key`.
    crafted_seq: u64,
    /// The newest group key (epoch, key text) the relay sent the harness's
    /// own session at this address: what a member could forge with.
    crafted_group: Option<(u32, String)>,
    /// Relay datagrams to this address still to be lost on the way.
    drop_next: u8,
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
    /// The relay, the fake clock and the relay's output buffer, shared with
    /// the unit tests (the clients stay here, with the program's bookkeeping).
    net: Net,
    config: Config,
    client_max_datagram: usize,
    clients: Vec<SimClient>,
    /// Who the relay registered at each address, from its events.
    registered: HashMap<SocketAddr, ClientId>,
    /// Every id the relay ever registered (SENDER_IDs must be one).
    ids_ever: HashSet<String>,
    /// Recorded datagrams: (client address, sent by the relay?, bytes).
    history: VecDeque<Recorded>,
    rsa_left: u32,
    /// Bodies sent through a ClientCore, with the sender's index (unique:
    /// each carries a counter).
    legit: HashMap<Vec<u8>, usize>,
    /// Bodies in harness-crafted tokens, with the senders' indexes; may
    /// legitimately arrive more than once.
    crafted: HashMap<Vec<u8>, HashSet<usize>>,
    /// For a legit body the relay relayed at once: the addresses that were
    /// group members (and may subscribe) then. Only they may deliver it
    /// from the downlink.
    eligible: HashMap<Vec<u8>, HashSet<SocketAddr>>,
    next_body: u32,
    report: CoreReport,
    /// The harness's own randomness (crafted keys and IVs), fixed-seeded.
    rng: StdRng,
    /// Addresses a shutdown just dropped, for checking its datagrams' addressees.
    unregistered_by_shutdown: HashSet<SocketAddr>,
    /// Group datagrams are queued, not delivered, while set (v2 ops).
    downlink_hold: bool,
    /// Held group datagrams: (downlink, datagram), oldest first.
    downlink_queue: VecDeque<(SocketAddr, Vec<u8>)>,
    /// The latest whole GROUP_DATA TLVs the relay sent (reassembled), for
    /// replays and forgeries.
    group_history: VecDeque<Vec<u8>>,
    /// Reassembles fragmented GROUP_DATA to verify it.
    group_sniffer: Reassembler,
    /// The relay's group epoch after the last input: it only moves forward.
    epoch_seen: u64,
    /// The epoch of the last GROUP_DATA the relay sent.
    group_data_epoch: u32,
    /// When the relay last sent a probe, and answered each address's key request.
    last_probe: Option<Instant>,
    last_key_answer: HashMap<SocketAddr, Instant>,
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

/// Whether the relay may spend an RSA decryption on this datagram.
fn spends_rsa(d: &[u8]) -> bool {
    has_type(d, outer::SESSION_KEY) || has_type(d, outer::SESSION_KEY2)
}

fn cookie_of(d: &[u8]) -> Option<[u8; COOKIE_LEN]> {
    Reader::new(d)
        .flatten()
        .find(|t| t.kind == outer::COOKIE)
        .and_then(|t| t.value.try_into().ok())
}

/// Structure-aware fuzzing of the whole relay core, protocol v1 and v2.
///
/// The input is a program run against one [`Relay`] with a fake clock and
/// [`CLIENTS`] simulated clients, each driven by a real [`ClientCore`] so
/// registered-client states are reachable without breaking RSA. The first
/// bytes choose the [`Config`] (max datagram 548..=65507 like the CLI allows,
/// the clients' max datagram 64..=65507, max clients 1–4,
/// timeouts, access token, small reassembly and rate limits, group mode
/// granted or not, a clients table naming the clients `pubsub`, `pub`,
/// `sub`, `pubsub` or not) and, when the second byte's top bit is set, how
/// each client speaks (v2 pairwise, v1, v2 group member; 2 bits each;
/// otherwise all v2 pairwise). Group datagrams the relay sends to the
/// downlink reach the ClientCores that joined it, unless an op holds them
/// back to drop, duplicate, reorder or delay them. Then each op is one byte
/// (low nibble = op, bits 4–5 = client) plus arguments:
///
/// | op | action |
/// |----|--------|
/// | 0 | full handshake of client i through its ClientCore |
/// | 1 | client i sends a body of a chosen length (fragmented when over its max datagram) |
/// | 2 / 3 | client i sends KEEPALIVE / BYE |
/// | 4, 15 | raw bytes from client i's address (15: many TLVs of one type, v2 types included) |
/// | 5 | raw bytes from a stranger address |
/// | 6 | replay a recorded datagram (either direction) from a chosen source, or its first value in another outer type, possibly fragmented |
/// | 7 | client i sends a body whose fragments are reordered, duplicated or lost |
/// | 8 | advance the clock, run the due timers of the relay and the clients |
/// | 9 | kick client i, or a garbage id |
/// | 10 | shutdown |
/// | 11 | harness-built COOKIE + SESSION_KEY for client i (valid key, bad token, raw plaintext or raw ciphertext) |
/// | 12 | token with an arbitrary plaintext under the key of op 11, whole or fragmented |
/// | 13 | hand-built FRAGMENT from client i |
/// | 14 | a protocol v2 op, chosen by the next byte (see `v2`): downlink hold, release (reordered, duplicated, dropped, per member), lost unicast, forged or replayed GROUP_DATA, client timers, leave/re-join churn, harness SESSION_KEY2 (BIND mismatch, caps, credentials), harness KEY_REQUEST / PROBE, raw v2 TLVs, clients-table reload |
///
/// At most [`RSA_BUDGET`] datagrams per input reach RSA decryption.
///
/// Checked after every datagram and op: reassembly bytes within the limit,
/// client count within `max_clients` and equal to what the relay's events
/// say, every datagram sent at most `max_datagram` bytes and well framed, a
/// REJECT is always exactly 5 bytes, an unregistered source never gets more
/// than 3× the bytes it sent and strangers' datagrams never cause traffic to
/// anyone else, relayed bodies are authentic (sent by that sender, under an
/// id the relay gave it), never echoed and never delivered twice, bodies
/// from an in-sync sender reach every in-sync peer exactly once when they
/// fit the reassembly limits, idle clients and stale fragments are gone
/// after their timeouts, and `handle_timeout` leaves no timer due. Group
/// mode: every GROUP_DATA verifies under the relay's signer, its epochs and
/// the relay's never go back, it opens for every member that has caught up
/// with its epoch, a member delivers from the downlink only what was sent
/// while it was a member, nothing forged opens, `pub` clients get no group
/// key and no deliveries, and key requests and probes get at most one
/// answer within their rate limits.
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
    /// GROUP_DATA the relay sent.
    pub group_data: u64,
    /// Group datagrams the ClientCores opened (messages, notices, probes).
    pub group_opened: u64,
    /// Bodies the ClientCores delivered from the downlink.
    pub group_messages: u64,
    /// Rekeys (leaves) and ratchets (joins) the relay did.
    pub rekeys: u64,
    /// Join ratchets.
    pub ratchets: u64,
    /// KEY_REQUESTs the relay answered.
    pub key_answers: u64,
    /// PROBE GROUP_DATA the relay sent.
    pub probes: u64,
    /// Forged or replayed group datagrams the members refused.
    pub forgeries_refused: u64,
}

/// The config byte `b` (second byte of the input), 0 when absent.
fn config_b(data: &[u8]) -> u8 {
    data.get(1).copied().unwrap_or(0)
}

/// [`core`], returning what the run reached.
pub fn core_report(data: &[u8]) -> CoreReport {
    let mut input = ByteReader::new(data);
    let config = fuzz_config(&mut input);
    let net = Net::new(config.clone());
    let now = net.now;
    let client_max_datagram = CLIENT_MAX_DATAGRAMS[usize::from(input.u8().unwrap_or(4) & 7)];
    let kinds = if config_b(data) & 0x80 != 0 {
        input.u8().unwrap_or(0)
    } else {
        0
    };
    let clients = (0..CLIENTS)
        .map(|i| {
            let token = match (&config.credentials, &config.access_token, i) {
                // With a table, the last client may use the shared token.
                (Some(_), Some(t), 3) => Some(t.clone()),
                (Some(_), _, _) => Some(name_token(i)),
                (None, Some(_), 3) => Some(b"wrong".to_vec()),
                (None, Some(t), _) => Some(t.clone()),
                (None, None, _) => None,
            };
            let kind = match (kinds >> (2 * i)) & 3 {
                0 => Kind::Pairwise,
                1 => Kind::V1,
                _ => Kind::Group,
            };
            SimClient {
                addr: client_addr(i),
                id: client_addr(i).to_string(),
                kind,
                core: ClientCore::new(
                    ClientOptions {
                        access_token: token,
                        pin: None,
                        max_datagram: client_max_datagram,
                        group: kind == Kind::Group,
                    },
                    now,
                    UNIX_START,
                    [i as u8 + 1; 32],
                ),
                tx_ok: false,
                rx_ok: false,
                cookie: None,
                crafted_key: None,
                crafted_pending: None,
                crafted_seq: 0,
                crafted_group: None,
                drop_next: 0,
                received: HashMap::new(),
                sniffer: Reassembler::new(ReassemblyLimits::default()),
            }
        })
        .collect();
    let epoch_seen = net.relay.stats().group_epoch;
    let mut sim = Sim {
        net,
        config,
        client_max_datagram,
        clients,
        registered: HashMap::new(),
        ids_ever: HashSet::new(),
        history: VecDeque::new(),
        rsa_left: RSA_BUDGET,
        legit: HashMap::new(),
        crafted: HashMap::new(),
        eligible: HashMap::new(),
        next_body: 0,
        report: CoreReport::default(),
        rng: StdRng::from_seed([0x3a; 32]),
        unregistered_by_shutdown: HashSet::new(),
        downlink_hold: false,
        downlink_queue: VecDeque::new(),
        group_history: VecDeque::new(),
        group_sniffer: Reassembler::new(ReassemblyLimits::default()),
        epoch_seen,
        group_data_epoch: 0,
        last_probe: None,
        last_key_answer: HashMap::new(),
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
    let stats = sim.net.relay.stats();
    sim.report.handshakes = stats.handshakes_completed;
    sim.report.reassembled = stats.reassembled;
    sim.report.left = stats.clients_left + stats.clients_timed_out + stats.clients_kicked;
    sim.report.group_data = stats.group_data_sent;
    sim.report.rekeys = stats.rekeys;
    sim.report.ratchets = stats.ratchets;
    sim.report.key_answers = stats.key_requests_answered;
    sim.report.probes = stats.probes_answered;
    sim.report.group_opened = sim
        .clients
        .iter()
        .map(|c| c.core.downlink_stats().opened)
        .sum();
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
            1 => {
                let len = usize::from(input.u16()? % 4096);
                self.send_body(i, len, None);
            }
            14 => self.v2_op(i, b >> 6, input)?,
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
                    outer::SESSION_KEY2,
                    outer::GROUP_DATA,
                    outer::VERSIONS,
                ][usize::from(input.u8()?) % 13];
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
                let expected = id.parse::<ClientId>().is_ok_and(|cid| {
                    self.registered
                        .get(&cid.addr())
                        .is_some_and(|r| cid.name().is_none() || cid.name() == r.name())
                });
                self.net.tx.clear();
                let kicked = id
                    .parse()
                    .is_ok_and(|id| self.net.relay.kick(&id, &mut self.net.tx));
                assert_eq!(kicked, expected, "kick({id:?}) result");
                self.after_relay(None, 0, false);
            }
            10 => {
                self.net.tx.clear();
                self.net.relay.shutdown(&mut self.net.tx);
                assert_eq!(
                    self.net.relay.client_count(),
                    0,
                    "clients left after shutdown"
                );
                assert!(
                    self.registered_transmits_only(),
                    "shutdown sent to strangers"
                );
                // Their farewells were addressed while they were registered.
                self.unregistered_by_shutdown =
                    std::mem::take(&mut self.registered).into_keys().collect();
                for c in &mut self.clients {
                    c.tx_ok = false;
                    c.rx_ok = false;
                }
                self.after_relay(None, 0, false);
                self.after_shutdown();
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
}
