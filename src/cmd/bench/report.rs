//! The benchmark's output: a side-by-side text table (one column per relay
//! binary and delivery mode, medians over the runs) or one JSON object with
//! every run.

use std::path::Path;

use super::footprint::{self, Footprint};
use super::limit::{Limit, Rate};
use super::load::Outcome;
use super::{median, Opts, Variant};
use crate::cmd::json::{self, Obj};

/// How a metric is shown in the text table.
#[derive(Clone, Copy)]
enum Fmt {
    /// A rate or count, with thousands separators.
    Count,
    /// A share shown as a percentage, one decimal.
    Percent,
    /// A small share (loss) shown as a percentage, three decimals.
    Loss,
    /// Nanoseconds shown as microseconds.
    Micros,
    /// Seconds.
    Secs,
    /// Microseconds, two decimals.
    Us,
    /// Nanoseconds, no decimals.
    Ns,
    /// A plain ratio.
    Ratio,
}

/// Every metric of a run: JSON key, text label, format.
const METRICS: [(&str, &str, Fmt); 29] = [
    ("deliveries_per_s", "deliveries/s", Fmt::Count),
    ("messages_per_s", "messages/s", Fmt::Count),
    ("loss", "loss", Fmt::Loss),
    ("lost", "  deliveries lost", Fmt::Count),
    ("expected", "  deliveries expected", Fmt::Count),
    ("client_drops", "  datagrams clients refused", Fmt::Count),
    ("group_held", "  group datagrams held for a key", Fmt::Count),
    ("group_hold_full", "  lost to a full hold queue", Fmt::Count),
    ("key_requests", "  key requests", Fmt::Count),
    ("latency_p50_ns", "latency p50", Fmt::Micros),
    ("latency_p99_ns", "latency p99", Fmt::Micros),
    ("latency_p999_ns", "latency p99.9", Fmt::Micros),
    ("latency_samples", "  latency samples", Fmt::Count),
    ("server_cpu_s", "server CPU", Fmt::Secs),
    ("server_cpu_share", "  share of a core", Fmt::Percent),
    ("server_user_cpu_s", "  user", Fmt::Secs),
    ("server_system_cpu_s", "  system", Fmt::Secs),
    (
        "server_user_us_per_message",
        "server user per message",
        Fmt::Us,
    ),
    (
        "server_user_ns_per_delivery",
        "server user per delivery",
        Fmt::Ns,
    ),
    (
        "deliveries_per_server_cpu_s",
        "deliveries/server-CPU-s",
        Fmt::Count,
    ),
    ("ratio_to_limit", "  / plain-loop limit", Fmt::Ratio),
    ("bench_cpu_share", "bench CPU (cores)", Fmt::Percent),
    (
        "busiest_bench_thread_share",
        "  busiest bench thread",
        Fmt::Percent,
    ),
    ("others_cpu_share", "other processes (cores)", Fmt::Percent),
    ("churn_joins", "churn joins", Fmt::Count),
    ("churn_leaves", "churn leaves", Fmt::Count),
    ("churn_joins_per_s", "  joins/s", Fmt::Count),
    ("churn_failed", "  joins failed", Fmt::Count),
    (
        "stable_lost",
        "stable receivers' deliveries lost",
        Fmt::Count,
    ),
];

/// A run's metrics in [`METRICS`] order (None: not measured).
fn values(o: &Outcome, limit: Option<&Limit>) -> Vec<Option<f64>> {
    let q = |p| o.latency.quantile(p).map(|v| v as f64);
    let per_cpu = o.per_server_cpu_sec();
    vec![
        Some(o.deliveries_per_sec()),
        Some(o.messages_per_sec()),
        Some(o.loss()),
        Some(o.expected_total.saturating_sub(o.received_total) as f64),
        Some(o.expected_total as f64),
        Some(o.dropped as f64),
        Some(o.held as f64),
        Some(o.hold_full as f64),
        Some(o.key_requests as f64),
        q(0.5),
        q(0.99),
        q(0.999),
        Some(o.latency.count() as f64),
        o.server_cpu,
        o.server_cpu.map(|c| c / o.secs),
        o.server_user,
        o.server_system,
        o.user_us_per_message(),
        o.user_ns_per_delivery(),
        per_cpu,
        per_cpu.zip(limit).map(|(p, l)| p / l.plain.per_cpu_sec),
        Some(o.bench_cpu / o.secs),
        Some(o.busiest_thread),
        o.others_cpu.map(|c| c / o.secs),
        o.churn.map(|c| c.joins as f64),
        o.churn.map(|c| c.leaves as f64),
        o.churn.map(|c| c.joins as f64 / o.secs),
        o.churn.map(|c| c.failed as f64),
        o.churn
            .map(|_| o.expected_total.saturating_sub(o.received_total) as f64),
    ]
}

/// The metric named `key` among `values`.
fn get(values: &[Option<f64>], key: &str) -> Option<f64> {
    let i = METRICS.iter().position(|(k, _, _)| *k == key)?;
    values.get(i).copied().flatten()
}

/// Element-wise medians of several runs' metrics.
fn medians(runs: &[Vec<Option<f64>>]) -> Vec<Option<f64>> {
    (0..METRICS.len())
        .map(|i| {
            let m = median(runs.iter().filter_map(|r| r[i]));
            (!m.is_nan()).then_some(m)
        })
        .collect()
}

fn show(v: Option<f64>, f: Fmt) -> String {
    let Some(v) = v else { return "-".into() };
    match f {
        Fmt::Count => thousands(v.round() as u64),
        Fmt::Percent => format!("{:.1} %", v * 100.0),
        Fmt::Loss => format!("{:.3} %", v * 100.0).replace(".000 %", " %"),
        Fmt::Micros => format!("{:.0} µs", v / 1000.0),
        Fmt::Secs => format!("{v:.2} s"),
        Fmt::Us => format!("{v:.2} µs"),
        Fmt::Ns => format!("{v:.0} ns"),
        Fmt::Ratio => format!("{v:.2}"),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line per finished run, for the progress output.
pub fn one_line(o: &Outcome) -> String {
    let v = values(o, None);
    let mut line = format!(
        "{} deliveries/s, loss {}, p99 {}, {} deliveries/server-CPU-s, server user {} system {} ({} user/message), bench busiest thread {}, others {}",
        show(get(&v, "deliveries_per_s"), Fmt::Count),
        show(get(&v, "loss"), Fmt::Loss),
        show(get(&v, "latency_p99_ns"), Fmt::Micros),
        show(get(&v, "deliveries_per_server_cpu_s"), Fmt::Count),
        show(get(&v, "server_user_cpu_s"), Fmt::Secs),
        show(get(&v, "server_system_cpu_s"), Fmt::Secs),
        show(get(&v, "server_user_us_per_message"), Fmt::Us),
        show(get(&v, "busiest_bench_thread_share"), Fmt::Percent),
        show(get(&v, "others_cpu_share"), Fmt::Percent),
    );
    if let Some(c) = o.churn {
        line.push_str(&format!(
            ", churn {} joins {} leaves {} failed",
            c.joins, c.leaves, c.failed
        ));
    }
    line
}

fn describe(o: &Opts) -> String {
    let l = &o.load;
    let mode = match l.rate {
        Some(r) => format!("open loop at {} messages/s", thousands(r as u64)),
        None => format!("closed loop, window {} per sender", l.window),
    };
    let span = match l.messages {
        Some(m) => format!("{m} messages"),
        None => format!("{} s", l.duration.as_secs_f64()),
    };
    let churn = l.churn.as_ref().map_or(String::new(), |c| {
        format!(
            ", churn {} joins/s staying {} s",
            c.rate,
            c.stay.as_secs_f64()
        )
    });
    format!(
        "{} sender(s) -> {} clients{}, {}-byte bodies, {mode}, {span} measured after {} s warm-up, {} receiver threads{churn}, median of {} run(s)",
        l.senders,
        l.clients,
        if l.passive > 0 {
            format!(" ({} passive)", l.passive)
        } else {
            String::new()
        },
        l.body,
        l.warmup.as_secs_f64(),
        l.threads,
        o.runs
    )
}

/// The relay benchmark's report.
pub fn relay(o: &Opts, variants: &[Variant], results: &[Vec<Outcome>], limit: Option<&Limit>) {
    let per_run: Vec<Vec<Vec<Option<f64>>>> = results
        .iter()
        .map(|runs| runs.iter().map(|r| values(r, limit)).collect())
        .collect();
    let meds: Vec<Vec<Option<f64>>> = per_run.iter().map(|r| medians(r)).collect();
    if o.json {
        let metrics_obj = |v: &[Option<f64>]| {
            METRICS
                .iter()
                .zip(v)
                .fold(Obj::new(), |obj, ((k, _, _), v)| obj.opt(k, *v))
                .finish()
        };
        let servers = variants
            .iter()
            .zip(&meds)
            .zip(&per_run)
            .map(|((v, m), runs)| {
                Obj::new()
                    .str("server", &v.server)
                    .str("delivery", v.delivery())
                    .raw("median", metrics_obj(m))
                    .raw("runs", json::array(runs.iter().map(|r| metrics_obj(r))))
                    .finish()
            });
        let l = &o.load;
        let obj = Obj::new()
            .str("mode", "relay")
            .num("clients", l.clients as f64)
            .num("passive", l.passive as f64)
            .num("senders", l.senders as f64)
            .num("body_bytes", l.body as f64)
            .str("loop", if l.rate.is_some() { "open" } else { "closed" })
            .num("window", l.window as f64)
            .opt("rate", l.rate)
            .num("duration_s", l.duration.as_secs_f64())
            .opt("messages", l.messages.map(|m| m as f64))
            .num("warmup_s", l.warmup.as_secs_f64())
            .num("threads", l.threads as f64)
            .opt("churn_rate", l.churn.as_ref().map(|c| c.rate))
            .opt(
                "churn_stay_s",
                l.churn.as_ref().map(|c| c.stay.as_secs_f64()),
            )
            .num("runs", o.runs as f64)
            .raw("servers", json::array(servers))
            .raw("limit", limit.map_or("null".into(), limit_json));
        println!("{}", obj.finish());
        return;
    }
    println!("mcrelay bench: {}", describe(o));
    println!();
    let width = variants
        .iter()
        .map(|v| v.label.chars().count())
        .max()
        .unwrap_or(0)
        .max(14);
    print!("{:<34}", "");
    for v in variants {
        print!("  {:>width$}", v.label);
    }
    println!();
    for (i, (key, label, f)) in METRICS.iter().enumerate() {
        if *key == "ratio_to_limit" && limit.is_none() {
            continue;
        }
        if meds.iter().all(|m| m[i].is_none())
            && (key.starts_with("churn_") || key.starts_with("stable_"))
        {
            continue;
        }
        print!("{label:<34}");
        for m in &meds {
            print!("  {:>width$}", show(m[i], *f));
        }
        println!();
    }
    if let Some(l) = limit {
        println!();
        print_limit(l);
    }
}

fn rate_json(r: &Rate) -> String {
    Obj::new()
        .num("per_cpu_s", r.per_cpu_sec)
        .num("per_s", r.per_sec)
        .finish()
}

fn limit_json(l: &Limit) -> String {
    Obj::new()
        .raw("plain", rate_json(&l.plain))
        .raw("batched", rate_json(&l.batched))
        .num("batch", mcrelay::BATCH as f64)
        .raw(
            "runs",
            json::array(l.runs.iter().map(|(n, r)| {
                Obj::new()
                    .str("loop", n)
                    .num("per_cpu_s", r.per_cpu_sec)
                    .num("per_s", r.per_sec)
                    .finish()
            })),
        )
        .finish()
}

fn print_limit(l: &Limit) {
    let per = |r: &Rate| 1e6 / r.per_cpu_sec;
    println!(
        "limit, one core, Fernet encrypt + send (medians):  plain sendto {} deliveries/CPU-s ({:.2} µs each)  |  sendmmsg x{} {} deliveries/CPU-s ({:.2} µs each)",
        thousands(l.plain.per_cpu_sec as u64),
        per(&l.plain),
        mcrelay::BATCH,
        thousands(l.batched.per_cpu_sec as u64),
        per(&l.batched),
    );
}

/// The `--limit` report.
pub fn limit(o: &Opts, l: &Limit) {
    if o.json {
        let obj = Obj::new()
            .str("mode", "limit")
            .num("body_bytes", o.load.body as f64)
            .num("sinks", o.load.clients as f64)
            .num("secs_per_run", o.limit_secs)
            .raw("limit", limit_json(l));
        println!("{}", obj.finish());
        return;
    }
    println!(
        "mcrelay bench --limit: {}-byte bodies to {} sinks, {} run(s) of {} s per loop",
        o.load.body, o.load.clients, o.runs, o.limit_secs
    );
    for (name, r) in &l.runs {
        println!(
            "  {name:<8} {:>10} deliveries/CPU-s  {:>10} deliveries/s",
            thousands(r.per_cpu_sec as u64),
            thousands(r.per_sec as u64)
        );
    }
    print_limit(l);
}

/// The `--footprint` report.
pub fn footprint(o: &Opts, exe: &Path, f: &Footprint) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    if o.json {
        let obj = Obj::new()
            .str("mode", "footprint")
            .str("binary", &exe.display().to_string())
            .num("binary_bytes", f.binary_bytes as f64)
            .num("max_binary_bytes", footprint::MAX_BINARY as f64)
            .num("idle_rss_kib", f.idle_rss_kib as f64)
            .num("max_idle_rss_kib", footprint::MAX_IDLE_RSS_KIB as f64)
            .num("clients", f.clients as f64)
            .num("clients_rss_kib", f.clients_rss_kib as f64)
            .num("max_clients_rss_kib", footprint::MAX_CLIENTS_RSS_KIB as f64)
            .num("handshake_s", f.handshake_secs)
            .bool("ok", f.violations().is_empty());
        println!("{}", obj.finish());
        return;
    }
    println!("mcrelay bench --footprint: {}", exe.display());
    println!(
        "  binary            {:>8.2} MiB  (limit {:.1} MiB)",
        mib(f.binary_bytes),
        mib(footprint::MAX_BINARY)
    );
    println!(
        "  idle RSS          {:>8.2} MiB  (limit {:.1} MiB; 2048-bit key)",
        f.idle_rss_kib as f64 / 1024.0,
        footprint::MAX_IDLE_RSS_KIB as f64 / 1024.0
    );
    println!(
        "  RSS, {:>5} clients {:>7.2} MiB  (limit {:.1} MiB for 1000; handshakes took {:.1} s)",
        f.clients,
        f.clients_rss_kib as f64 / 1024.0,
        footprint::MAX_CLIENTS_RSS_KIB as f64 / 1024.0,
        f.handshake_secs
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_a_value() {
        assert_eq!(values(&Outcome::default(), None).len(), METRICS.len());
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(show(Some(0.0), Fmt::Loss), "0 %");
        assert_eq!(show(Some(0.00125), Fmt::Loss), "0.125 %");
        assert_eq!(show(Some(0.5), Fmt::Percent), "50.0 %");
        assert_eq!(show(Some(1_500_000.0), Fmt::Micros), "1500 µs");
        assert_eq!(show(None, Fmt::Count), "-");
        assert_eq!(show(Some(12.345), Fmt::Us), "12.35 µs");
        assert_eq!(show(Some(812.4), Fmt::Ns), "812 ns");
    }
}
