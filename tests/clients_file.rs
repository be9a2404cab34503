//! `mcrelay client add|remove|list` and `mcrelay serve --clients-file`, run
//! as an operator runs them: the real binary on real files.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{bin, run};
use mcrelay::credentials::token_digest;
use mcrelay::hex;

/// A fresh directory for this test's files.
fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mcrelay-clients-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `client add` on success: the token on stdout, nothing else.
fn add(file: &Path, name: &str, perms: Option<&str>) -> String {
    let mut args = vec!["client", "add", name, "--clients-file", s(file)];
    if let Some(p) = perms {
        args.extend(["--perms", p]);
    }
    let (st, out, err) = run(&args);
    assert!(st.success(), "{err}");
    assert!(err.contains(&format!("added {name}")), "{err}");
    let token = out.trim_end_matches('\n');
    assert_eq!(out.lines().count(), 1, "{out}");
    token.to_string()
}

fn list(file: &Path) -> Vec<String> {
    let (st, out, err) = run(&["client", "list", "--clients-file", s(file)]);
    assert!(st.success(), "{err}");
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// Asserts a failed run with exactly one line on stderr containing `want`.
fn refused(args: &[&str], want: &str) -> String {
    let (st, out, err) = run(args);
    assert!(!st.success(), "{args:?} succeeded: {out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(want), "{args:?}: {err}");
    err
}

#[test]
fn add_list_remove_round_trip() {
    let dir = tempdir("round");
    let file = dir.join("clients");
    let alice = add(&file, "alice", None);
    let sensor = add(&file, "sensor.1", Some("pub"));
    let board = add(&file, "dash_board-2", Some("sub"));
    // Tokens: ≥ 128 random bits as URL-safe text that fits a v2 CREDENTIAL.
    for t in [&alice, &sensor, &board] {
        assert!(t.len() >= 22 && t.len() <= 110, "{t}");
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
    assert_ne!(alice, sensor);
    // Created 0600, holding digests only.
    let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = fs::read_to_string(&file).unwrap();
    for t in [&alice, &sensor, &board] {
        assert!(!text.contains(t.as_str()), "a token leaked into the file");
        assert!(text.contains(&hex(&token_digest(t.as_bytes()))), "{text}");
    }
    assert_eq!(
        list(&file),
        ["alice pubsub", "sensor.1 pub", "dash_board-2 sub"]
    );
    let (st, out, _) = run(&["client", "list", "--clients-file", s(&file)]);
    assert!(st.success());
    for t in [&alice, &sensor, &board] {
        assert!(!out.contains(t.as_str()));
    }
    assert!(!out.contains(&hex(&token_digest(alice.as_bytes()))));

    let (st, _, err) = run(&["client", "remove", "sensor.1", "--clients-file", s(&file)]);
    assert!(st.success(), "{err}");
    assert_eq!(list(&file), ["alice pubsub", "dash_board-2 sub"]);
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    refused(
        &["client", "remove", "sensor.1", "--clients-file", s(&file)],
        "no client named 'sensor.1'",
    );
    // The name is free again, with a new token.
    let again = add(&file, "sensor.1", Some("pub"));
    assert_ne!(again, sensor);
    assert_eq!(list(&file).len(), 3);
    // No temporary files left behind.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let dir = tempdir("bad");
    let file = dir.join("clients");
    add(&file, "alice", None);
    let before = fs::read(&file).unwrap();
    refused(
        &["client", "add", "alice", "--clients-file", s(&file)],
        "has a client named 'alice' already",
    );
    refused(
        &["client", "add", "bad name!", "--clients-file", s(&file)],
        "bad client name",
    );
    refused(
        &["client", "add", &"x".repeat(33), "--clients-file", s(&file)],
        "bad client name",
    );
    refused(
        &[
            "client",
            "add",
            "bob",
            "--perms",
            "all",
            "--clients-file",
            s(&file),
        ],
        "--perms",
    );
    refused(&["client", "add", "bob"], "--clients-file is required");
    refused(
        &["client", "add", "--clients-file", s(&file)],
        "NAME is missing",
    );
    refused(
        &["client", "rename", "a", "--clients-file", s(&file)],
        "unknown action 'rename'",
    );
    assert_eq!(fs::read(&file).unwrap(), before);
    refused(
        &["client", "list", "--clients-file", s(&dir.join("missing"))],
        "clients file",
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn malformed_or_writable_files_are_refused_with_the_line_named() {
    let dir = tempdir("malformed");
    let file = dir.join("clients");
    let d = hex(&token_digest(b"t"));
    let cases = [
        (
            format!("# ok\nalice {d}\nbob {}\n", &d[..60]),
            "line 3: the digest is not 64 hex digits",
        ),
        (
            format!("alice {d} everything\n"),
            "line 1: permissions 'everything'",
        ),
        (format!("\n\nal!ce {d}\n"), "line 3: bad name 'al!ce'"),
        (
            format!("alice {d}\nalice {}\n", hex(&token_digest(b"u"))),
            "line 2: name 'alice' is on line 1 already",
        ),
    ];
    for (text, want) in cases {
        fs::write(&file, &text).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let err = refused(&["client", "list", "--clients-file", s(&file)], want);
        assert!(err.contains(s(&file)), "{err}");
        // Editing a broken file is refused too, and leaves it alone.
        refused(&["client", "add", "zed", "--clients-file", s(&file)], want);
        assert_eq!(fs::read_to_string(&file).unwrap(), text);
    }
    // Readable by all is fine (no secret in it); writable by group or others is not.
    fs::write(&file, format!("alice {d} sub\n")).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(list(&file), ["alice sub"]);
    for mode in [0o664, 0o646] {
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        refused(
            &["client", "list", "--clients-file", s(&file)],
            "is writable by group or others",
        );
        refused(
            &["client", "remove", "alice", "--clients-file", s(&file)],
            "is writable by group or others",
        );
    }
    fs::remove_dir_all(dir).unwrap();
}

/// `mcrelay serve ARGS` must exit non-zero at start with one stderr line
/// containing `want` (it is killed, and the test fails, if it runs on).
fn serve_refused(args: &[&str], want: &str) {
    let mut child = Command::new(bin())
        .args(["serve", "--port", "0", "--iface", "127.0.0.1", "--no-admin"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + common::DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve {args:?} did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(want), "{args:?}: {err}");
}

#[test]
fn serve_checks_the_clients_file_at_start() {
    let dir = tempdir("serve");
    let file = dir.join("clients");
    let alice = add(&file, "alice", None);
    add(&file, "board", Some("sub"));
    let server = common::Server::start(&["--no-admin", "--clients-file", s(&file)]);
    assert!(
        server
            .find_log(&format!("clients file {}: 2 named clients", s(&file)))
            .is_some(),
        "{}",
        server.log_text()
    );
    drop(server);

    let d = hex(&token_digest(b"t"));
    let cases = [
        (
            format!("alice {d}\n# x\nbob {d}x\n"),
            "line 3: the digest is not 64 hex digits",
        ),
        (
            format!("alice {d}\nalice {}\n", hex(&token_digest(b"u"))),
            "line 2: name 'alice' is on line 1 already",
        ),
        (format!("alice {d} root\n"), "line 1: permissions 'root'"),
    ];
    let bad = dir.join("bad");
    for (text, want) in cases {
        fs::write(&bad, text).unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
        serve_refused(&["--clients-file", s(&bad)], want);
        serve_refused(&["--clients-file", s(&bad)], s(&bad));
    }
    fs::set_permissions(&file, fs::Permissions::from_mode(0o620)).unwrap();
    serve_refused(
        &["--clients-file", s(&file)],
        "is writable by group or others (mode 620)",
    );
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    serve_refused(&["--clients-file", s(&dir.join("missing"))], "No such file");
    // The shared token may not also be a named client's.
    let token = dir.join("token");
    fs::write(&token, format!("{alice}\n")).unwrap();
    serve_refused(
        &["--clients-file", s(&file), "--token-file", s(&token)],
        "the --token-file token is also alice's token",
    );
    fs::remove_dir_all(dir).unwrap();
}
