//! Group mode keys (protocol v2 §4): the server's side, which seals and
//! signs one GROUP_DATA for every member, and the member's side, which
//! checks, opens and orders them.
//!
//! The key moves on every membership change. A leave draws a fresh random
//! key (forward secrecy: who left cannot read on), sent to each remaining
//! member in its own session. A join moves the key one epoch forward by a
//! one-way HKDF step every member computes itself (backward secrecy: the
//! newcomer gets only the new key, so it cannot read what came before), so
//! a join costs no message per member. Keys of epochs left less than
//! [`GRACE`] ago stay usable, for datagrams that were in flight.
//!
//! Members cannot forge the server although they hold the group key: every
//! GROUP_DATA is signed with an Ed25519 key made at start and never stored,
//! and GSEQ (one counter per signer) orders them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use hkdf::Hkdf;
use rsa::sha2::Sha256;

use crate::session::fernet::{encode_key, FernetKey};
use crate::session::replay::ReplayWindow;
use crate::wire::group::{GroupData, HEADER_LEN};
use crate::wire::inner::put_gseq;
use crate::wire::{Inner, InnerError};

/// How long the key of an epoch stays usable after the group moved on.
pub const GRACE: Duration = Duration::from_secs(2);
/// Ratchet steps a member tries for a datagram ahead of its epoch.
pub const MAX_RATCHET_STEPS: u32 = 8;
/// Datagrams a member holds while it waits for a newer key.
pub const MAX_HELD: usize = 32;
/// How long a held datagram waits for its key.
pub const HOLD_FOR: Duration = Duration::from_secs(2);
/// How long a member holds a datagram before it asks for the key.
pub const KEY_REQUEST_AFTER: Duration = Duration::from_millis(250);
/// Least time between two key requests of one member (the server answers
/// at most one a second anyway).
pub const KEY_REQUEST_EVERY: Duration = Duration::from_secs(1);

/// `key[e+1]` from `key[e]`: HKDF-SHA256 over the 32 raw key bytes, empty
/// salt, info `"mcrelay-v2 join" | (e+1) u32 BE`, 32 bytes out.
pub fn ratchet(key: &[u8; 32], next_epoch: u32) -> [u8; 32] {
    let mut info = *b"mcrelay-v2 join\0\0\0\0";
    info[15..].copy_from_slice(&next_epoch.to_be_bytes());
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(None, key)
        .expand(&info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

/// One epoch's key, raw and ready to use.
#[derive(Clone)]
struct EpochKey {
    epoch: u32,
    raw: [u8; 32],
    fernet: FernetKey,
}

impl EpochKey {
    fn new(epoch: u32, raw: [u8; 32]) -> Self {
        EpochKey {
            epoch,
            raw,
            fernet: FernetKey::from_bytes(&raw),
        }
    }
}

/// Keys the group moved away from less than [`GRACE`] ago.
#[derive(Default)]
struct Retired(VecDeque<(EpochKey, Instant)>);

impl Retired {
    fn push(&mut self, key: EpochKey, now: Instant) {
        self.0.push_back((key, now));
    }

    fn get(&mut self, epoch: u32, now: Instant) -> Option<&EpochKey> {
        self.expire(now);
        self.0
            .iter()
            .find(|(k, _)| k.epoch == epoch)
            .map(|(k, _)| k)
    }

    fn expire(&mut self, now: Instant) {
        while self
            .0
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= GRACE)
        {
            self.0.pop_front();
        }
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.0.front().map(|(_, at)| *at + GRACE)
    }
}

/// The server's group: current key, recent keys, signer and GSEQ.
// The relay core's; until it uses it, only tests (the client's fake relay) do.
#[allow(dead_code)]
pub struct GroupSender {
    current: EpochKey,
    retired: Retired,
    rekey_pending: bool,
    signer: SigningKey,
    gseq: u64,
    plain: Vec<u8>,
    token: Vec<u8>,
    message: Vec<u8>,
}

#[allow(dead_code)]
impl GroupSender {
    /// A group at epoch 1 with the random `key`, signed by a key made from
    /// `signer_seed` (both drawn by the caller's RNG).
    pub fn new(key: [u8; 32], signer_seed: [u8; 32]) -> Self {
        GroupSender {
            current: EpochKey::new(1, key),
            retired: Retired::default(),
            rekey_pending: false,
            signer: SigningKey::from_bytes(&signer_seed),
            gseq: 0,
            plain: Vec::with_capacity(2048),
            token: Vec::with_capacity(2048),
            message: Vec::with_capacity(2048),
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> u32 {
        self.current.epoch
    }

    /// The current key as the 44-byte text GROUP_KEY carries.
    pub fn key_text(&self) -> String {
        encode_key(&self.current.raw)
    }

    /// The key text of `epoch` if it is current or retired less than
    /// [`GRACE`] ago (KEY_REQUEST answers).
    pub fn key_text_of(&mut self, epoch: u32, now: Instant) -> Option<String> {
        if epoch == self.current.epoch {
            return Some(self.key_text());
        }
        self.retired.get(epoch, now).map(|k| encode_key(&k.raw))
    }

    /// The 32-byte public key members verify with (GROUP_SIGNER).
    pub fn signer_public(&self) -> [u8; 32] {
        self.signer.verifying_key().to_bytes()
    }

    /// Notes that a member left; the rekey happens before the next
    /// GROUP_DATA or ratchet, so leaves with nothing sent between them
    /// share one.
    pub fn leave(&mut self) {
        self.rekey_pending = true;
    }

    /// True when a leave is waiting for its rekey.
    pub fn rekey_pending(&self) -> bool {
        self.rekey_pending
    }

    /// Moves to a fresh random key (epoch + 1) if a leave asked for one.
    /// Returns true when it did: the caller then sends GROUP_KEY to every
    /// remaining member.
    pub fn rekey_if_pending(&mut self, now: Instant, fresh: [u8; 32]) -> bool {
        if !self.rekey_pending {
            return false;
        }
        self.rekey_pending = false;
        self.advance(now, fresh);
        true
    }

    /// The join step: `key[e+1] = ratchet(key[e])`. A pending rekey must
    /// be done first (the caller's job: [`GroupSender::rekey_if_pending`]).
    pub fn ratchet(&mut self, now: Instant) {
        debug_assert!(!self.rekey_pending, "rekey before ratchet");
        let next = ratchet(&self.current.raw, self.current.epoch.wrapping_add(1));
        self.advance(now, next);
    }

    fn advance(&mut self, now: Instant, raw: [u8; 32]) {
        let next = EpochKey::new(self.current.epoch.wrapping_add(1), raw);
        let old = std::mem::replace(&mut self.current, next);
        self.retired.push(old, now);
        self.retired.expire(now);
    }

    /// Seals `GSEQ | tail` under the current key, signs it, and appends the
    /// GROUP_DATA TLV to `out`. `iv` and `unix_secs` come from the caller.
    pub fn seal(&mut self, unix_secs: u64, iv: [u8; 16], tail: &[u8], out: &mut Vec<u8>) {
        self.gseq += 1;
        self.plain.clear();
        put_gseq(&mut self.plain, self.gseq);
        self.plain.extend_from_slice(tail);
        self.token.clear();
        self.current
            .fernet
            .seal_into(unix_secs, iv, &self.plain, &mut self.token);
        GroupData::signed_message(self.current.epoch, &self.token, &mut self.message);
        let signature = self.signer.sign(&self.message).to_bytes();
        GroupData {
            epoch: self.current.epoch,
            signature: &signature,
            token: &self.token,
        }
        .emit(out);
    }

    /// When the oldest retired key expires, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retired.next_expiry()
    }
}

/// Why a member did not accept a GROUP_DATA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupError {
    /// Shorter than its header, or no token.
    Malformed,
    /// Not signed by this group's signer.
    BadSignature,
    /// An epoch older than the current one whose key is gone.
    OldEpoch,
    /// Newer epoch, no key yet: held until a GROUP_KEY arrives.
    Held,
    /// Newer epoch and the hold queue is full: dropped.
    HoldFull,
    /// The token does not open under its epoch's key.
    BadToken,
    /// The plaintext breaks the inner rules (or carries SEQ, not GSEQ).
    Inner(InnerError),
    /// GSEQ seen before or older than the window.
    Replay,
}

/// A member's view of the group: keys, signer, GSEQ window, held datagrams.
pub struct GroupMember {
    signer: VerifyingKey,
    current: EpochKey,
    retired: Retired,
    window: ReplayWindow,
    held: VecDeque<(Instant, u32, Vec<u8>)>,
    /// When [`GroupMember::key_request`] last asked for a key.
    last_request: Option<Instant>,
    message: Vec<u8>,
}

impl GroupMember {
    /// Starts from a WELCOME's GROUP_SIGNER and GROUP_KEY; `None` if either
    /// is not a valid key. A new signer means a new GSEQ space.
    pub fn new(signer: &[u8], epoch: u32, key_text: &[u8]) -> Option<Self> {
        let signer = VerifyingKey::from_bytes(signer.try_into().ok()?).ok()?;
        let raw = decode_key(key_text)?;
        Some(GroupMember {
            signer,
            current: EpochKey::new(epoch, raw),
            retired: Retired::default(),
            window: ReplayWindow::new(),
            held: VecDeque::new(),
            last_request: None,
            message: Vec::new(),
        })
    }

    /// The member's current epoch.
    pub fn epoch(&self) -> u32 {
        self.current.epoch
    }

    /// True when `signer` is the key this member verifies with: a WELCOME
    /// naming another one comes from a new signer (a restarted relay), a
    /// new GSEQ space.
    pub fn same_signer(&self, signer: &[u8]) -> bool {
        self.signer.as_bytes()[..] == *signer
    }

    /// Checks and opens one GROUP_DATA value, in the protocol's order:
    /// signature, epoch (known, in grace, ratchet, or held), token, inner
    /// rules, GSEQ window. Returns the plaintext.
    ///
    /// # Errors
    /// [`GroupError`]; [`GroupError::Held`] means it may still open after
    /// [`GroupMember::set_key`].
    // The client opens what its datagram parser already split up
    // (open_data); this form is for callers holding the bare value.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn open(&mut self, now: Instant, value: &[u8]) -> Result<Vec<u8>, GroupError> {
        let g = GroupData::parse(value).ok_or(GroupError::Malformed)?;
        self.open_data(now, &g)
    }

    /// [`GroupMember::open`] for a GROUP_DATA already parsed (as
    /// `wire::outer::Datagram` returns it).
    ///
    /// # Errors
    /// As [`GroupMember::open`].
    pub fn open_data(&mut self, now: Instant, g: &GroupData<'_>) -> Result<Vec<u8>, GroupError> {
        self.open_checked(now, g, false)
    }

    /// `keep_old`: a datagram held earlier whose older epoch still has no
    /// key stays held (its key may be on its way: a KEY_REQUEST answer may
    /// bring the current epoch's key before the requested one).
    fn open_checked(
        &mut self,
        now: Instant,
        g: &GroupData<'_>,
        keep_old: bool,
    ) -> Result<Vec<u8>, GroupError> {
        GroupData::signed_message(g.epoch, g.token, &mut self.message);
        let sig = Signature::from_bytes(g.signature);
        self.signer
            .verify(&self.message, &sig)
            .map_err(|_| GroupError::BadSignature)?;
        let current = self.current.epoch;
        let opened = self.key_for(now, g.epoch).map(|k| k.fernet.open(g.token));
        let plain = match opened {
            Some(p) => p.map_err(|_| GroupError::BadToken)?,
            None => match self.try_ratchet(now, g) {
                Some(p) => p,
                None if g.epoch > current || keep_old => return self.hold(now, g),
                None => return Err(GroupError::OldEpoch),
            },
        };
        self.accept(plain)
    }

    fn key_for(&mut self, now: Instant, epoch: u32) -> Option<&EpochKey> {
        if epoch == self.current.epoch {
            return Some(&self.current);
        }
        self.retired.get(epoch, now)
    }

    /// Up to [`MAX_RATCHET_STEPS`] join steps from the newest key we hold
    /// below the datagram's epoch; the derived key is used only when the
    /// token opens under it. A newer epoch becomes the current one; an
    /// older one (its datagram overtaken by a rekey's GROUP_KEY, which
    /// travels another way) is kept for the grace period only.
    fn try_ratchet(&mut self, now: Instant, g: &GroupData<'_>) -> Option<Vec<u8>> {
        self.retired.expire(now);
        let base = std::iter::once(&self.current)
            .chain(self.retired.0.iter().map(|(k, _)| k))
            .filter(|k| k.epoch < g.epoch && g.epoch - k.epoch <= MAX_RATCHET_STEPS)
            .max_by_key(|k| k.epoch)?;
        let mut raw = base.raw;
        for e in base.epoch + 1..=g.epoch {
            raw = ratchet(&raw, e);
        }
        let candidate = EpochKey::new(g.epoch, raw);
        let plain = candidate.fernet.open(g.token).ok()?;
        if g.epoch > self.current.epoch {
            let old = std::mem::replace(&mut self.current, candidate);
            self.retired.push(old, now);
        } else {
            self.retired.push(candidate, now);
        }
        Some(plain)
    }

    fn hold(&mut self, now: Instant, g: &GroupData<'_>) -> Result<Vec<u8>, GroupError> {
        self.expire(now);
        if self.held.len() >= MAX_HELD {
            return Err(GroupError::HoldFull);
        }
        let mut value = Vec::with_capacity(HEADER_LEN + g.token.len());
        value.extend_from_slice(&g.epoch.to_be_bytes());
        value.extend_from_slice(g.signature);
        value.extend_from_slice(g.token);
        self.held.push_back((now, g.epoch, value));
        Err(GroupError::Held)
    }

    fn accept(&mut self, plain: Vec<u8>) -> Result<Vec<u8>, GroupError> {
        let m = Inner::parse(&plain).map_err(GroupError::Inner)?;
        if !m.gseq {
            return Err(GroupError::Inner(InnerError::BadField));
        }
        if !self.window.update(m.seq) {
            return Err(GroupError::Replay);
        }
        Ok(plain)
    }

    /// A GROUP_KEY arrived (a rekey, or the answer to a KEY_REQUEST).
    /// Returns the plaintexts of held datagrams that now open, in order.
    pub fn set_key(&mut self, now: Instant, epoch: u32, key_text: &[u8]) -> Vec<Vec<u8>> {
        let Some(raw) = decode_key(key_text) else {
            return Vec::new();
        };
        if epoch > self.current.epoch {
            let old = std::mem::replace(&mut self.current, EpochKey::new(epoch, raw));
            self.retired.push(old, now);
        } else if epoch < self.current.epoch && self.retired.get(epoch, now).is_none() {
            // An older epoch we asked for: usable for the grace period.
            self.retired.push(EpochKey::new(epoch, raw), now);
        }
        let held = std::mem::take(&mut self.held);
        let mut opened = Vec::new();
        for (at, e, value) in held {
            if now.saturating_duration_since(at) >= HOLD_FOR {
                continue;
            }
            let Some(g) = GroupData::parse(&value) else {
                continue; // built by hold(): always parses
            };
            match self.open_checked(now, &g, true) {
                Ok(p) => opened.push(p),
                Err(GroupError::Held) => {
                    // Re-held by open(): keep its original arrival time.
                    if let Some(last) = self.held.back_mut() {
                        *last = (at, e, value);
                    }
                }
                Err(_) => {}
            }
        }
        opened
    }

    /// The epoch to ask for in a KEY_REQUEST: the oldest held epoch once a
    /// datagram has waited [`KEY_REQUEST_AFTER`], at most once every
    /// [`KEY_REQUEST_EVERY`] (a `Some` is taken as sent).
    pub fn key_request(&mut self, now: Instant) -> Option<u32> {
        if self
            .last_request
            .is_some_and(|at| now.saturating_duration_since(at) < KEY_REQUEST_EVERY)
        {
            return None;
        }
        let epoch = self
            .held
            .iter()
            .filter(|(at, _, _)| now.saturating_duration_since(*at) >= KEY_REQUEST_AFTER)
            .map(|(_, e, _)| *e)
            .min()?;
        self.last_request = Some(now);
        Some(epoch)
    }

    /// Drops held datagrams older than [`HOLD_FOR`] and keys past their grace.
    pub fn expire(&mut self, now: Instant) {
        self.held
            .retain(|(at, _, _)| now.saturating_duration_since(*at) < HOLD_FOR);
        self.retired.expire(now);
    }

    /// The next time [`GroupMember::expire`] or a key request has work.
    /// Never a time at which [`GroupMember::key_request`] would still say
    /// no because of its rate limit, so a caller that sleeps until then does
    /// not spin.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let held = self.held.front().map(|(at, _, _)| *at);
        let request = held.map(|at| {
            let due = at + KEY_REQUEST_AFTER;
            self.last_request
                .map_or(due, |last| due.max(last + KEY_REQUEST_EVERY))
        });
        [
            request,
            held.map(|at| at + HOLD_FOR),
            self.retired.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Number of datagrams waiting for a key.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// The 32 raw bytes of a 44-byte Fernet key text.
fn decode_key(text: &[u8]) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(text).ok()?;
    FernetKey::from_base64(text)?;
    let mut raw = [0u8; 32];
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(text)
        .ok()?;
    raw.copy_from_slice(bytes.get(..32)?);
    (bytes.len() == 32).then_some(raw)
}

#[cfg(test)]
mod tests;
