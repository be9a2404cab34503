//! The handshake rules of [`ClientCore`]: the answer to a SERVER_KEY (the
//! pin, v1 SESSION_KEY or v2 SESSION_KEY2, no downgrade once v2 was seen),
//! REJECTs as hints or refusals, and the pending session made the
//! established one.

use std::time::Instant;

use rand::RngExt;
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::PublicKey;

use super::group::Downlink;
use super::{Attempt, ClientCore, ClientError, ClientEvent, State};
use crate::session::group::GroupMember;
use crate::session::Session;
use crate::session::{fernet, key};
use crate::wire::handshake::{Handshake, CAP_GROUP, CAP_RAW, MAX_CREDENTIAL_LEN};
use crate::wire::outer::{Datagram, Keyed};
use crate::wire::tlv;
use crate::wire::{outer, Inner, RejectReason};

impl ClientCore {
    pub(super) fn on_server_key(
        &mut self,
        k: Keyed<'_>,
        versions: Option<&[u8]>,
        out: &mut Vec<Vec<u8>>,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        if self.attempt().is_none_or(|a| a.session.is_some()) {
            return Ok(()); // a late or duplicate answer to an earlier HELLO
        }
        let (Some(cookie), true, Ok(public)) = (
            k.cookie,
            Datagram::cookie_len_ok(&k),
            PublicKey::from_public_key_der(k.value),
        ) else {
            self.dropped += 1;
            return Ok(());
        };
        let der = k.value;
        let fingerprint = key::fingerprint(der);
        if let Some(pin) = &self.opts.pin {
            if !pin.eq_ignore_ascii_case(&fingerprint) {
                // Anyone can answer a HELLO: wait on for the pinned key.
                self.seen.pin_mismatches += 1;
                return Err(ClientError::PinMismatch {
                    expected: pin.clone(),
                    got: fingerprint,
                });
            }
        }
        let token = self.opts.access_token.as_deref().unwrap_or_default();
        // A token too long for CREDENTIAL can only travel in v1's SESSION_KEY.
        let v2_possible = token.len() <= MAX_CREDENTIAL_LEN;
        let offers_v2 = versions.is_some_and(|v| v.contains(&2));
        if v2_possible && self.server_v2 && !offers_v2 {
            // v2 was offered before: an answer without it is a downgrade
            // (forged, or a relay rolled back); wait on for a v2 answer.
            self.seen.downgrades += 1;
            self.dropped += 1;
            return Ok(());
        }
        self.server_v2 |= offers_v2;
        let key = fernet::encode_key(&self.rng.random());
        let mut plain = Vec::with_capacity(190);
        let asked = if v2_possible && offers_v2 {
            let caps = self.caps_wanted();
            let Ok(bind) = cookie.try_into() else {
                return Ok(()); // cookie_len_ok: 16 bytes
            };
            Handshake {
                fernet_key: key.as_bytes(),
                bind,
                caps,
                credential: (!token.is_empty()).then_some(token),
            }
            .emit(&mut plain);
            Some(caps)
        } else {
            plain.extend_from_slice(key.as_bytes());
            plain.extend_from_slice(token);
            None
        };
        let Ok(ct) = public.oaep_encrypt_with_rng::<Sha256, _>(&mut self.rng, &plain) else {
            self.dropped += 1;
            return Ok(());
        };
        let mut d = Vec::new();
        tlv::put(&mut d, outer::COOKIE, cookie);
        let kind = if asked.is_some() {
            outer::SESSION_KEY2
        } else {
            outer::SESSION_KEY
        };
        tlv::put(&mut d, kind, &ct);
        out.push(d);
        if let Some(attempt) = self.attempt_mut() {
            attempt.session = Session::new(&key);
            attempt.asked = asked;
        }
        events.push(ClientEvent::ServerKey { fingerprint });
        Ok(())
    }

    /// The CAPS a SESSION_KEY2 asks for.
    pub(super) fn caps_wanted(&self) -> u32 {
        let group = self.opts.group && !self.group_off;
        CAP_RAW | if group { CAP_GROUP } else { 0 }
    }

    pub(super) fn on_reject(&mut self, r: RejectReason, events: &mut Vec<ClientEvent>) {
        events.push(ClientEvent::Rejected(r));
        let answers_ours = matches!(
            r,
            RejectReason::AuthFailed | RejectReason::ServerFull | RejectReason::BadCookie
        );
        if let Some(a) = self.attempt_mut().filter(|a| a.session.is_some()) {
            if answers_ours {
                a.refused = Some(r);
                return;
            }
        }
        let hint = matches!(r, RejectReason::UnknownSession | RejectReason::AuthFailed);
        if hint && self.is_established() {
            self.seen.hint = Some(r);
        }
    }

    /// Makes the pending session the established one, under `id`, with
    /// the v2 fields of its WELCOME (None when a token under the new key
    /// overtook a lost WELCOME).
    pub(super) fn promote(
        &mut self,
        now: Instant,
        id: String,
        welcome: Option<&Inner<'_>>,
        events: &mut Vec<ClientEvent>,
    ) {
        let pending = match std::mem::replace(&mut self.state, State::Idle) {
            State::Connecting(a) => Some(a),
            State::Established { rekey, .. } => rekey.map(|a| *a),
            State::Idle => None,
        };
        // Only called once a token opened under the pending session.
        let Some(Attempt {
            session: Some(session),
            asked,
            ..
        }) = pending
        else {
            self.group = None;
            return;
        };
        self.seen.hint = None; // about the session just replaced
        let granted = match (asked, welcome) {
            (Some(asked), Some(m)) => m.caps.unwrap_or(0) & asked,
            // WELCOME lost: RAW is unknown, so text; group mode as asked
            // stays as it was (the relay keeps a member that asked again).
            (Some(asked), None) if self.group.is_some() => asked & CAP_GROUP,
            (Some(_), None) | (None, _) => 0,
        };
        self.state = State::Established {
            session,
            id,
            rekey: None,
            raw: granted & CAP_RAW != 0,
        };
        events.push(ClientEvent::Welcome {
            id: self.id().unwrap_or_default().to_owned(),
        });
        if granted & CAP_GROUP == 0 {
            self.group = None;
            return;
        }
        let Some(m) = welcome else { return };
        let (Some((epoch, key)), Some(addr), Some(signer)) =
            (m.group_key, m.group_addr, m.group_signer)
        else {
            self.group = None; // GROUP granted without its fields: broken
            self.dropped += 1;
            return;
        };
        if let Some(g) = self
            .group
            .as_mut()
            .filter(|g| g.addr == addr && g.member.same_signer(signer))
        {
            // A re-handshake: same group, the join moved the key on.
            let released = g.member.set_key(now, epoch, key);
            self.release(released, events);
            return;
        }
        // A new signer is a new GSEQ space: a new member.
        let Some(member) = GroupMember::new(signer, epoch, key) else {
            self.group = None;
            self.dropped += 1;
            return;
        };
        self.group = Some(Downlink::new(member, addr, now));
        events.push(ClientEvent::Downlink(addr));
    }
}
