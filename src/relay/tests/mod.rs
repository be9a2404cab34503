//! Unit tests of the sans-IO relay core ([`Relay`]) against protocol v1, driven
//! by a fake clock.
//!
//! [`Net`] (the shared simulator of [`crate::sim::net`]) wires one relay to
//! simulated clients: [`ClientCore`]s, each at its own `127.0.0.1:4000x`
//! address, and hand-made [`Manual`] clients that build
//! the handshake and seal arbitrary plaintexts themselves, so tests can send
//! exactly the bytes they want. Datagrams are routed until the network is
//! quiet; relay output for an address that is no peer lands in `Net::stray`.
//!
//! Time never comes from the OS after the start: `now` is a base `Instant`
//! plus durations. [`Net::advance`] moves it and fires the relay's timers only
//! at the instants `Relay::poll_timeout` names (like quinn-proto's test
//! `Pair`), so a timer that `poll_timeout` forgot would make a test fail.
//!
//! One scenario per test, grouped by what they exercise: `handshake`,
//! `fairness`, `replay`, `members` (tokens, inner rules, strangers),
//! `fragments`, `leaving`, `one_answer` (many TLVs in one datagram), and
//! protocol v2: `group` (the bound handshake, group fan-out, mixed groups)
//! and `group_keys` (rekeys, ratchets, key requests, probes), with the
//! hand-made v2 clients of `v2`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fernet::Fernet;
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::PublicKey;

use crate::client::{ClientCore, ClientEvent, ClientOptions};
use crate::reassembly::{DropReason, ReassemblyLimits};
use crate::relay::config::Config;
use crate::relay::drop::Drop;
use crate::relay::stats::Stats;
use crate::relay::{ClientId, Event};
use crate::wire::fragment;
use crate::wire::tlv::{self, Reader};
use crate::wire::{inner, outer, Inner, LeaveReason, RejectReason, MIN_HELLO_LEN};

use crate::sim::net::{addr, Net, UNIX_START};

mod fairness;
mod fragments;
mod group;
mod group_keys;
mod handshake;
mod leaving;
mod members;
mod one_answer;
mod remote;
mod replay;
mod v2;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

impl Net {
    /// Sends a HELLO from `src`; returns the SERVER_KEY DER and the COOKIE.
    fn hello_from(&mut self, src: SocketAddr) -> (Vec<u8>, Vec<u8>) {
        self.take_stray(src);
        let hello =
            ClientCore::new(ClientOptions::default(), self.now, UNIX_START, [0; 32]).hello();
        self.deliver(src, &hello);
        let replies = self.take_stray(src);
        assert_eq!(replies.len(), 1, "one SERVER_KEY+COOKIE reply");
        assert!(replies[0].len() <= 3 * hello.len(), "anti-amplification");
        let tlvs = parse(&replies[0]);
        assert_eq!(
            kinds(&replies[0]),
            [outer::SERVER_KEY, outer::COOKIE, outer::VERSIONS]
        );
        (tlvs[0].1.clone(), tlvs[1].1.clone())
    }

    /// A complete hand-made handshake from `src`.
    fn manual(&mut self, src: SocketAddr, access_token: &[u8]) -> Manual {
        let (der, cookie) = self.hello_from(src);
        let key = Fernet::generate_key();
        let mut plain = key.clone().into_bytes();
        plain.extend_from_slice(access_token);
        self.deliver(src, &session_key(&der, Some(&cookie), &plain));
        let m = Manual {
            addr: src,
            fernet: Fernet::new(&key).unwrap(),
            seq: 0,
        };
        let replies = self.take_stray(src);
        assert_eq!(replies.len(), 1, "one WELCOME");
        let plain = m.open(&replies[0], outer::WELCOME);
        let w = Inner::parse(&plain).unwrap();
        assert_eq!(w.seq, 1, "WELCOME starts the server's SEQ space");
        assert_eq!(w.client_id, Some(src.to_string().as_bytes()));
        m
    }
}

/// A client whose handshake and tokens are built by hand.
struct Manual {
    addr: SocketAddr,
    fernet: Fernet,
    seq: u64,
}

impl Manual {
    /// An outer `kind` datagram carrying `plain` sealed under this key.
    fn datagram(&self, kind: u16, plain: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        tlv::put(&mut d, kind, self.fernet.encrypt(plain).as_bytes());
        d
    }

    /// A well-formed DATA with the next SEQ.
    fn data(&mut self, body: &[u8]) -> Vec<u8> {
        self.seq += 1;
        self.data_seq(self.seq, body)
    }

    fn data_seq(&self, seq: u64, body: &[u8]) -> Vec<u8> {
        let p = plain(&[(inner::SEQ, &seq.to_be_bytes()), (inner::BODY, body)]);
        self.datagram(outer::DATA, &p)
    }

    /// Decrypts a single-TLV datagram of type `kind` sent to this client.
    fn open(&self, d: &[u8], kind: u16) -> Vec<u8> {
        let tlvs = parse(d);
        assert_eq!(tlvs.len(), 1);
        assert_eq!(tlvs[0].0, kind);
        let token = std::str::from_utf8(&tlvs[0].1).unwrap();
        self.fernet.decrypt(token).expect("token under our key")
    }
}

fn parse(d: &[u8]) -> Vec<(u16, Vec<u8>)> {
    Reader::new(d)
        .map(|t| t.map(|t| (t.kind, t.value.to_vec())))
        .collect::<Result<_, _>>()
        .expect("well-formed datagram")
}

fn kinds(d: &[u8]) -> Vec<u16> {
    parse(d).into_iter().map(|(k, _)| k).collect()
}

/// An inner (or outer) TLV stream.
fn plain(parts: &[(u16, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in parts {
        tlv::put(&mut v, *k, val);
    }
    v
}

/// COOKIE (if any) + SESSION_KEY with `plain` RSA-OAEP encrypted to `der`.
fn session_key(der: &[u8], cookie: Option<&[u8]>, plain: &[u8]) -> Vec<u8> {
    let public = PublicKey::from_public_key_der(der).unwrap();
    let ct = public.oaep_encrypt::<Sha256>(plain).unwrap();
    let mut d = Vec::new();
    if let Some(c) = cookie {
        tlv::put(&mut d, outer::COOKIE, c);
    }
    tlv::put(&mut d, outer::SESSION_KEY, &ct);
    d
}

/// Inputs dropped for any of `causes`.
fn dropped(s: &Stats, causes: &[Drop]) -> u64 {
    causes.iter().map(|&d| s.dropped(d)).sum()
}

/// Handshakes refused with REJECT 2.
const AUTH_FAILED: [Drop; 3] = [Drop::RsaDecrypt, Drop::BadFernetKey, Drop::BadAccessToken];

/// Messages dropped by reassembly for `r`.
fn reassembly(s: &Stats, r: DropReason) -> u64 {
    s.dropped(Drop::Reassembly(r))
}

fn reject(r: RejectReason) -> Vec<u8> {
    vec![0, 9, 0, 1, r as u8]
}

fn left(id: &str, reason: LeaveReason) -> ClientEvent {
    ClientEvent::PeerLeft {
        id: id.into(),
        reason: Some(reason),
    }
}

/// Deterministic test bytes.
fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// COOKIE (valid for `src`) + SESSION_KEY of 256 garbage bytes: passes the
/// cookie check, costs an RSA decryption, fails it.
fn garbage_session_key(net: &mut Net, src: SocketAddr) -> Vec<u8> {
    let (_, cookie) = net.hello_from(src);
    plain(&[(outer::COOKIE, &cookie), (outer::SESSION_KEY, &[7; 256])])
}

fn at(host: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((host, port))
}

/// `n` hosts (10.9.k.1) whose per-IP buckets differ from each other and
/// from those of `taken`: the bucket table is hashed with a per-run key, so
/// fixed addresses could share a bucket.
fn hosts_apart(net: &Net, taken: &[[u8; 4]], n: usize) -> Vec<[u8; 4]> {
    let mut all = taken.to_vec();
    for k in 0..=u8::MAX {
        let h = [10, 9, k, 1];
        let apart = |c: &[u8; 4]| !net.relay.admission.hosts_collide(&at(*c, 1), &at(h, 1));
        if all.iter().all(apart) {
            all.push(h);
            if all.len() == taken.len() + n {
                return all.split_off(taken.len());
            }
        }
    }
    panic!("no {n} hosts apart");
}

/// `n` HELLO TLVs of version 1 in one datagram, the first padded so that
/// the datagram is at least the minimum HELLO size.
fn hellos(n: usize) -> Vec<u8> {
    let pad = MIN_HELLO_LEN.saturating_sub(n * (tlv::HEADER_LEN + 1));
    let mut first = vec![0; 1 + pad];
    first[0] = crate::wire::VERSION;
    let mut d = plain(&[(outer::HELLO, &first)]);
    for _ in 1..n {
        tlv::put(&mut d, outer::HELLO, &[crate::wire::VERSION]);
    }
    d
}

/// As many TLVs of `kind` with `value` as fit in the largest UDP datagram.
fn many(kind: u16, value: &[u8]) -> Vec<u8> {
    const MAX_UDP: usize = 65_507;
    let n = MAX_UDP / (tlv::HEADER_LEN + value.len());
    let mut d = Vec::with_capacity(MAX_UDP);
    for _ in 0..n {
        tlv::put(&mut d, kind, value);
    }
    d
}
mod named;
