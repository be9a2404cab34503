//! `mcrelay serve --config FILE` and `--print-config` over the real binary:
//! every key accepted, unknown keys and bad values refused naming the key
//! and its line, command-line flags overriding the file, the printed
//! configuration reading back as itself, and a relay started from a file.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mcrelay-config-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `serve ARGS --print-config`, which must succeed: key → value text.
fn effective(args: &[&str]) -> Vec<(String, String)> {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    all.push("--print-config");
    let (st, out, err) = run(&all);
    assert!(st.success(), "{all:?}: {err}");
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(" = ").unwrap_or_else(|| panic!("{l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn value(cfg: &[(String, String)], key: &str) -> String {
    cfg.iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no key {key}"))
        .1
        .clone()
}

/// A config that sets every key (the one `--print-config` lists, commented
/// or not) to a value other than its default where that is harmless.
fn every_key(dir: &Path) -> String {
    let (_, out, _) = run(&["serve", "--print-config"]);
    let keys: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim_start_matches("# ").split_once(" = "))
        .map(|(k, _)| k.to_string())
        .collect();
    let mut text = String::new();
    for k in &keys {
        let v = match k.as_str() {
            "group" => "[\"239.255.0.99\"]".to_string(),
            "port" => "0".into(),
            "iface" => "[\"127.0.0.1\"]".into(),
            "recv-buffer" => "262144".into(),
            "max-datagram" => "1100".into(),
            "key-file" => format!("\"{}\"", s(&dir.join("key.pem"))),
            "rsa-bits" => "3072".into(),
            "token-file" => format!("\"{}\"", s(&dir.join("token"))),
            "clients-file" => format!("\"{}\"", s(&dir.join("clients"))),
            "no-group-mode" => "true".into(),
            "downlink" => "[\"239.255.0.98:40000\"]".into(),
            "ttl" => "2".into(),
            "client-timeout" => "33".into(),
            "max-clients" => "77".into(),
            "max-clients-per-ip" => "7".into(),
            "handshake-rate" => "6".into(),
            "handshake-burst" => "11".into(),
            "rsa-rate" => "99".into(),
            "reassembly-partials" => "9".into(),
            "reassembly-client-bytes" => "262145".into(),
            "reassembly-total-bytes" => "8388609".into(),
            "reassembly-message-bytes" => "65537".into(),
            "reassembly-age" => "11".into(),
            // Not federated: user and password exclude a token file, and a
            // federated start is tests/federation.rs's.
            "federate" => "[]".into(),
            "federation-key-file" => format!("\"{}\"", s(&dir.join("federation.key"))),
            "relay-name" => "\"office-1\"".into(),
            "federation-subject" => "\"mcrelay.test\"".into(),
            "announce-period" => "7".into(),
            "nats-user" => "\"relay\"".into(),
            "nats-password-file" => format!("\"{}\"", s(&dir.join("nats-pass"))),
            "nats-token-file" => format!("\"{}\"", s(&dir.join("nats-token"))),
            "admin-bind" => "\"127.0.0.1\"".into(),
            "admin-port" => "0".into(),
            "no-admin" => "false".into(),
            "admin-max-sessions" => "5".into(),
            "admin-token-file" => format!("\"{}\"", s(&dir.join("admin-token"))),
            "admin-insecure" => "true".into(),
            "log-level" => "\"debug\"".into(),
            "log-ring" => "512".into(),
            other => panic!("a key this test does not know: {other}"),
        };
        text.push_str(&format!("{k} = {v}\n"));
    }
    text
}

#[test]
fn every_key_is_accepted_and_a_relay_starts_from_the_file() {
    let dir = tempdir("every");
    fs::write(dir.join("token"), "shared-token\n").unwrap();
    fs::write(dir.join("admin-token"), "admin-token\n").unwrap();
    let (st, _, err) = run(&[
        "client",
        "add",
        "alice",
        "--clients-file",
        s(&dir.join("clients")),
    ]);
    assert!(st.success(), "{err}");
    let text = every_key(&dir);
    let file = dir.join("mcrelay.toml");
    fs::write(&file, &text).unwrap();
    // Every key set in the file is what the relay would use.
    let cfg = effective(&["--config", s(&file)]);
    for line in text.lines() {
        let (k, v) = line.split_once(" = ").unwrap();
        assert_eq!(value(&cfg, k), v, "{k}");
    }
    assert_eq!(cfg.len(), text.lines().count());
    // The help lists no flag the file cannot set (bar the config's own).
    let (_, help, _) = run(&["serve", "--help"]);
    for flag in help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|f| !["config", "print-config"].contains(f))
    {
        assert!(cfg.iter().any(|(k, _)| k == flag), "no key for --{flag}");
    }

    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--config", s(&file)]);
    let server = Server::spawn(cmd);
    for want in [
        "clients file",
        "1 named clients",
        "created key file",
        "server key RSA-3072, at most 99 decryptions/s",
        "admin listening on 127.0.0.1:",
    ] {
        assert!(
            server.find_log(want).is_some(),
            "{want}:\n{}",
            server.log_text()
        );
    }
    // log-level = "debug" took effect; the shared token is required.
    let mut c = server.client_with(mcrelay::ClientOptions {
        access_token: Some(b"shared-token".to_vec()),
        ..Default::default()
    });
    c.connect(DEADLINE)
        .expect("handshake with the file's token");
    let mut a = server.admin();
    assert_eq!(a.cmd("stats").1, "ERR auth required");
    a.ok("auth admin-token");
    assert_eq!(a.stat("clients"), 1);
    drop(server);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn command_line_flags_override_the_file() {
    let dir = tempdir("override");
    let file = dir.join("c.toml");
    fs::write(
        &file,
        "client-timeout = 30\nport = 6001\niface = [\"127.0.0.1\", \"lo\"]\nno-admin = true\n\
         log-level = \"warn\"\n",
    )
    .unwrap();
    let cfg = effective(&["--config", s(&file)]);
    assert_eq!(value(&cfg, "client-timeout"), "30");
    assert_eq!(value(&cfg, "iface"), "[\"127.0.0.1\", \"lo\"]");
    assert_eq!(value(&cfg, "no-admin"), "true");
    // Before or after --config, the command line wins; a list given on the
    // command line replaces the file's list.
    for args in [
        vec![
            "--config",
            s(&file),
            "--client-timeout",
            "45",
            "--iface",
            "eth0",
        ],
        vec![
            "--client-timeout",
            "45",
            "--iface",
            "eth0",
            "--config",
            s(&file),
        ],
    ] {
        let cfg = effective(&args);
        assert_eq!(value(&cfg, "client-timeout"), "45");
        assert_eq!(value(&cfg, "iface"), "[\"eth0\"]");
        assert_eq!(value(&cfg, "port"), "6001");
        assert_eq!(value(&cfg, "log-level"), "\"warn\"");
    }
    // A relay really runs with the overrides (the harness's own --port 0,
    // --iface and --log-level beat the file's).
    let server = Server::start(&["--config", s(&file), "--admin-port", "0"]);
    assert!(
        server.find_log("admin listening").is_none(),
        "no-admin from the file"
    );
    let mut c = server.client();
    c.send(b"hi").unwrap();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn printed_config_reads_back_as_itself() {
    let dir = tempdir("roundtrip");
    let file = dir.join("printed.toml");
    let args = [
        "--group",
        "239.1.2.3",
        "--group",
        "ff05::9",
        "--iface",
        "0.0.0.0",
        "--iface",
        "br-lan",
        "--token-file",
        "/etc/mcrelay/we\"ird path",
        "--no-admin",
        "--log-level",
        "trace",
        "--rsa-bits",
        "4096",
    ];
    let mut all = vec!["serve"];
    all.extend_from_slice(&args);
    all.push("--print-config");
    let (st, printed, err) = run(&all);
    assert!(st.success(), "{err}");
    fs::write(&file, &printed).unwrap();
    let (st, again, err) = run(&["serve", "--config", s(&file), "--print-config"]);
    assert!(st.success(), "{err}");
    assert_eq!(printed, again);
    // The defaults alone read back too.
    let (_, defaults, _) = run(&["serve", "--print-config"]);
    fs::write(&file, &defaults).unwrap();
    let (_, again, _) = run(&["serve", "--config", s(&file), "--print-config"]);
    assert_eq!(defaults, again);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_keys_and_bad_values_are_one_line_errors() {
    let dir = tempdir("bad");
    let file = dir.join("c.toml");
    for (text, want) in [
        (
            "port = 5007\nfrobnicate = 1\n",
            "line 2: unknown key 'frobnicate'",
        ),
        (
            "client_timeout = 5\n",
            "line 1: unknown key 'client_timeout' (did you mean 'client-timeout'?)",
        ),
        (
            "\n\nclient-timeout = 0\n",
            "line 3: client-timeout 0 is outside 1..=86400",
        ),
        ("port = 70000\n", "line 1: bad value '70000' for port"),
        (
            "group = [\"10.0.0.1\"]\n",
            "line 1: group 10.0.0.1 is not a multicast address",
        ),
        (
            "no-admin = 1\n",
            "line 1: no-admin: expected true or false, not an integer",
        ),
        (
            "max-clients = \"many\"\n",
            "line 1: bad value 'many' for max-clients",
        ),
        (
            "log-level = [\"info\"]\n",
            "line 1: log-level: expected a string or an integer, not an array",
        ),
        (
            "rsa-bits = 1024\n",
            "line 1: rsa-bits 1024: 2048, 3072 or 4096",
        ),
        ("port = 1\nport = 2\n", "line 2"),
        ("port = [1\n", "line 1"),
        (
            "config = \"other.toml\"\n",
            "'config' is a command-line flag only",
        ),
    ] {
        fs::write(&file, text).unwrap();
        let (st, out, err) = run(&["serve", "--config", s(&file), "--print-config"]);
        assert!(!st.success(), "{text:?} accepted: {out}");
        assert_eq!(err.lines().count(), 1, "{text:?}: {err}");
        assert!(err.contains(&format!("config file {}", s(&file))), "{err}");
        assert!(err.contains(want), "{text:?}: {err}");
    }
    let (st, _, err) = run(&["serve", "--config", s(&dir.join("missing.toml"))]);
    assert!(!st.success());
    assert!(
        err.contains("missing.toml") && err.lines().count() == 1,
        "{err}"
    );
    // A bad flag on the command line is still named as a flag.
    fs::write(&file, "port = 5007\n").unwrap();
    let (st, _, err) = run(&[
        "serve",
        "--config",
        s(&file),
        "--port",
        "x",
        "--print-config",
    ]);
    assert!(!st.success());
    assert!(err.contains("for --port"), "{err}");
    fs::remove_dir_all(dir).unwrap();
}

/// SIGHUP with `--config`: the file is read again; the log level and the
/// client timeout apply at once and are logged; a key that needs a restart
/// is logged as such; a file that no longer parses keeps the running
/// configuration.
#[test]
fn sighup_rereads_the_config_file() {
    let dir = tempdir("reload");
    let cfg = dir.join("relay.toml");
    let write = |text: &str| fs::write(&cfg, text).unwrap();
    write("log-level = \"info\"\nclient-timeout = 60\niface = [\"127.0.0.1\"]\n");
    let mut cmd = Command::new(bin());
    cmd.args([
        "serve",
        "--port",
        "0",
        "--admin-port",
        "0",
        "--config",
        s(&cfg),
    ]);
    let mut server = Server::spawn(cmd);
    assert!(server.find_log("DEBUG").is_none());

    write("log-level = \"debug\"\nclient-timeout = 30\niface = [\"127.0.0.1\"]\nmax-datagram = 1000\n");
    signal(&server, libc::SIGHUP);
    server.wait_log("SIGHUP: log-level: \"info\" -> \"debug\"", DEADLINE);
    server.wait_log("SIGHUP: client-timeout: 60 -> 30", DEADLINE);
    server.wait_log("max-datagram: 1200 -> 1000 (needs a restart)", DEADLINE);
    // Debug lines now reach stderr: a stranger's datagram is one.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let end = std::time::Instant::now() + DEADLINE;
    while server.find_log("[DEBUG]").is_none() {
        assert!(std::time::Instant::now() < end, "{}", server.log_text());
        sock.send_to(&[0, 5, 0, 1, 0], server.addr()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    write("log-level = \"loud\"\n");
    signal(&server, libc::SIGHUP);
    server.wait_log("keeping the running configuration", DEADLINE);
    let _ = fs::remove_dir_all(&dir);
}
