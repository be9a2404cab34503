//! Admin `stats prometheus` and `mcrelay stats` against the real server,
//! the exposition checked by a strict parser of the Prometheus text format
//! 0.0.4 written here (no promtool on the test machines).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use mcrelay::RelayDrop;

/// One parsed sample.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: families by name (with their type and help) and
/// samples in order.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    helps: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

/// Parses `{a="x",b="y"}` starting at `rest` (after the metric name);
/// returns the labels and what follows the closing brace.
fn parse_labels(rest: &str, line: usize) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = rest.strip_prefix('{') else {
        return (labels, rest);
    };
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let eq = rest
            .find('=')
            .unwrap_or_else(|| panic!("line {line}: label without '='"));
        let name = &rest[..eq];
        assert!(is_label_name(name), "line {line}: bad label name {name:?}");
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("line {line}: label value not quoted"));
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => panic!("line {line}: unterminated label value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("line {line}: bad escape {other:?}"),
                },
                Some((_, '\n')) => panic!("line {line}: raw newline in a label value"),
                Some((_, c)) => value.push(c),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "line {line}: label {name} twice"
        );
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else {
            assert!(
                rest.starts_with('}'),
                "line {line}: expected ',' or '}}' after a label"
            );
        }
    }
}

fn parse_value(s: &str, line: usize) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        s => s
            .parse()
            .unwrap_or_else(|_| panic!("line {line}: value {s:?} is not a float")),
    }
}

/// The strict parser: panics, naming the line, on anything the format
/// (version 0.0.4) does not allow or the relay's conventions forbid.
fn parse(text: &str) -> Exposition {
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    let mut e = Exposition::default();
    // Families whose samples have begun, in order; a family may not come back.
    let mut seen_samples: Vec<String> = Vec::new();
    let mut keys = BTreeSet::new();
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        assert!(!l.is_empty(), "line {line}: empty line");
        assert!(!l.ends_with(' '), "line {line}: trailing space");
        if let Some(comment) = l.strip_prefix('#') {
            let mut parts = comment.trim_start_matches(' ').splitn(3, ' ');
            let kw = parts.next().unwrap_or_default();
            let name = parts.next().unwrap_or_default();
            let rest = parts.next().unwrap_or_default();
            assert!(
                kw == "HELP" || kw == "TYPE",
                "line {line}: a comment other than HELP/TYPE: {l}"
            );
            assert!(is_metric_name(name), "line {line}: bad name {name:?}");
            assert!(
                !seen_samples.iter().any(|f| f == name),
                "line {line}: {kw} for {name} after its samples"
            );
            if kw == "HELP" {
                assert!(!rest.is_empty(), "line {line}: empty HELP");
                let mut it = rest.chars();
                while let Some(c) = it.next() {
                    if c == '\\' {
                        assert!(
                            matches!(it.next(), Some('\\' | 'n')),
                            "line {line}: bad escape in HELP"
                        );
                    }
                }
                assert!(
                    e.helps.insert(name.into(), rest.into()).is_none(),
                    "line {line}: second HELP for {name}"
                );
            } else {
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest),
                    "line {line}: bad type {rest:?}"
                );
                assert!(
                    e.types.insert(name.into(), rest.into()).is_none(),
                    "line {line}: second TYPE for {name}"
                );
                if rest == "counter" {
                    assert!(
                        name.ends_with("_total"),
                        "line {line}: counter {name} not *_total"
                    );
                }
            }
            continue;
        }
        let name_end = l.find(['{', ' ']).unwrap_or(l.len());
        let name = &l[..name_end];
        assert!(
            is_metric_name(name),
            "line {line}: bad metric name {name:?}"
        );
        assert!(
            name.starts_with("mcrelay_"),
            "line {line}: {name} lacks the prefix"
        );
        let (labels, rest) = parse_labels(&l[name_end..], line);
        let rest = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("line {line}: no space before the value"));
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or_default(), line);
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("line {line}: bad timestamp {ts:?}"));
        }
        assert!(fields.next().is_none(), "line {line}: junk after the value");
        // The relay has no histograms or summaries, whose samples carry
        // suffixes: a sample's family is its own name.
        let family = name.to_string();
        assert!(
            e.types.contains_key(&family),
            "line {line}: sample of {family} before its TYPE"
        );
        assert!(
            e.helps.contains_key(&family),
            "line {line}: sample of {family} without HELP"
        );
        match seen_samples.last() {
            Some(last) if *last == family => {}
            _ => {
                assert!(
                    !seen_samples.contains(&family),
                    "line {line}: {family}'s samples are not in one group"
                );
                seen_samples.push(family.clone());
            }
        }
        assert!(
            keys.insert(format!("{name}{labels:?}")),
            "line {line}: {name}{labels:?} twice"
        );
        if e.types[&family] == "counter" {
            assert!(value >= 0.0, "line {line}: negative counter");
        }
        e.samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    for name in e.types.keys() {
        assert!(
            seen_samples.contains(name),
            "family {name} has a TYPE but no sample"
        );
    }
    e
}

#[test]
fn the_parser_refuses_what_the_format_forbids() {
    let ok = "# HELP mcrelay_x_total X.\n# TYPE mcrelay_x_total counter\nmcrelay_x_total{a=\"q\\\"\\\\\\n\"} 1\n";
    let e = parse(ok);
    assert_eq!(e.value("mcrelay_x_total", &[("a", "q\"\\\n")]), 1.0);
    for bad in [
        "mcrelay_x_total 1\n",                                                   // no TYPE
        "# TYPE mcrelay_x_total counter\nmcrelay_x_total 1\n",                   // no HELP
        "# HELP mcrelay_x X.\n# TYPE mcrelay_x counter\nmcrelay_x 1\n",           // counter w/o _total
        "# HELP mcrelay_x X.\n# TYPE mcrelay_x gauge\nmcrelay_x one\n",           // value
        "# HELP mcrelay_x X.\n# TYPE mcrelay_x gauge\n# TYPE mcrelay_x gauge\nmcrelay_x 1\n",
        "# HELP mcrelay_x X.\n# TYPE mcrelay_x gauge\nmcrelay_x{a=b} 1\n",          // unquoted
        "# HELP mcrelay_x X.\n# TYPE mcrelay_x gauge\nmcrelay_x{1a=\"b\"} 1\n",     // label name
        "# HELP mcrelay_x X.\n# TYPE mcrelay_x gauge\nmcrelay_x 1",               // no final newline
        "# HELP mcrelay_x X.\n# TYPE mcrelay_x gauge\nmcrelay_x 1\nmcrelay_x 2\n", // duplicate
        "# HELP mcrelay_x X.\n# TYPE mcrelay_x gauge\n# HELP mcrelay_y Y.\n# TYPE mcrelay_y gauge\nmcrelay_x 1\nmcrelay_y 1\nmcrelay_x{a=\"b\"} 1\n",
        "# HELP mcrelay_x X.\n# TYPE mcrelay_x gauge\nmcrelay_x 1\n# HELP mcrelay_x again\n",
        "# HELP 9x X.\n# TYPE 9x gauge\n9x 1\n",
    ] {
        let r = std::panic::catch_unwind(|| parse(bad));
        assert!(r.is_err(), "accepted: {bad:?}");
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mcrelay-prom-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Polls `stat` over an admin session until it reaches `at_least`.
fn wait_stat(a: &mut AdminConn, stat: &str, at_least: u64) {
    let end = Instant::now() + DEADLINE;
    while a.stat(stat) < at_least {
        assert!(Instant::now() < end, "{stat} stayed below {at_least}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stats_prometheus_parses_and_carries_every_counter() {
    let dir = tempdir("scrape");
    let tok = dir.join("admin-token");
    std::fs::write(&tok, "s3cret-admin\n").unwrap();
    let server = Server::start(&["--admin-token-file", tok.to_str().unwrap()]);
    let admin = format!("127.0.0.1:{}", server.admin_port.unwrap());

    // Traffic: three clients, one message, one broken datagram.
    let mut a = server.client();
    let mut b = server.client();
    let mut c = server.client();
    drain(&mut a, Duration::from_millis(300));
    a.send(b"hello").unwrap();
    expect_message(&mut b, b"hello");
    expect_message(&mut c, b"hello");
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    junk.send_to(&[0, 5, 0, 200, 1, 2], server.addr()).unwrap();
    let mut conn = server.admin();
    conn.ok("auth s3cret-admin");
    conn.ok("log off");
    wait_stat(&mut conn, "drop_wire_framing", 1);
    wait_stat(&mut conn, "deliveries", 2);

    let (st, out, err) = run(&[
        "stats",
        "--admin",
        &admin,
        "--admin-token-file",
        tok.to_str().unwrap(),
        "--prometheus",
    ]);
    assert!(st.success(), "{err}");
    assert!(!out.contains("\nOK\n") && !out.ends_with("OK\n"), "{out}");
    let e = parse(&out);
    assert_eq!(e.types["mcrelay_messages_relayed_total"], "counter");
    assert_eq!(e.types["mcrelay_deliveries_total"], "counter");
    assert_eq!(e.types["mcrelay_clients"], "gauge");
    assert_eq!(e.types["mcrelay_dropped_total"], "counter");
    assert!(e.value("mcrelay_messages_relayed_total", &[]) >= 1.0);
    assert!(e.value("mcrelay_deliveries_total", &[]) >= 2.0);
    assert_eq!(e.value("mcrelay_clients", &[]), 3.0);
    assert!(e.value("mcrelay_dropped_total", &[("cause", "wire_framing")]) >= 1.0);
    assert_eq!(
        e.value(
            "mcrelay_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // One label value per drop cause, and nothing untyped: every counter
    // of the plain `stats` has a proper family.
    let causes: BTreeSet<&str> = e
        .samples
        .iter()
        .filter(|s| s.name == "mcrelay_dropped_total")
        .map(|s| s.labels["cause"].as_str())
        .collect();
    let want: BTreeSet<&str> = RelayDrop::ALL.iter().map(|d| d.name()).collect();
    assert_eq!(causes, want);
    assert!(e.types.values().all(|t| t != "untyped"), "{:?}", e.types);
    // Every plain line is there: one sample each (build_info aside), and
    // the drop counters, read later, are no smaller.
    let plain = conn.ok("stats");
    assert_eq!(plain.len(), e.samples.len() - 1, "{plain:?}");
    for l in &plain {
        let (name, v) = l.split_once(' ').unwrap();
        if let Some(cause) = name.strip_prefix("drop_") {
            let p = e.value("mcrelay_dropped_total", &[("cause", cause)]);
            assert!(p <= v.parse::<f64>().unwrap(), "{name}");
        }
    }

    // The admin command itself gives the same shape.
    let direct = conn.ok("stats prometheus").join("\n") + "\n";
    let d = parse(&direct);
    assert_eq!(d.types, e.types);

    // Plain output: `name value` lines, no OK.
    let (st, out, err) = run(&[
        "stats",
        "--admin",
        &admin,
        "--admin-token-file",
        tok.to_str().unwrap(),
    ]);
    assert!(st.success(), "{err}");
    assert!(out.lines().any(|l| l == "clients 3"), "{out}");
    assert!(out.lines().all(|l| l.split(' ').count() == 2), "{out}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn stats_fails_with_one_line() {
    let dir = tempdir("fail");
    let tok = dir.join("admin-token");
    std::fs::write(&tok, "right-token").unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "wrong-token").unwrap();
    let server = Server::start(&["--admin-token-file", tok.to_str().unwrap()]);
    let admin = format!("127.0.0.1:{}", server.admin_port.unwrap());
    let cases: [(&[&str], &str); 4] = [
        (&["--admin", &admin], "auth required"),
        (
            &[
                "--admin",
                &admin,
                "--admin-token-file",
                wrong.to_str().unwrap(),
            ],
            "bad token",
        ),
        (
            &["--admin", "127.0.0.1:1"],
            "cannot reach the admin channel",
        ),
        (&["--admin", "nonsense"], "--admin nonsense"),
    ];
    for (args, want) in cases {
        let mut all = vec!["stats", "--prometheus"];
        all.extend_from_slice(args);
        let (st, out, err) = run(&all);
        assert!(!st.success(), "{all:?}: {out}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{all:?}: {err}");
        assert!(!err.contains("wrong-token"), "{err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
