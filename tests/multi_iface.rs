//! `--iface` given twice: one relay joins the group on two networks at
//! once (a router's LAN and its guest VLAN). The two networks are built in
//! network namespaces this test creates (loopback, and a veth pair with
//! documentation addresses to a guest namespace), so no datagram can leave
//! the host.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use common::*;

/// Two network namespaces joined by a veth pair: the relay's host (`lo`
/// plus v0 = 192.0.2.1) and a guest host (v1 = 192.0.2.2). Separate
/// namespaces, because Linux drops a datagram whose source is one of the
/// receiving host's own addresses.
struct Hosts {
    relay: String,
    guest: String,
}

impl Hosts {
    /// `tag` keeps the namespaces of tests running in parallel apart.
    fn create(tag: &str) -> Hosts {
        let relay = format!("mcrelay-{tag}r{}", std::process::id());
        let guest = format!("mcrelay-{tag}g{}", std::process::id());
        run(&["ip", "netns", "add", &relay]);
        let hosts = Hosts { relay, guest };
        run(&["ip", "netns", "add", &hosts.guest]);
        run(&[
            "ip",
            "link",
            "add",
            "v0",
            "netns",
            &hosts.relay,
            "type",
            "veth",
            "peer",
            "name",
            "v1",
            "netns",
            &hosts.guest,
        ]);
        for (ns, cmd) in [
            (&hosts.relay, "ip link set lo up"),
            (&hosts.relay, "ip addr add 192.0.2.1/24 dev v0"),
            (&hosts.relay, "ip link set v0 up"),
            (&hosts.guest, "ip link set lo up"),
            (&hosts.guest, "ip addr add 192.0.2.2/24 dev v1"),
            (&hosts.guest, "ip link set v1 up"),
        ] {
            let mut argv = vec!["ip", "netns", "exec", ns.as_str()];
            argv.extend(cmd.split(' '));
            run(&argv);
        }
        hosts
    }

    /// `program` run inside namespace `ns`.
    fn command(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.relay, &self.guest] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `mcrelay listen` in namespace `ns`, reaching the relay through the group
/// on loopback (TTL 0); its stdout lines arrive on the channel.
fn listen_on_loopback(ns: &str, group: &[&str]) -> (Child, Receiver<String>) {
    let mut child = Hosts::command(ns, bin())
        .arg("listen")
        .args(group)
        .args(["--iface", "127.0.0.1", "--ttl", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_channel(child.stdout.take().unwrap());
    (child, lines)
}

fn run(argv: &[&str]) {
    let st = Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .expect("iproute2 (ip) is needed for this test");
    assert!(
        st.success(),
        "{argv:?} failed (this test needs root for network namespaces)"
    );
}

#[test]
fn one_relay_serves_two_networks_joined_with_two_ifaces() {
    let hosts = Hosts::create("two");
    let mut cmd = Hosts::command(&hosts.relay, bin());
    cmd.args([
        "serve",
        "--port",
        "0",
        "--admin-port",
        "0",
        "--log-level",
        "debug",
    ]);
    cmd.args(["--iface", "127.0.0.1", "--iface", "192.0.2.1"]);
    let mut server = Server::spawn(cmd);
    assert!(
        server
            .find_log("group 239.255.0.77 and ff02::77 on 127.0.0.1, 192.0.2.1")
            .is_some(),
        "{}",
        server.log_text()
    );
    let port = server.port.to_string();
    let group = ["--group", "239.255.0.77", "--port", &port];

    // The listener reaches the relay through the group on the loopback network.
    let (mut listener, lines) = listen_on_loopback(&hosts.relay, &group);
    server.wait_log("joined", DEADLINE);

    // The sender is a guest host: its multicast leaves v1 and arrives on v0.
    let st = Hosts::command(&hosts.guest, bin())
        .arg("send")
        .args(group)
        .args([
            "--iface",
            "192.0.2.2",
            "--ttl",
            "1",
            "hello from the guest network",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let want = "hello from the guest network";
    let end = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.ends_with(want) => {
                assert!(
                    l.starts_with("[192.0.2.2:"),
                    "the sender is known by its guest-network address: {l}"
                );
                break;
            }
            Ok(l) => seen.push(l),
            Err(_) => panic!(
                "no relayed message; listener printed {seen:?}\n{}",
                server.log_text()
            ),
        }
    }
    let _ = listener.kill();
    let _ = listener.wait();
}

/// `mcrelay serve` with no flags at all is a working relay on the defaults
/// (group 239.255.0.77, port 5007, admin 5008, kernel's choice of interface),
/// and `mcrelay send` with no flags reaches it. Run in a fresh namespace
/// whose multicast route is its loopback, so the fixed default ports are free
/// and nothing can leave the host.
#[test]
fn serve_with_no_flags_relays_on_the_defaults() {
    let hosts = Hosts::create("def");
    run(&[
        "ip",
        "netns",
        "exec",
        &hosts.relay,
        "ip",
        "route",
        "add",
        "224.0.0.0/4",
        "dev",
        "lo",
    ]);
    let mut cmd = Hosts::command(&hosts.relay, bin());
    cmd.arg("serve");
    let mut server = Server::spawn(cmd);
    assert_eq!(server.port, 5007);
    assert_eq!(server.admin_port, Some(5008));
    assert!(
        server
            .find_log("group 239.255.0.77 and ff02::77 on any")
            .is_some(),
        "{}",
        server.log_text()
    );

    let (mut listener, lines) = listen_on_loopback(&hosts.relay, &["--group", "239.255.0.77"]);
    server.wait_log("joined", DEADLINE);
    let st = Hosts::command(&hosts.relay, bin())
        .args(["send", "defaults work"])
        .status()
        .unwrap();
    assert!(st.success(), "`mcrelay send` with no flags");
    let end = Instant::now() + DEADLINE;
    let line = loop {
        let left = end.saturating_duration_since(Instant::now());
        let l = lines.recv_timeout(left).expect("relayed message");
        if l.ends_with("defaults work") {
            break l;
        }
    };
    assert!(line.starts_with("[127.0.0.1:"), "{line}");
    let _ = listener.kill();
    let _ = listener.wait();
}
