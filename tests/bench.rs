//! `mcrelay bench` end to end, tiny and quick: that each mode runs and
//! prints what scripts read from `--json`. No performance claim is checked
//! here (that is the benchmark's job); only that the benchmark works.

use std::process::Command;

fn bench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcrelay"))
        .arg("bench")
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .expect("run mcrelay bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The number after `"key":` in a JSON text.
fn number(json: &str, key: &str) -> f64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"));
    let rest = &json[at + key.len() + 3..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || ".-e".contains(c)))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

#[test]
fn relay_mode_drives_a_started_relay() {
    let (ok, json, err) = bench(&[
        "--clients",
        "3",
        "--runs",
        "1",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--limit-secs",
        "0.05",
    ]);
    assert!(ok, "{err}");
    assert!(json.starts_with("{\"mode\":\"relay\""), "{json}");
    assert!(number(&json, "deliveries_per_s") > 0.0, "{json}");
    assert!(
        number(&json, "deliveries_per_server_cpu_s") >= 0.0,
        "{json}"
    );
    assert!(number(&json, "latency_p99_ns") > 0.0, "{json}");
    assert!(
        number(&json, "per_cpu_s") > 0.0,
        "the limit is measured: {json}"
    );
}

/// Group mode: the receivers get every message through one signed
/// multicast datagram on the downlink (loopback), and nothing is lost.
#[test]
fn group_mode_delivers_through_the_downlink() {
    let (ok, json, err) = bench(&[
        "--group-mode",
        "--clients",
        "3",
        "--runs",
        "1",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--no-limit",
    ]);
    assert!(ok, "{err}");
    assert!(number(&json, "deliveries_per_s") > 0.0, "{json}");
    assert!(number(&json, "loss") < 0.5, "most messages arrive: {json}");
}

/// Both delivery modes in one run, side by side, with clients joining and
/// leaving meanwhile: each column reports the relay's user and system CPU
/// apart, and the churn's joins and leaves; the stable receivers lose
/// (almost) nothing.
#[test]
fn modes_side_by_side_with_churn() {
    let (ok, json, err) = bench(&[
        "--compare-modes",
        "--churn",
        "20",
        "--churn-stay",
        "0.2",
        "--clients",
        "3",
        "--runs",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--no-limit",
    ]);
    assert!(ok, "{err}");
    let per = json
        .find("\"delivery\":\"per-recipient\"")
        .unwrap_or_else(|| panic!("{json}"));
    let group = json
        .find("\"delivery\":\"group\"")
        .unwrap_or_else(|| panic!("{json}"));
    assert!(per < group, "{json}");
    for column in [&json[per..group], &json[group..]] {
        assert!(number(column, "deliveries_per_s") > 0.0, "{column}");
        assert!(number(column, "server_user_cpu_s") >= 0.0, "{column}");
        assert!(number(column, "server_system_cpu_s") >= 0.0, "{column}");
        assert!(number(column, "server_cpu_s") >= 0.0, "{column}");
        assert!(
            number(column, "churn_joins") > 0.0,
            "churners joined: {column}"
        );
        assert!(
            number(column, "churn_leaves") > 0.0,
            "churners left: {column}"
        );
        assert!(number(column, "loss") < 0.5, "{column}");
    }
    assert_eq!(number(&json, "churn_rate"), 20.0, "{json}");
}

/// Every flag the parser knows is documented in --help, and the help
/// names nothing the parser refuses.
#[test]
fn help_documents_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_mcrelay"))
        .args(["bench", "--help"])
        .output()
        .expect("run mcrelay bench --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let flags = [
        "--target",
        "--server-pid",
        "--server-exe",
        "--server-arg",
        "--clients",
        "--passive",
        "--senders",
        "--body",
        "--duration",
        "--messages",
        "--warmup",
        "--window",
        "--rate",
        "--threads",
        "--nap-us",
        "--runs",
        "--group-mode",
        "--modes",
        "--compare-modes",
        "--churn",
        "--churn-stay",
        "--limit",
        "--footprint",
        "--federation",
        "--help",
        "--limit-secs",
        "--no-limit",
        "--footprint-clients",
        "--json",
        "--quiet",
    ];
    for f in flags {
        assert!(
            help.lines().any(|l| l.split_whitespace().any(|w| w == f)),
            "{f} is not documented:\n{help}"
        );
    }
    let documented = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches([',', ';', ')', '.']))
        .filter(|w| {
            w.chars()
                .skip(2)
                .all(|c| c.is_ascii_lowercase() || c == '-')
        });
    for f in documented {
        assert!(flags.contains(&f), "{f} in --help is not a bench flag");
    }
}

#[test]
fn open_loop_keeps_its_rate() {
    let (ok, json, err) = bench(&[
        "--clients",
        "2",
        "--runs",
        "1",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
        "--rate",
        "200",
    ]);
    assert!(ok, "{err}");
    let rate = number(&json, "messages_per_s");
    // Loose: this checks the pacing logic, not the machine.
    assert!(
        (100.0..=300.0).contains(&rate),
        "{rate} messages/s for --rate 200"
    );
}

#[test]
fn limit_mode_measures_both_loops() {
    let (ok, json, err) = bench(&["--limit", "--runs", "1", "--limit-secs", "0.05"]);
    assert!(ok, "{err}");
    assert!(
        json.contains("\"plain\":{") && json.contains("\"batched\":{"),
        "{json}"
    );
}

#[test]
fn footprint_mode_reports_size_and_memory() {
    // A debug build is over the size limit, so the exit status is not checked.
    let (_, json, err) = bench(&["--footprint", "--footprint-clients", "3"]);
    assert!(json.contains("\"mode\":\"footprint\""), "{json}{err}");
    assert!(number(&json, "binary_bytes") > 0.0);
    assert!(number(&json, "idle_rss_kib") > 0.0);
    assert!(number(&json, "clients_rss_kib") > 0.0);
}

#[test]
fn bad_flags_are_refused() {
    let (ok, _, err) = bench(&["--body", "4"]);
    assert!(!ok && err.contains("--body 4 is too small"), "{err}");
    let (ok, _, err) = bench(&["--target", "127.0.0.1:1", "--server-exe", "x"]);
    assert!(!ok && err.contains("exclude each other"), "{err}");
    let (ok, _, err) = bench(&["--modes", "group,unicast"]);
    assert!(
        !ok && err.contains("'unicast' is not a delivery mode"),
        "{err}"
    );
    let (ok, _, err) = bench(&["--group-mode", "--compare-modes"]);
    assert!(!ok && err.contains("exclude each other"), "{err}");
    let (ok, _, err) = bench(&["--churn", "0"]);
    assert!(!ok && err.contains("--churn must be"), "{err}");
}
