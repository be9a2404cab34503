//! Named clients over real sockets (protocol v2 §5): a `pub` sensor, a
//! `sub` dashboard and a `pubsub` person, each with its own token from a
//! clients file; who receives what, REJECT 5, names in SENDER_ID and the
//! notices, revocation by editing the file and SIGHUP while connected, and
//! unknown tokens refused with REJECT 2.

#[path = "support/cli.rs"]
mod cli;
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cli::{unicast, Cli};
use common::{drain, expect_event, expect_message, messages, signal, Server, DEADLINE};
use mcrelay::credentials::token_digest;
use mcrelay::wire::{LeaveReason, RejectReason};
use mcrelay::{hex, ClientEvent, ClientOptions, ConnectError, UdpClient};

const SENSOR: &str = "sensor-token-5d1e0c2b9a8f7e6d";
const DASH: &str = "dashboard-token-4c3b2a19f8e7d6c5";
const PERSON: &str = "person-token-3b2a1908f7e6d5c4";
const SIGHUP: i32 = 1;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mcrelay-named-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a clients file of `(name, token, perms)` lines, mode 0600.
fn write_clients(path: &Path, lines: &[(&str, &str, &str)]) {
    let text: String = lines
        .iter()
        .map(|(n, t, p)| format!("{n} {} {p}\n", hex(&token_digest(t.as_bytes()))))
        .collect();
    let tmp = path.with_extension("new");
    fs::write(&tmp, text).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn with_token(server: &Server, token: Option<&str>) -> UdpClient {
    server.client_with(ClientOptions {
        access_token: token.map(|t| t.as_bytes().to_vec()),
        ..ClientOptions::default()
    })
}

fn joined(server: &Server, token: &str) -> UdpClient {
    let mut c = with_token(server, Some(token));
    c.connect(DEADLINE).expect("handshake");
    c
}

fn quiet() -> Duration {
    Duration::from_millis(400)
}

#[test]
fn three_named_clients_with_their_permissions_and_a_revocation() {
    let dir = tempdir("three");
    let file = dir.join("clients");
    let all = [
        ("sensor", SENSOR, "pub"),
        ("dash", DASH, "sub"),
        ("person", PERSON, "pubsub"),
    ];
    write_clients(&file, &all);
    let server = Server::start(&["--clients-file", file.to_str().unwrap()]);

    let mut sensor = joined(&server, SENSOR);
    let mut dash = joined(&server, DASH);
    let mut person = joined(&server, PERSON);
    let id = |c: &UdpClient, name: &str| {
        let id = c.id().unwrap().to_string();
        let port = c.local_addr().unwrap().port();
        assert_eq!(id, format!("{name}@127.0.0.1:{port}"));
        id
    };
    let (s_id, d_id, p_id) = (
        id(&sensor, "sensor"),
        id(&dash, "dash"),
        id(&person, "person"),
    );
    expect_event(&mut dash, "person joined", |e| {
        *e == ClientEvent::PeerJoined(p_id.clone())
    });

    // The sensor publishes; both others read it under its name.
    assert!(sensor.send(b"21.5 C").unwrap());
    assert_eq!(expect_message(&mut dash, b"21.5 C"), s_id);
    assert_eq!(expect_message(&mut person, b"21.5 C"), s_id);
    // The person too; the sensor hears nothing at all.
    assert!(person.send(b"hello dash").unwrap());
    assert_eq!(expect_message(&mut dash, b"hello dash"), p_id);
    // The dashboard may not publish: REJECT 5, and nobody gets it.
    assert!(dash.send(b"let me talk").unwrap());
    expect_event(&mut dash, "REJECT 5", |e| {
        *e == ClientEvent::Rejected(RejectReason::Forbidden)
    });
    assert!(messages(&drain(&mut person, quiet())).is_empty());
    let heard = drain(&mut sensor, quiet());
    assert!(heard.is_empty(), "a pub client receives nothing: {heard:?}");

    let mut admin = server.admin();
    assert_eq!(admin.stat("drop_forbidden"), 1);
    let prom = admin.ok("stats prometheus");
    assert!(
        prom.iter()
            .any(|l| l == "mcrelay_dropped_total{cause=\"forbidden\"} 1"),
        "{prom:?}"
    );
    let lines = admin.ok("clients");
    for (cid, name, perms) in [(&s_id, "sensor", "pub"), (&d_id, "dash", "sub")] {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{cid} "))
                && l.contains(&format!(" name={name} perms={perms} "))),
            "{lines:?}"
        );
    }

    // Unknown and missing tokens: REJECT 2.
    for token in [Some("nobody-knows-this-token-0123"), None] {
        let mut c = with_token(&server, token);
        match c.connect(DEADLINE) {
            Err(ConnectError::Rejected(RejectReason::AuthFailed)) => {}
            other => panic!("{token:?}: {other:?}"),
        }
    }
    // Counted per refused handshake (a client tries twice before it gives up).
    assert!(admin.stat("drop_handshake_unknown_credential") >= 2);

    // The person is removed from the file; SIGHUP ends its session.
    write_clients(&file, &all[..2]);
    signal(&server, SIGHUP);
    let revoked = |id: &str| ClientEvent::PeerLeft {
        id: id.to_string(),
        reason: Some(LeaveReason::Revoked),
    };
    expect_event(&mut person, "its own revocation", |e| *e == revoked(&p_id));
    // It stops by itself instead of handshaking again to be refused.
    match person.recv(DEADLINE) {
        Err(ConnectError::Revoked) => {}
        other => panic!("after its revocation: {other:?}"),
    }
    expect_event(&mut dash, "the person revoked", |e| *e == revoked(&p_id));
    let heard = drain(&mut sensor, quiet());
    assert!(heard.is_empty(), "nothing about others for pub: {heard:?}");
    let mut again = with_token(&server, Some(PERSON));
    match again.connect(DEADLINE) {
        Err(ConnectError::Rejected(RejectReason::AuthFailed)) => {}
        other => panic!("a revoked token: {other:?}"),
    }
    // The others go on.
    assert!(sensor.send(b"22.0 C").unwrap());
    assert_eq!(expect_message(&mut dash, b"22.0 C"), s_id);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn chat_listen_and_the_python_client_present_named_tokens_and_print_names() {
    let dir = tempdir("cli");
    let file = dir.join("clients");
    write_clients(
        &file,
        &[
            ("sensor", SENSOR, "pub"),
            ("dash", DASH, "sub"),
            ("person", PERSON, "pubsub"),
        ],
    );
    let token_file = |name: &str, token: &str| {
        let p = dir.join(name);
        fs::write(&p, format!("{token}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (dash_file, person_file) = (
        token_file("dash.token", DASH),
        token_file("person.token", PERSON),
    );
    let server = Server::start(&["--clients-file", file.to_str().unwrap()]);
    let target = unicast(&server);

    let mut listen = Cli::mcrelay(&["listen", "--server", &target, "--token-file", &dash_file]);
    assert!(listen.connected_id().starts_with("dash@127.0.0.1:"));
    let mut py = Cli::python(&["listen", "--server", &target, "--token-file", &person_file]);
    let mut sensor = joined(&server, SENSOR);
    // Python joined as person (a v1 token after the Fernet key): the
    // dashboard prints its name in the notice.
    listen.expect("python joined", |l| {
        l.starts_with("* person@127.0.0.1:") && l.ends_with(" joined")
    });

    sensor.send(b"21.5 C").unwrap();
    listen.expect_line("[sensor] 21.5 C");
    py.expect_line("[sensor] 21.5 C");

    // The person over chat: a named token there too.
    let mut chat = Cli::chat(&server, &["--token-file", &person_file]);
    assert!(chat.connected_id().starts_with("person@127.0.0.1:"));
    chat.type_line(b"hi from chat\n");
    listen.expect_line("[person] hi from chat");
    py.expect_line("[person] hi from chat");

    // The dashboard is revoked: `listen` says so and exits by itself.
    write_clients(
        &file,
        &[("sensor", SENSOR, "pub"), ("person", PERSON, "pubsub")],
    );
    signal(&server, SIGHUP);
    let (status, stderr) = listen.wait_with_stderr();
    assert!(!status.success());
    assert!(
        stderr.contains("revoked this client's credential"),
        "{stderr}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn ban_and_unban_by_name_and_by_address() {
    let dir = tempdir("ban");
    let file = dir.join("clients");
    write_clients(
        &file,
        &[("dash", DASH, "sub"), ("person", PERSON, "pubsub")],
    );
    let server = Server::start(&["--clients-file", file.to_str().unwrap()]);
    let mut dash = joined(&server, DASH);
    let mut person = joined(&server, PERSON);
    let p_id = person.id().unwrap().to_string();
    let mut admin = server.admin();

    let kicked = |id: &str| ClientEvent::PeerLeft {
        id: id.to_string(),
        reason: Some(LeaveReason::Kicked),
    };
    admin.ok("ban person 600");
    expect_event(&mut person, "its own ban", |e| *e == kicked(&p_id));
    expect_event(&mut dash, "the person banned", |e| *e == kicked(&p_id));
    let bans = admin.ok("bans");
    assert_eq!(bans.len(), 1, "{bans:?}");
    let left: f64 = bans[0].strip_prefix("person ").unwrap().parse().unwrap();
    assert!((590.0..=600.0).contains(&left), "{bans:?}");
    let mut again = with_token(&server, Some(PERSON));
    match again.connect(DEADLINE) {
        Err(ConnectError::Rejected(RejectReason::AuthFailed)) => {}
        other => panic!("a banned name: {other:?}"),
    }
    admin.ok("unban person");
    assert!(admin.ok("bans").is_empty());
    let person = joined(&server, PERSON);

    // An address ban, enforced before RSA: that address is refused, the
    // host's other ports are not.
    let addr = person.local_addr().unwrap();
    let id = person.id().unwrap().to_string();
    admin.ok(&format!("ban {id}"));
    assert_eq!(
        admin.ok("bans"),
        [format!("127.0.0.1:{} until unban", addr.port())]
    );
    let (_, err) = admin.cmd("unban nobody-at-all");
    assert!(err.starts_with("ERR"), "{err}");
    let (_, err) = admin.cmd("ban bad!name");
    assert!(err.starts_with("ERR"), "{err}");
    assert!(admin.stat("drop_handshake_banned") >= 2);
    joined(&server, PERSON);
    let _ = fs::remove_dir_all(&dir);
}
