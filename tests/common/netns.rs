//! Network namespaces for the tests that need real links (multicast between
//! two hosts, IPv6 link-local groups, interfaces that come and go): two
//! namespaces joined by a veth pair, deleted on drop. Needs root and
//! iproute2, as CI has.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{is_log_line, DEADLINE};

/// Two network namespaces, `relay` and `peer`, with loopback up in both
/// and a veth pair between them (`relay_if` in `relay`, `peer_if` in
/// `peer`), both ends up and without addresses. Separate namespaces,
/// because Linux drops a datagram whose source is one of the receiving
/// host's own addresses.
pub struct Hosts {
    /// The namespace the relay runs in.
    pub relay: String,
    /// The other host.
    pub peer: String,
}

impl Hosts {
    /// `tag` keeps the namespaces of tests running in parallel apart;
    /// `sysctls` (`key=value`) are set in both namespaces before the veth
    /// pair exists, so its interfaces inherit the `default` ones.
    pub fn create(tag: &str, relay_if: &str, peer_if: &str, sysctls: &[&str]) -> Hosts {
        let relay = format!("mcrelay-{tag}r{}", std::process::id());
        let peer = format!("mcrelay-{tag}p{}", std::process::id());
        sh(&["ip", "netns", "add", &relay]);
        let hosts = Hosts { relay, peer };
        sh(&["ip", "netns", "add", &hosts.peer]);
        for ns in [&hosts.relay, &hosts.peer] {
            for s in sysctls {
                exec(ns, &format!("sysctl -qw {s}"));
            }
            exec(ns, "ip link set lo up");
        }
        hosts.veth(relay_if, peer_if);
        hosts
    }

    /// Another veth pair between the two, both ends up.
    pub fn veth(&self, relay_if: &str, peer_if: &str) {
        sh(&[
            "ip",
            "link",
            "add",
            relay_if,
            "netns",
            &self.relay,
            "type",
            "veth",
            "peer",
            "name",
            peer_if,
            "netns",
            &self.peer,
        ]);
        exec(&self.relay, &format!("ip link set {relay_if} up"));
        exec(&self.peer, &format!("ip link set {peer_if} up"));
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.relay, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `argv`; it must succeed (the namespaces need root). Returns stdout.
pub fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("iproute2 (ip) is needed for this test");
    assert!(
        out.status.success(),
        "{argv:?} failed (this test needs root for network namespaces): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` (split at spaces) in namespace `ns`; it must succeed.
pub fn exec(ns: &str, cmd: &str) -> String {
    let mut argv = vec!["ip", "netns", "exec", ns];
    argv.extend(cmd.split(' '));
    sh(&argv)
}

/// `program` to run inside namespace `ns`.
pub fn command(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// The index of interface `name` in namespace `ns`.
pub fn if_index(ns: &str, name: &str) -> u32 {
    exec(ns, &format!("cat /sys/class/net/{name}/ifindex"))
        .trim()
        .parse()
        .unwrap()
}

/// The link-local IPv6 address of `name` in `ns`, once it has one.
pub fn link_local(ns: &str, name: &str) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        let out = exec(ns, &format!("ip -6 -o addr show dev {name} scope link"));
        if let Some(a) = out.split_whitespace().find(|w| w.starts_with("fe80:")) {
            return a.split('/').next().unwrap().to_string();
        }
        assert!(Instant::now() < end, "no link-local address on {name}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One admin command run from inside namespace `ns` (the admin channel
/// listens on that namespace's loopback); the reply's lines, without the
/// greeting, log lines and the final OK.
pub fn admin_in(ns: &str, port: u16, cmd: &str) -> Vec<String> {
    const SCRIPT: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while not out.endswith(b"\nOK\n") and b"ERR" not in out:
    chunk = s.recv(4096)
    if not chunk:
        break
    out += chunk
sys.stdout.write(out.decode())
"#;
    let out = command(ns, "python3")
        .args(["-c", SCRIPT, &port.to_string(), cmd])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1) // the greeting
        .filter(|l| !is_log_line(l) && *l != "OK")
        .map(str::to_string)
        .collect()
}
