//! The protocol v2 ops of the `core` program (op 14, then a byte choosing
//! one of these):
//!
//! | sub | action |
//! |-----|--------|
//! | 0 | hold group datagrams back (flag bit 0 set) or deliver them at once again |
//! | 1 | release the held group datagrams: in the order and multiplicity a pattern picks (the rest are lost), to the members a mask picks |
//! | 2 | the next 1–4 relay datagrams to client i are lost (a GROUP_KEY, a WELCOME...) |
//! | 3 | forged or replayed GROUP_DATA to the members: bad signature, signed by a member (sealed under the group key the harness's own session learnt), wrong epoch, a replay (GSEQ seen), truncated; optionally to the relay too |
//! | 4 | client i's ClientCore timers (key requests, probes, a silent downlink) |
//! | 5 | client i leaves group mode (a re-handshake without GROUP: a rekey) |
//! | 6 | client i re-handshakes in the background (a re-join: a ratchet) |
//! | 7 | harness-built COOKIE + SESSION_KEY2 for client i: BIND right, wrong, missing or doubled, chosen caps and credential |
//! | 8 | a KEEPALIVE (or DATA) under the key of sub 7 or op 11 carrying KEY_REQUEST for a chosen epoch and/or PROBE |
//! | 9 | raw datagram of v2 outer and handshake TLV types, from client i or a stranger, optionally after a real COOKIE |
//! | 10 | the clients table reloaded: unchanged, client k turned `pub` or `sub`, removed, or no table |
//! | 11 | churn: client i says BYE (a leave: rekey) and handshakes again (a join: ratchet) |

use std::sync::Arc;

use ed25519_dalek::{Signer as _, SigningKey};
use rand::RngExt;
use rsa::sha2::Sha256;

use crate::relay::config::credentials::Perms;
use crate::session::fernet::{self, FernetKey};
use crate::wire::group::GroupData;
use crate::wire::handshake::{self, Handshake};
use crate::wire::inner::{self, put_gseq};
use crate::wire::tlv;
use crate::wire::{self, outer};

use super::{
    clients_table, name_token, server_public, stranger_addr, ByteReader, Origin, Sim, CLIENTS,
    STRANGERS, UNIX_START,
};

/// Bodies the harness forges start with this (never a ClientCore's body).
const FORGED_MAGIC: [u8; 2] = [0xF0, 0x4C];

impl Sim {
    /// Op 14: decodes and runs one v2 op for client i; `flag` is the op
    /// byte's top two bits. None when the input ran out.
    pub(super) fn v2_op(&mut self, i: usize, flag: u8, input: &mut ByteReader<'_>) -> Option<()> {
        let sub = input.u8()? % 12;
        if self.trace {
            eprintln!("  v2 op {sub}");
        }
        let addr = self.clients[i].addr;
        match sub {
            0 => self.downlink_hold = flag & 1 != 0,
            1 => {
                let mask = input.u8()?;
                let pattern = input.blob(1)?.to_vec();
                self.release(mask, &pattern);
            }
            2 => self.clients[i].drop_next = 1 + flag,
            3 => {
                let variant = input.u8()?;
                let k = input.u8()?;
                let mask = input.u8()?;
                let blob = input.blob(1)?.to_vec();
                self.forge(i, variant, k, mask, &blob);
            }
            4 => self.client_timers(i),
            5 | 6 => {
                let hello = if sub == 5 {
                    self.clients[i].core.leave_group()
                } else {
                    Some(self.clients[i].core.rehandshake())
                };
                if let Some(h) = hello {
                    self.deliver_to_relay(addr, h, Origin::Core(i));
                }
            }
            7 => {
                let mode = input.u8()?;
                let caps = input.u8()?;
                let blob = input.blob(1)?.to_vec();
                self.harness_session_key2(i, mode, caps, &blob);
            }
            8 => {
                let mode = input.u8()?;
                let epoch = if mode & 3 == 3 { input.u32()? } else { 0 };
                self.harness_request(i, mode, epoch);
            }
            9 => {
                let kinds = input.u8()?;
                let count = input.u8()?;
                let value = input.blob(1)?.to_vec();
                self.raw_v2(i, flag, kinds, count, &value);
            }
            10 => {
                let v = input.u8()?;
                self.reload(flag, v);
            }
            _ => {
                let mut d = Vec::new();
                self.clients[i].core.bye(&mut d);
                self.clients[i].tx_ok = false;
                self.clients[i].rx_ok = false;
                for d in d {
                    self.deliver_to_relay(addr, d, Origin::Core(i));
                }
                self.handshake(i);
            }
        }
        Some(())
    }

    /// Sub 1: delivers the held group datagrams the pattern picks (all in
    /// order when it is empty) to the members in `mask` (0: all); the
    /// others are lost.
    fn release(&mut self, mask: u8, pattern: &[u8]) {
        let queue: Vec<_> = std::mem::take(&mut self.downlink_queue).into();
        if queue.is_empty() {
            return;
        }
        let order: Vec<usize> = if pattern.is_empty() {
            (0..queue.len()).collect()
        } else {
            pattern
                .iter()
                .map(|&k| usize::from(k) % queue.len())
                .collect()
        };
        let mask = if mask & 0x0f == 0 { u8::MAX } else { mask };
        for k in order {
            let (dst, d) = &queue[k];
            self.deliver_downlink(*dst, d, None, mask);
        }
    }

    /// Sub 3: a GROUP_DATA the relay did not send (or sent before), to the
    /// members in `mask` (0: all; bit 4: to the relay too, from client i).
    /// Only a replay may open, and only for a member that missed it.
    fn forge(&mut self, i: usize, variant: u8, k: u8, mask: u8, blob: &[u8]) {
        let base = (!self.group_history.is_empty())
            .then(|| self.group_history[usize::from(k) % self.group_history.len()].clone());
        let first = blob.first().copied().unwrap_or(0);
        let variant = variant % 5;
        let d = match (variant, base) {
            (1, _) => self.member_signed(k, blob),
            (0, Some(mut d)) => {
                // A bit of the signature (after TLV header and epoch).
                let bit = usize::from(first) % (64 * 8);
                d[tlv::HEADER_LEN + 4 + bit / 8] ^= 1 << (bit % 8);
                d
            }
            (2, Some(mut d)) => {
                let at = tlv::HEADER_LEN;
                let epoch = u32::from_be_bytes(d[at..at + 4].try_into().expect("4 bytes"));
                let other = epoch.wrapping_add(u32::from(first) + 1);
                d[at..at + 4].copy_from_slice(&other.to_be_bytes());
                d
            }
            (3, Some(d)) => d,
            (4, Some(mut d)) => {
                // Always shorter: a whole one would be a replay.
                d.truncate((usize::from(first) * 2).min(d.len() - 1));
                d
            }
            _ => return,
        };
        let dst = self.config.downlinks[0];
        let targets = if mask & 0x0f == 0 { 0x0f } else { mask & 0x0f };
        let before: Vec<_> = self
            .clients
            .iter()
            .map(|c| c.core.downlink_stats())
            .collect();
        self.deliver_downlink(dst, &d, None, targets);
        for (c, b) in self.clients.iter().zip(before) {
            let a = c.core.downlink_stats();
            if variant == 3 {
                continue; // a replay opens for a member that missed it
            }
            assert_eq!(
                (a.opened, a.released, a.held),
                (b.opened, b.released, b.held),
                "{} accepted a forged GROUP_DATA (variant {variant})",
                c.id
            );
            if c.core.downlink() == Some(dst) {
                self.report.forgeries_refused += 1;
            }
        }
        if mask & 0x10 != 0 {
            let addr = self.clients[i].addr;
            self.deliver_to_relay(addr, d, Origin::Other);
        }
    }

    /// A GROUP_DATA a member could make: sealed under the group key the
    /// harness's own session at client `k`'s address learnt (a random key
    /// if none), signed with a key that is not the relay's.
    fn member_signed(&mut self, k: u8, blob: &[u8]) -> Vec<u8> {
        let c = &self.clients[usize::from(k) % CLIENTS];
        let known = c.crafted_group.clone();
        let sender = self.clients[usize::from(k >> 2) % CLIENTS].id.clone();
        let (epoch, key) = match known.and_then(|(e, t)| Some((e, FernetKey::from_base64(&t)?))) {
            Some(ek) => ek,
            None => {
                let epoch = u32::try_from(self.net.relay.stats().group_epoch).unwrap_or(0);
                (epoch, FernetKey::from_bytes(&self.rng.random()))
            }
        };
        let mut plain = Vec::new();
        put_gseq(&mut plain, 1_000_000 + u64::from(k));
        tlv::put(&mut plain, inner::SENDER_ID, sender.as_bytes());
        let mut body = FORGED_MAGIC.to_vec();
        body.extend_from_slice(blob);
        tlv::put(&mut plain, inner::BODY, &body);
        let mut token = Vec::new();
        key.seal_into(UNIX_START, self.rng.random(), &plain, &mut token);
        let mut message = Vec::new();
        GroupData::signed_message(epoch, &token, &mut message);
        let signer = SigningKey::from_bytes(&self.rng.random());
        let signature = signer.sign(&message).to_bytes();
        let mut d = Vec::new();
        GroupData {
            epoch,
            signature: &signature,
            token: &token,
        }
        .emit(&mut d);
        d
    }

    /// Sub 7: COOKIE + SESSION_KEY2 built by the harness for client i's
    /// address. `mode`: bits 0–1 BIND (right, one bit wrong, another
    /// address's cookie, missing), bits 2–3 the credential (none, the
    /// client's own, another name's, the blob), bit 4 a second BIND, bit 7
    /// a fresh HELLO first. A wrong or missing BIND never registers.
    fn harness_session_key2(&mut self, i: usize, mode: u8, caps: u8, blob: &[u8]) {
        if self.rsa_left == 0 {
            return;
        }
        let Some(cookie) = self.harness_cookie(i, mode & 0x80 != 0) else {
            return;
        };
        let first = usize::from(blob.first().copied().unwrap_or(0));
        let mut bind = cookie;
        match mode & 3 {
            1 => bind[first % bind.len()] ^= 1 << (first % 8),
            2 => {
                let other = self.clients[(i + 1 + first) % CLIENTS].cookie;
                bind = other.filter(|c| *c != cookie).unwrap_or([0; 16]);
            }
            _ => {}
        }
        let bound = mode & 3 == 0 || mode & 3 == 3;
        let own_token = match (&self.config.credentials, &self.config.access_token) {
            (Some(_), _) => Some(name_token(i)),
            (None, t) => t.clone(),
        };
        let credential = match (mode >> 2) & 3 {
            0 => None,
            1 => own_token,
            2 => Some(name_token(first)),
            _ => Some(
                blob.iter()
                    .copied()
                    .take(handshake::MAX_CREDENTIAL_LEN)
                    .collect(),
            ),
        }
        .filter(|c| !c.is_empty());
        let key_bytes: [u8; 32] = self.rng.random();
        let fernet_key = fernet::encode_key(&key_bytes);
        let mut plain = Vec::new();
        if mode & 3 == 3 {
            // No BIND at all.
            tlv::put(&mut plain, handshake::FERNET_KEY, fernet_key.as_bytes());
            tlv::put(&mut plain, handshake::CAPS, &u32::from(caps).to_be_bytes());
        } else {
            Handshake {
                fernet_key: fernet_key.as_bytes(),
                bind: &bind,
                caps: u32::from(caps),
                credential: credential.as_deref(),
            }
            .emit(&mut plain);
            if mode & 0x10 != 0 {
                tlv::put(&mut plain, handshake::BIND, &bind);
            }
        }
        plain.truncate(190); // OAEP-SHA256 limit for RSA-2048
        let Ok(ct) = server_public().oaep_encrypt_with_rng::<Sha256, _>(&mut self.rng, &plain)
        else {
            return;
        };
        let mut d = Vec::new();
        tlv::put(&mut d, outer::COOKIE, &cookie);
        tlv::put(&mut d, outer::SESSION_KEY2, &ct);
        // The HELLO's answer may have made a ClientCore spend the rest.
        if self.rsa_left == 0 {
            return;
        }
        self.rsa_left -= 1;
        let joined = self.net.relay.stats().handshakes_completed;
        self.harness_handshake(i, d, Some(FernetKey::from_bytes(&key_bytes)));
        if !bound || mode & 3 == 3 {
            assert_eq!(
                self.net.relay.stats().handshakes_completed,
                joined,
                "a SESSION_KEY2 without this datagram's COOKIE as BIND registered"
            );
        }
    }

    /// Sub 8: a token under the harness's key for client i's address
    /// (sub 7 or op 11) with `SEQ`, then KEY_REQUEST (mode bit 2) for the
    /// relay's epoch, the one before, an older one or `epoch` (bits 0–1),
    /// and/or PROBE (bit 3); in a KEEPALIVE, or a DATA with bit 7.
    fn harness_request(&mut self, i: usize, mode: u8, epoch: u32) {
        let current = u32::try_from(self.net.relay.stats().group_epoch).unwrap_or(u32::MAX);
        let c = &mut self.clients[i];
        let Some(f) = &c.crafted_key else { return };
        let epoch = match mode & 3 {
            0 => current,
            1 => current.saturating_sub(1),
            2 => current.saturating_sub(2 + u32::from(mode >> 4 & 3)),
            _ => epoch,
        };
        c.crafted_seq += 1;
        let mut plain = Vec::new();
        wire::put_seq(&mut plain, c.crafted_seq);
        if mode & 4 != 0 {
            tlv::put(&mut plain, inner::KEY_REQUEST, &epoch.to_be_bytes());
        }
        if mode & 8 != 0 {
            tlv::put(&mut plain, inner::PROBE, &[]);
        }
        let iv = self.rng.random();
        let mut token = Vec::new();
        if mode & 0x40 != 0 {
            f.seal_into(UNIX_START, iv, &plain, &mut token);
        } else {
            token = f.seal_text(UNIX_START, iv, &plain).into_bytes();
        }
        let kind = if mode & 0x80 != 0 {
            outer::DATA
        } else {
            outer::KEEPALIVE
        };
        let mut d = Vec::new();
        tlv::put(&mut d, kind, &token);
        let addr = c.addr;
        self.deliver_to_relay(addr, d, Origin::Other);
    }

    /// Sub 9: `count` (1–8) TLVs of v2 outer and handshake types with
    /// `value`, after a real COOKIE and a modulus-sized SESSION_KEY2
    /// (flag bit 0: RSA runs and fails) from client i, or from a stranger
    /// (flag bit 1).
    fn raw_v2(&mut self, i: usize, flag: u8, kinds: u8, count: u8, value: &[u8]) {
        const TYPES: [u16; 12] = [
            outer::SESSION_KEY2,
            outer::GROUP_DATA,
            outer::VERSIONS,
            handshake::FERNET_KEY,
            handshake::BIND,
            handshake::CAPS,
            handshake::CREDENTIAL,
            inner::GROUP_KEY,
            inner::KEY_REQUEST,
            inner::PROBE,
            0x000E,
            outer::COOKIE,
        ];
        let src = if flag & 2 != 0 {
            stranger_addr(kinds % STRANGERS)
        } else {
            self.clients[i].addr
        };
        let mut d = Vec::new();
        if flag & 1 != 0 && flag & 2 == 0 && self.rsa_left > 0 {
            if let Some(cookie) = self.clients[i].cookie {
                self.rsa_left -= 1;
                tlv::put(&mut d, outer::COOKIE, &cookie);
                let mut ct = value.to_vec();
                ct.resize(256, 0x5a);
                tlv::put(&mut d, outer::SESSION_KEY2, &ct);
            }
        }
        for n in 0..usize::from(count % 8) + 1 {
            let kind = TYPES[(usize::from(kinds) + n * 5) % TYPES.len()];
            tlv::put(&mut d, kind, value);
        }
        self.deliver_to_relay(src, d, Origin::Other);
    }

    /// Sub 10: the clients table reloaded (`v` bits 0–1: unchanged, client
    /// k's line turned `pub`, removed, turned `sub`; bits 2–3: k; flag bit
    /// 0: no table at all). Revoked sessions leave; narrowed ones keep
    /// only what both lines grant (a member turned `pub` leaves the group).
    fn reload(&mut self, flag: u8, v: u8) {
        let k = usize::from(v >> 2) & 3;
        let table = if flag & 1 != 0 {
            None
        } else {
            Some(Arc::new(match v & 3 {
                0 => clients_table(&[]),
                1 => clients_table(&[(k, Some(Perms::PUB))]),
                2 => clients_table(&[(k, None)]),
                _ => clients_table(&[(k, Some(Perms::SUB))]),
            }))
        };
        self.config.credentials = table.clone();
        self.net.tx.clear();
        self.net.relay.set_credentials(table, &mut self.net.tx);
        assert!(
            self.registered_transmits_only(),
            "a reload sent to strangers"
        );
        self.after_relay(None, 0, false);
    }
}
