//! Automatic recovery of [`UdpClient`]: the attempts of one handshake, the
//! background re-handshake after a hint or a loss, and when to give up.

use std::time::Instant;

use super::{ConnectError, UdpClient, DOWNLINK_RETRY, REFUSALS_TO_STOP};
use crate::client::{ClientCore, ClientEvent};
use crate::wire::RejectReason;

/// An automatic recovery: from a hint or a loss until a new WELCOME.
pub(super) struct Recovery {
    /// When it started.
    pub(super) since: Instant,
    /// When the next HELLO goes out.
    pub(super) next_hello: Instant,
    /// [`ClientCore::authentic`] when a hint started it: if that grows
    /// before the first HELLO, the hint was false. None after a real loss.
    pub(super) authentic_at_hint: Option<u64>,
    /// The event that tells the caller, once the first HELLO goes out.
    pub(super) report: Option<ClientEvent>,
    /// A SERVER_KEY matching the pin (or any, unpinned) was accepted.
    pub(super) key_accepted: bool,
    /// [`ClientCore::pin_mismatches`] when it started.
    pub(super) pins_at_start: u64,
    pub(super) tries: Tries,
    /// Started by the client itself to leave group mode: its WELCOME is
    /// not reported (the session goes on, only the transport changed).
    pub(super) quiet: bool,
}

/// The attempts of one handshake (first connection or recovery).
#[derive(Default)]
pub(super) struct Tries {
    /// When the current attempt's HELLO went out.
    pub(super) started: Option<Instant>,
    /// When its refusal was first seen.
    pub(super) refused_at: Option<Instant>,
    /// Attempts in a row refused and not welcomed.
    pub(super) refused: u32,
}

impl Tries {
    /// Ends the current attempt, which got `refusal` (and no WELCOME):
    /// the reason to stop, once attempts in a row were refused for `stop_on`.
    pub(super) fn conclude(
        &mut self,
        refusal: Option<RejectReason>,
        stop_on: &[RejectReason],
    ) -> Option<RejectReason> {
        self.refused_at = None;
        match refusal {
            Some(r) if stop_on.contains(&r) => {
                self.refused += 1;
                (self.refused >= REFUSALS_TO_STOP).then_some(r)
            }
            _ => {
                self.refused = 0;
                None
            }
        }
    }
}

impl Recovery {
    pub(super) fn new(
        now: Instant,
        first: Instant,
        authentic_at_hint: Option<u64>,
        core: &ClientCore,
    ) -> Self {
        Recovery {
            since: now,
            next_hello: first,
            authentic_at_hint,
            report: None,
            key_accepted: false,
            pins_at_start: core.pin_mismatches(),
            tries: Tries::default(),
            quiet: false,
        }
    }
}

pub(super) fn is_handshake_event(e: &ClientEvent) -> bool {
    matches!(
        e,
        ClientEvent::Welcome { .. } | ClientEvent::Rejected(_) | ClientEvent::ServerKey { .. }
    )
}

impl UdpClient {
    /// Retries the background handshake the core started to leave group
    /// mode, without telling the caller about its WELCOME.
    pub(super) fn quiet_recovery(&mut self, now: Instant) {
        self.last_hello = Some(now);
        if self.recovery.is_some() {
            return; // one under way already sends HELLOs
        }
        let every = self.reconnect_every.unwrap_or(DOWNLINK_RETRY);
        let mut rec = Recovery::new(now, now + every, None, &self.core);
        rec.tries.started = Some(now);
        rec.quiet = true;
        self.recovery = Some(rec);
    }

    /// Runs the recovery: HELLOs when due, and the end of it (welcomed,
    /// proven false, or refused for good). Returns when it next needs
    /// attention.
    pub(super) fn run_recovery(&mut self, now: Instant) -> Result<Option<Instant>, ConnectError> {
        let Some(rec) = &mut self.recovery else {
            return Ok(None);
        };
        let every = self.reconnect_every.unwrap_or(DOWNLINK_RETRY);
        let established = self.core.is_established();
        let welcomed = established && !self.core.is_rehandshaking() && rec.tries.started.is_some();
        let refuted = rec.tries.started.is_none()
            && rec
                .authentic_at_hint
                .is_some_and(|a| self.core.authentic() > a);
        if welcomed || refuted {
            // Ended without a WELCOME (the established session proved the
            // hint false): a caller told of the hint hears that all is well.
            let told = rec.authentic_at_hint.is_some() && rec.report.is_none();
            if let (true, Some(id)) = (told, self.core.id()) {
                let id = id.to_owned();
                self.events.push_back(ClientEvent::Welcome { id });
            }
            self.recovery = None;
            return Ok(None);
        }
        if now < rec.next_hello {
            return Ok(Some(rec.next_hello));
        }
        if rec.tries.started.is_some() {
            let refusal = self.core.refusal();
            if let Some(r) = rec.tries.conclude(refusal, &[RejectReason::AuthFailed]) {
                self.recovery = None;
                return Err(ConnectError::Rejected(r));
            }
        }
        let lost = now.saturating_duration_since(rec.since) >= self.handshake_timeout;
        if lost && !rec.key_accepted && self.core.pin_mismatches() > rec.pins_at_start {
            if let Some(e) = self.pin_mismatch.take() {
                self.recovery = None;
                return Err(ConnectError::Pin(e));
            }
        }
        if let Some(e) = rec.report.take() {
            self.events.push_back(e);
        }
        rec.tries.started = Some(now);
        rec.next_hello = now + every;
        let next = rec.next_hello;
        // A background handshake not welcomed within the timeout: the
        // session is gone, start from scratch.
        self.send_hello(lost || !established)?;
        Ok(Some(next))
    }
}
