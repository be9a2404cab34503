//! Why the relay dropped an input, as one value: [`Drop`].
//!
//! Handlers return `Result<_, Drop>`; [`Relay::dropped`] is the one place
//! that counts a drop, logs it (debug, rate-limited) and sends the REJECT
//! its cause calls for (at most one per datagram, within the REJECT
//! limits). The enum, its `stats` names, its REJECT mapping and its
//! counter indices come from one table (the `drops!` macro), so a new cause
//! cannot be counted without a name or named without a counter.

use std::fmt;
use std::sync::OnceLock;

use crate::reassembly::DropReason as ReassemblyDrop;
use crate::relay::dispatch::Turn;
use crate::relay::{Relay, Transmits};
use crate::session::OpenError;
use crate::wire::outer::WireError;
use crate::wire::{self, InnerError, RejectReason};

/// Defines [`Drop`] from a table of plain causes (`Variant = "name"`, and
/// `reject Reason` when a REJECT answers it) and, in brackets, one variant
/// wrapping a reason type that has `ALL` and `name()` (one counter per
/// reason, named `prefix_reason`).
macro_rules! drops {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $v:ident = $vname:literal $(, reject $r:ident)?;
            )*
            [
                $(#[$nmeta:meta])*
                $nv:ident($nt:ty) = $nprefix:literal;
            ]
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$vmeta])* $v, )*
            $(#[$nmeta])*
            $nv($nt),
        }

        impl $name {
            /// Plain causes, before the wrapped ones.
            const PLAIN: usize = [$($vname),*].len();
            /// Number of causes, one counter each.
            pub const COUNT: usize = Self::PLAIN + <$nt>::ALL.len();
            /// Every cause, in counter order.
            pub const ALL: [$name; Self::COUNT] = {
                let plain = [$($name::$v),*];
                let wrapped = <$nt>::ALL;
                let mut all = [plain[0]; Self::COUNT];
                let mut i = 0;
                while i < plain.len() {
                    all[i] = plain[i];
                    i += 1;
                }
                let mut j = 0;
                while j < wrapped.len() {
                    all[i + j] = $name::$nv(wrapped[j]);
                    j += 1;
                }
                all
            };

            /// This cause's counter, `0..COUNT`.
            pub fn index(self) -> usize {
                #[allow(non_camel_case_types, clippy::enum_variant_names)]
                enum Plain { $($v),* }
                match self {
                    $( $name::$v => Plain::$v as usize, )*
                    $name::$nv(r) => {
                        let at = <$nt>::ALL.iter().position(|x| *x == r);
                        Self::PLAIN + at.unwrap_or(0)
                    }
                }
            }

            /// The REJECT this cause is answered with, if any.
            pub fn reject(self) -> Option<RejectReason> {
                match self {
                    $( $name::$v => None $(.or(Some(RejectReason::$r)))?, )*
                    $name::$nv(_) => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $( $name::$v => f.write_str($vname), )*
                    $name::$nv(r) => write!(f, "{}_{}", $nprefix, r.name()),
                }
            }
        }
    };
}

drops! {
    /// Why an input was dropped. Each cause has its own counter,
    /// `drop_<name>` in `stats`.
    pub enum Drop {
        /// Broken TLV framing: a length past the end, or 1–3 trailing bytes.
        Framing = "wire_framing";
        /// A FRAGMENT value shorter than its header, with count 0 or no chunk.
        BadFragment = "wire_bad_fragment";
        /// A REJECT whose value is not one byte.
        BadReject = "wire_bad_reject";
        /// A GROUP_DATA value shorter than its header, or with no token.
        BadGroupData = "wire_bad_group_data";
        /// A handshake TLV after the first of its type in one datagram.
        Repeated = "wire_repeated";
        /// A session item beyond the bound one datagram may carry.
        TooManyItems = "wire_too_many_items";
        /// An outer type this version does not know.
        UnknownType = "wire_unknown_type";
        /// A type only the server sends (SERVER_KEY, WELCOME, REJECT, GROUP_DATA).
        ServerToClient = "wire_server_to_client";
        /// A FRAGMENT inside a reassembled payload (no nesting).
        NestedFragment = "wire_nested_fragment";
        /// A session item from an address that holds no session.
        Stranger = "stranger", reject UnknownSession;
        /// A session item after the BYE that ended its session.
        AfterBye = "after_bye";
        /// A HELLO in a datagram shorter than the protocol's minimum.
        ShortHello = "hello_short";
        /// A HELLO of another protocol version, or empty.
        BadVersion = "hello_bad_version";
        /// A HELLO in a payload whose datagram was answered already.
        HelloRepeated = "hello_repeated";
        /// A HELLO whose answer would exceed three times its datagram.
        Amplification = "hello_amplification";
        /// A SESSION_KEY without the cookie issued to its address.
        BadCookie = "handshake_bad_cookie", reject BadCookie;
        /// A SESSION_KEY from a banned address or host (checked before
        /// RSA), or naming a banned client (after it).
        Banned = "handshake_banned", reject AuthFailed;
        /// A SESSION_KEY ciphertext that registered a session already (from
        /// another address, or after that session ended).
        ReplayedSessionKey = "handshake_replayed";
        /// A repeat of the SESSION_KEY that registered the session at its
        /// address, within a second of the last WELCOME.
        WelcomeResendLimited = "handshake_welcome_resend_limited";
        /// Over the handshake rate of its address (ip and port).
        RateLimitedAddr = "handshake_rate_limited_addr";
        /// Over its host's share of the RSA budget.
        RateLimitedIp = "handshake_rate_limited_ip";
        /// The global RSA budget is spent.
        RsaBudget = "handshake_rsa_budget";
        /// A newcomer while only the reserve of the RSA budget is left.
        UnderLoad = "handshake_under_load";
        /// The client table is full.
        ServerFull = "handshake_server_full", reject ServerFull;
        /// Its host holds `max_clients_per_ip` sessions already.
        IpFull = "handshake_ip_full", reject ServerFull;
        /// A SESSION_KEY2 while the set of bound handshakes seen is full
        /// of digests whose cookies may still be valid (v2 §3).
        SeenFull = "handshake_seen_full";
        /// The RSA decryption failed.
        RsaDecrypt = "handshake_rsa_decrypt", reject AuthFailed;
        /// A SESSION_KEY2 whose BIND is missing or not its datagram's COOKIE:
        /// made for another address or an older cookie epoch (v2 §3).
        BindMismatch = "handshake_bind_mismatch", reject BadCookie;
        /// A SESSION_KEY2 plaintext that breaks the handshake TLV rules
        /// (framing, a type twice, FERNET_KEY missing or of the wrong size,
        /// a CAPS or CREDENTIAL of the wrong size).
        BadHandshake = "handshake_bad_plaintext", reject AuthFailed;
        /// The plaintext holds no valid Fernet key.
        BadFernetKey = "handshake_bad_fernet_key", reject AuthFailed;
        /// The access token is missing or wrong.
        BadAccessToken = "handshake_bad_access_token", reject AuthFailed;
        /// With a clients file: no token, or one neither the file nor the
        /// shared `--token-file` knows (v2 §5).
        UnknownCredential = "handshake_unknown_credential", reject AuthFailed;
        /// Not a valid Fernet token under the member's key.
        BadToken = "token_bad";
        /// A token plaintext with broken TLV framing.
        InnerFraming = "token_inner_framing";
        /// A token plaintext without SEQ, or with a field of the wrong size.
        InnerBadField = "token_inner_bad_field";
        /// A token plaintext with a type twice.
        InnerDuplicate = "token_inner_duplicate";
        /// A SEQ seen before or older than the window.
        Replay = "token_replay";
        /// A token only the server sends, sent back to it.
        Reflected = "token_reflected";
        /// A DATA token without a BODY.
        NoBody = "token_no_body";
        /// DATA from a client whose permissions do not include publishing.
        Forbidden = "forbidden", reject Forbidden;
        /// A KEY_REQUEST or PROBE from a client outside group mode.
        NotGroupMember = "group_not_member";
        /// A KEY_REQUEST within a second of the last one answered for
        /// that member.
        KeyRequestLimited = "group_key_request_limited";
        /// A message too large to relay within the protocol's limits.
        Oversize = "oversize";
        [
            /// A fragment or a partial message dropped by reassembly.
            Reassembly(ReassemblyDrop) = "reassembly";
        ]
    }
}

impl Drop {
    /// The cause's `stats` name (without the `drop_` prefix).
    pub fn name(self) -> &'static str {
        static NAMES: OnceLock<Vec<String>> = OnceLock::new();
        let names = NAMES.get_or_init(|| Drop::ALL.iter().map(Drop::to_string).collect());
        names.get(self.index()).map_or("", String::as_str)
    }
}

impl From<WireError> for Drop {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Framing => Drop::Framing,
            WireError::BadFragment => Drop::BadFragment,
            WireError::BadReject => Drop::BadReject,
            WireError::BadGroupData => Drop::BadGroupData,
        }
    }
}

impl From<InnerError> for Drop {
    fn from(e: InnerError) -> Self {
        match e {
            InnerError::Malformed => Drop::InnerFraming,
            InnerError::BadField => Drop::InnerBadField,
            InnerError::Duplicate => Drop::InnerDuplicate,
        }
    }
}

impl From<OpenError> for Drop {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::BadToken => Drop::BadToken,
            OpenError::Malformed(e) => e.into(),
            OpenError::Replay => Drop::Replay,
            OpenError::Reflected => Drop::Reflected,
        }
    }
}

impl From<ReassemblyDrop> for Drop {
    fn from(r: ReassemblyDrop) -> Self {
        Drop::Reassembly(r)
    }
}

impl Relay {
    /// Counts `n` inputs dropped for `why`, logs it, and answers the turn's
    /// source with the REJECT `why` maps to (`turn` is None for drops no
    /// datagram caused, such as expiry).
    pub(super) fn dropped(
        &mut self,
        turn: Option<&mut Turn>,
        why: Drop,
        n: usize,
        out: &mut Transmits,
    ) {
        if n == 0 {
            return;
        }
        self.stats.count(why, n as u64);
        // Within a budget of lines per second, so a flood cannot flood the log.
        if log::log_enabled!(log::Level::Debug) && self.drop_log.try_take(self.clock) {
            match &turn {
                Some(t) => log::debug!("dropped from {}: {why} ×{n}", t.src),
                None => log::debug!("dropped: {why} ×{n}"),
            }
        }
        if let (Some(turn), Some(reason)) = (turn, why.reject()) {
            self.reject(turn, reason, out);
        }
    }

    /// Queues a REJECT for the turn's source: one per datagram at most, and
    /// only within the per-source and global REJECT limits.
    fn reject(&mut self, turn: &mut Turn, reason: RejectReason, out: &mut Transmits) {
        if std::mem::replace(&mut turn.rejected, true) {
            return;
        }
        let (now, dst) = (self.clock, turn.src);
        // Both limits: per source so one address cannot farm REJECTs, and
        // global so many spoofed sources cannot turn us into a reflector.
        if self.reject_limiter.try_take(now, &dst) && self.reject_budget.try_take(now) {
            let d = wire::reject_datagram(reason);
            out.push(dst, &d);
            self.stats.rejects_sent += 1;
            self.stats.datagrams_out += 1;
            self.stats.bytes_out += d.len() as u64;
        } else {
            self.stats.rejects_suppressed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, d) in Drop::ALL.iter().enumerate() {
            assert_eq!(d.index(), i, "{d}");
        }
        let mut names: Vec<&str> = Drop::ALL.iter().map(|d| d.name()).collect();
        assert!(names.iter().all(|n| !n.is_empty()));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Drop::COUNT, "names are unique");
        assert_eq!(
            Drop::Reassembly(ReassemblyDrop::TooLarge).name(),
            "reassembly_too_large"
        );
        assert_eq!(Drop::Stranger.reject(), Some(RejectReason::UnknownSession));
        assert_eq!(Drop::RsaBudget.reject(), None);
    }
}
