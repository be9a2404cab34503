//! The relay's counters and gauges in the Prometheus text exposition
//! format, version 0.0.4, for admin `stats prometheus` and `mcrelay stats
//! --prometheus` (a node exporter's textfile collector or a cron job can
//! scrape it).
//!
//! The input is the very list of `name value` pairs the plain `stats`
//! command prints, so both views always show the same numbers. [`METRICS`]
//! maps each plain name onto a metric family (`mcrelay_` prefix, counters
//! ending in `_total`) and, where several plain counters are one family
//! told apart by a label, onto its label value; every `drop_<cause>`
//! counter becomes `mcrelay_dropped_total{cause="<cause>"}`. A plain name
//! the table does not know yet is still exported, as an `untyped` metric
//! named after it, so a new counter is never silently missing.

use std::fmt::Write as _;

/// Prometheus metric types used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only ever goes up (since start).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A plain counter no entry of [`METRICS`] describes.
    Untyped,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Untyped => "untyped",
        }
    }
}

/// How one plain `stats` name is exported.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// The plain name, as `stats` prints it.
    pub plain: &'static str,
    /// The family it belongs to.
    pub family: &'static str,
    /// The label that tells it apart within its family, if any.
    pub label: Option<(&'static str, &'static str)>,
    /// Counter or gauge.
    pub kind: Kind,
    /// The family's `# HELP` text (the first entry of a family gives it).
    pub help: &'static str,
}

const fn counter(plain: &'static str, family: &'static str, help: &'static str) -> Metric {
    Metric {
        plain,
        family,
        label: None,
        kind: Kind::Counter,
        help,
    }
}

const fn gauge(plain: &'static str, family: &'static str, help: &'static str) -> Metric {
    Metric {
        plain,
        family,
        label: None,
        kind: Kind::Gauge,
        help,
    }
}

const fn labelled(
    plain: &'static str,
    family: &'static str,
    label: (&'static str, &'static str),
    help: &'static str,
) -> Metric {
    Metric {
        plain,
        family,
        label: Some(label),
        kind: Kind::Counter,
        help,
    }
}

/// The family of every `drop_<cause>` counter.
pub const DROPPED: &str = "mcrelay_dropped_total";
const DROPPED_HELP: &str =
    "Inputs the relay dropped, by cause (the drop_<cause> lines of the admin stats command).";
const LEFT: &str = "mcrelay_sessions_ended_total";
const LEFT_HELP: &str = "Client sessions ended, by reason.";
const ADMIN_CLOSED: &str = "mcrelay_admin_sessions_closed_total";
const ADMIN_CLOSED_HELP: &str = "Admin sessions the relay closed, by reason.";
const FED_DROPPED: &str = "mcrelay_federation_dropped_total";
const FED_DROPPED_HELP: &str = "Federation messages dropped, by cause.";

/// Every plain `stats` name the exposition knows (the `drop_` ones aside).
pub const METRICS: &[Metric] = &[
    counter(
        "group_data_sent",
        "mcrelay_group_data_sent_total",
        "Signed GROUP_DATA datagrams sent to a downlink (one per interface).",
    ),
    counter(
        "rekeys",
        "mcrelay_group_rekeys_total",
        "Fresh group keys drawn because a member left.",
    ),
    counter(
        "ratchets",
        "mcrelay_group_ratchets_total",
        "Join ratchet steps of the group key.",
    ),
    counter(
        "key_requests_answered",
        "mcrelay_group_key_requests_answered_total",
        "KEY_REQUESTs answered with GROUP_KEY tokens.",
    ),
    counter(
        "probes_answered",
        "mcrelay_group_probes_answered_total",
        "Downlink probes sent to the group.",
    ),
    gauge(
        "members_group",
        "mcrelay_group_members",
        "Clients served through the group downlink.",
    ),
    gauge(
        "group_epoch",
        "mcrelay_group_epoch",
        "The group key's epoch.",
    ),
    gauge(
        "uptime",
        "mcrelay_uptime_seconds",
        "Seconds since the relay started.",
    ),
    gauge("clients", "mcrelay_clients", "Clients with a live session."),
    gauge(
        "reassembly_bytes",
        "mcrelay_reassembly_bytes",
        "Bytes held in partial messages awaiting their fragments.",
    ),
    counter(
        "datagrams_in",
        "mcrelay_datagrams_received_total",
        "UDP datagrams received.",
    ),
    counter(
        "bytes_in",
        "mcrelay_received_bytes_total",
        "Bytes of UDP datagrams received.",
    ),
    counter(
        "datagrams_out",
        "mcrelay_datagrams_sent_total",
        "UDP datagrams queued for sending.",
    ),
    counter(
        "bytes_out",
        "mcrelay_sent_bytes_total",
        "Bytes of UDP datagrams queued for sending.",
    ),
    counter(
        "send_errors",
        "mcrelay_send_errors_total",
        "Datagrams the socket refused to send.",
    ),
    counter(
        "hellos_answered",
        "mcrelay_hellos_answered_total",
        "HELLOs answered with the server key and a cookie.",
    ),
    counter(
        "handshakes_completed",
        "mcrelay_handshakes_completed_total",
        "Handshakes that ended in a WELCOME.",
    ),
    counter(
        "welcomes_resent",
        "mcrelay_welcomes_resent_total",
        "WELCOMEs sent again for a repeated SESSION_KEY.",
    ),
    counter(
        "rejects_sent",
        "mcrelay_rejects_sent_total",
        "REJECT datagrams sent.",
    ),
    counter(
        "rejects_suppressed",
        "mcrelay_rejects_suppressed_total",
        "REJECTs not sent because of the REJECT rate limits.",
    ),
    counter(
        "fragments_in",
        "mcrelay_fragments_received_total",
        "FRAGMENTs received from clients.",
    ),
    counter(
        "fragments_out",
        "mcrelay_fragments_sent_total",
        "FRAGMENT datagrams sent.",
    ),
    counter(
        "reassembled",
        "mcrelay_messages_reassembled_total",
        "Messages reassembled from fragments.",
    ),
    counter(
        "messages_relayed",
        "mcrelay_messages_relayed_total",
        "Messages received from clients and relayed.",
    ),
    counter(
        "deliveries",
        "mcrelay_deliveries_total",
        "Relayed copies sent, one per receiver.",
    ),
    labelled("clients_left", LEFT, ("reason", "bye"), LEFT_HELP),
    labelled("clients_timed_out", LEFT, ("reason", "timeout"), LEFT_HELP),
    labelled("clients_kicked", LEFT, ("reason", "kicked"), LEFT_HELP),
    gauge(
        "admin_sessions",
        "mcrelay_admin_sessions",
        "Open admin sessions.",
    ),
    counter(
        "admin_sessions_total",
        "mcrelay_admin_sessions_opened_total",
        "Admin sessions accepted.",
    ),
    labelled(
        "admin_closed_abuse",
        ADMIN_CLOSED,
        ("reason", "abuse"),
        ADMIN_CLOSED_HELP,
    ),
    labelled(
        "admin_closed_bad_auth",
        ADMIN_CLOSED,
        ("reason", "bad_auth"),
        ADMIN_CLOSED_HELP,
    ),
    counter(
        "admin_reply_waits",
        "mcrelay_admin_reply_waits_total",
        "Times an admin session's commands waited for it to read its replies.",
    ),
    counter(
        "log_lines_dropped",
        "mcrelay_log_lines_dropped_total",
        "Log lines admin sessions lost because they read too slowly.",
    ),
    counter(
        "federation_published",
        "mcrelay_federation_published_total",
        "Federation messages written to NATS.",
    ),
    counter(
        "federation_received",
        "mcrelay_federation_received_total",
        "Federation messages accepted from NATS.",
    ),
    labelled(
        "federation_dropped_malformed",
        FED_DROPPED,
        ("cause", "malformed"),
        FED_DROPPED_HELP,
    ),
    labelled(
        "federation_dropped_unsealed",
        FED_DROPPED,
        ("cause", "unsealed"),
        FED_DROPPED_HELP,
    ),
    labelled(
        "federation_dropped_replayed",
        FED_DROPPED,
        ("cause", "replayed"),
        FED_DROPPED_HELP,
    ),
    labelled(
        "federation_dropped_own",
        FED_DROPPED,
        ("cause", "own"),
        FED_DROPPED_HELP,
    ),
    labelled(
        "federation_dropped_overflow",
        FED_DROPPED,
        ("cause", "overflow"),
        FED_DROPPED_HELP,
    ),
    labelled(
        "federation_dropped_oversize",
        FED_DROPPED,
        ("cause", "oversize"),
        FED_DROPPED_HELP,
    ),
    labelled(
        "federation_dropped_too_many_relays",
        FED_DROPPED,
        ("cause", "too_many_relays"),
        FED_DROPPED_HELP,
    ),
    labelled(
        "federation_dropped_members_full",
        FED_DROPPED,
        ("cause", "members_full"),
        FED_DROPPED_HELP,
    ),
    counter(
        "federation_reconnects",
        "mcrelay_federation_reconnects_total",
        "NATS connections established after the first.",
    ),
    counter(
        "federation_server_errors",
        "mcrelay_federation_server_errors_total",
        "-ERR lines from NATS servers.",
    ),
    gauge(
        "federation_buffered",
        "mcrelay_federation_buffered",
        "Federation messages waiting for a NATS server.",
    ),
    gauge(
        "federation_connected",
        "mcrelay_federation_connected",
        "1 while the federation link is subscribed on a NATS server.",
    ),
];

/// How `plain` is exported: its table entry, a `drop_` family member, or
/// an untyped metric of its own.
pub fn metric_for(plain: &str) -> Metric {
    if let Some(m) = METRICS.iter().find(|m| m.plain == plain) {
        return *m;
    }
    if plain.starts_with("drop_") {
        return Metric {
            plain: "",
            family: DROPPED,
            label: None,
            kind: Kind::Counter,
            help: DROPPED_HELP,
        };
    }
    Metric {
        plain: "",
        family: "",
        label: None,
        kind: Kind::Untyped,
        help: "A relay counter (its admin stats name, with the mcrelay_ prefix).",
    }
}

/// One metric family on its way out: samples as `(labels, value)`.
struct Family {
    name: String,
    kind: Kind,
    help: &'static str,
    samples: Vec<(String, u64)>,
}

/// Renders `stats` lines (`name`, `value`) as exposition text, families in
/// the order their first member comes, each once with its `# HELP` and
/// `# TYPE` before its samples. `version` becomes
/// `mcrelay_build_info{version="..."} 1`.
pub fn render<'a>(lines: impl IntoIterator<Item = (&'a str, u64)>, version: &str) -> String {
    let mut families: Vec<Family> = Vec::new();
    for (plain, value) in lines {
        let m = metric_for(plain);
        let (name, labels) = if let Some(cause) = plain.strip_prefix("drop_") {
            (m.family.to_string(), label_set(&[("cause", cause)]))
        } else if m.kind == Kind::Untyped {
            (format!("mcrelay_{}", sanitize(plain)), String::new())
        } else {
            let labels = m.label.map(|l| label_set(&[l])).unwrap_or_default();
            (m.family.to_string(), labels)
        };
        match families.iter_mut().find(|f| f.name == name) {
            Some(f) => f.samples.push((labels, value)),
            None => families.push(Family {
                name,
                kind: m.kind,
                help: m.help,
                samples: vec![(labels, value)],
            }),
        }
    }
    let mut out = String::new();
    for f in &families {
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
        for (labels, value) in &f.samples {
            let _ = writeln!(out, "{}{labels} {value}", f.name);
        }
    }
    let info = "mcrelay_build_info";
    let _ = writeln!(
        out,
        "# HELP {info} The relay's version, as a label; the value is always 1."
    );
    let _ = writeln!(out, "# TYPE {info} gauge");
    let _ = writeln!(out, "{info}{} 1", label_set(&[("version", version)]));
    out
}

/// `{a="x",b="y"}` with values escaped as the format requires.
fn label_set(labels: &[(&str, &str)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

/// HELP text escapes only backslash and newline.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A metric name from a plain name: anything outside `[a-zA-Z0-9_:]`
/// becomes `_` (the plain names are already of that alphabet).
fn sanitize(plain: &str) -> String {
    plain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::drop::Drop;
    use crate::relay::stats::Stats;

    /// Every counter `Stats` has is described by the table (a new one must
    /// get a proper name and help text, not the untyped fallback).
    #[test]
    fn every_stats_counter_has_a_metric() {
        let mut unknown = Vec::new();
        Stats::default().for_each(|name, _| {
            if metric_for(name).kind == Kind::Untyped {
                unknown.push(name.to_string());
            }
        });
        crate::federation::members::LinkStats::default().for_each(|name, _| {
            let name = format!("federation_{name}");
            if metric_for(&name).kind == Kind::Untyped {
                unknown.push(name);
            }
        });
        assert!(unknown.is_empty(), "no METRICS entry for {unknown:?}");
        for m in METRICS {
            assert!(m.family.starts_with("mcrelay_"), "{}", m.family);
            assert_eq!(
                m.kind == Kind::Counter,
                m.family.ends_with("_total"),
                "{}",
                m.family
            );
            assert!(!m.help.is_empty());
        }
    }

    #[test]
    fn renders_families_once_with_labels() {
        let drops = [Drop::Framing, Drop::BadCookie];
        let lines = [
            ("clients".to_string(), 3),
            ("messages_relayed".to_string(), 7),
            ("clients_left".to_string(), 1),
            (format!("drop_{}", drops[0].name()), 4),
            ("clients_kicked".to_string(), 2),
            (format!("drop_{}", drops[1].name()), 5),
            ("brand-new".to_string(), 9),
        ];
        let text = render(lines.iter().map(|(n, v)| (n.as_str(), *v)), "1.2.3");
        let expect = "\
# HELP mcrelay_clients Clients with a live session.
# TYPE mcrelay_clients gauge
mcrelay_clients 3
# HELP mcrelay_messages_relayed_total Messages received from clients and relayed.
# TYPE mcrelay_messages_relayed_total counter
mcrelay_messages_relayed_total 7
# HELP mcrelay_sessions_ended_total Client sessions ended, by reason.
# TYPE mcrelay_sessions_ended_total counter
mcrelay_sessions_ended_total{reason=\"bye\"} 1
mcrelay_sessions_ended_total{reason=\"kicked\"} 2
";
        assert!(text.starts_with(expect), "{text}");
        assert!(text.contains(
            "# TYPE mcrelay_dropped_total counter\n\
             mcrelay_dropped_total{cause=\"wire_framing\"} 4\n\
             mcrelay_dropped_total{cause=\"handshake_bad_cookie\"} 5\n"
        ));
        assert!(text.contains("# TYPE mcrelay_brand_new untyped\nmcrelay_brand_new 9\n"));
        assert!(text.ends_with("mcrelay_build_info{version=\"1.2.3\"} 1\n"));
        assert_eq!(text.matches("# TYPE mcrelay_dropped_total").count(), 1);
    }

    #[test]
    fn escapes() {
        assert_eq!(label_set(&[("v", "a\\b\"c\nd")]), "{v=\"a\\\\b\\\"c\\nd\"}");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
        assert_eq!(sanitize("a-b.c:d_9"), "a_b_c:d_9");
    }
}
