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
}
