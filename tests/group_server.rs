//! Group mode over real sockets: the `mcrelay serve` binary, a v2 member
//! made by hand on a raw UDP socket (HELLO, SESSION_KEY2 sealed to the
//! SERVER_KEY of the answer, WELCOME), its downlink socket joined to the
//! group on loopback, and a v1 client sending. The message must arrive on
//! the downlink as one signed GROUP_DATA that opens with the key of the
//! WELCOME. Also: `--downlink` equal to the uplink is refused at start.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, DEADLINE};
use mcrelay::fernet::{encode_key, FernetKey};
use mcrelay::group::GroupMember;
use mcrelay::wire::handshake::{Handshake, CAP_GROUP, CAP_RAW};
use mcrelay::wire::outer::{Datagram, Item, TokenKind};
use mcrelay::wire::tlv::{self, Reader};
use mcrelay::wire::{outer, Inner, MIN_HELLO_LEN};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::PublicKey;

/// The downlink group of these tests (the relay's own is .77).
const DOWNLINK_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 78);

/// A socket bound to a free port, joined to the downlink group on loopback.
fn downlink_socket() -> UdpSocket {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
        .unwrap();
    s.join_multicast_v4(&DOWNLINK_GROUP, &Ipv4Addr::LOCALHOST)
        .unwrap();
    s.into()
}

/// Receives until `pick` accepts a datagram or the deadline passes.
fn recv_until<T>(s: &UdpSocket, mut pick: impl FnMut(&[u8]) -> Option<T>) -> Option<T> {
    let end = Instant::now() + DEADLINE;
    let mut buf = vec![0u8; 65536];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let Ok(n) = s.recv(&mut buf) else { continue };
        if let Some(t) = pick(&buf[..n]) {
            return Some(t);
        }
    }
    None
}

/// The value of the first TLV of `kind` in `d`.
fn value_of(d: &[u8], kind: u16) -> Option<Vec<u8>> {
    Reader::new(d)
        .map_while(Result::ok)
        .find(|t| t.kind == kind)
        .map(|t| t.value.to_vec())
}

/// A v2 member made by hand: the WELCOME's group view and downlink.
struct Member {
    group: GroupMember,
    downlink: SocketAddr,
    id: String,
}

/// The bound handshake over `sock` with the relay at `server`.
fn handshake(sock: &UdpSocket, server: SocketAddr) -> Member {
    sock.connect(server).unwrap();
    let mut hello = Vec::new();
    tlv::put(
        &mut hello,
        outer::HELLO,
        &[&[1u8][..], &[0; MIN_HELLO_LEN - 5]].concat(),
    );
    assert_eq!(hello.len(), MIN_HELLO_LEN);
    sock.send(&hello).unwrap();
    let answer = recv_until(sock, |d| value_of(d, outer::SERVER_KEY).map(|_| d.to_vec()))
        .expect("SERVER_KEY + COOKIE");
    assert_eq!(value_of(&answer, outer::VERSIONS), Some(vec![1, 2]));
    assert!(answer.len() <= 3 * hello.len());
    let der = value_of(&answer, outer::SERVER_KEY).unwrap();
    let cookie = value_of(&answer, outer::COOKIE).unwrap();

    let key_text = encode_key(&rand::random());
    let mut plain = Vec::new();
    Handshake {
        fernet_key: key_text.as_bytes(),
        bind: cookie.as_slice().try_into().unwrap(),
        caps: CAP_GROUP | CAP_RAW,
        credential: None,
    }
    .emit(&mut plain);
    let ct = PublicKey::from_public_key_der(&der)
        .unwrap()
        .oaep_encrypt::<Sha256>(&plain)
        .unwrap();
    let mut d = Vec::new();
    tlv::put(&mut d, outer::COOKIE, &cookie);
    tlv::put(&mut d, outer::SESSION_KEY2, &ct);
    sock.send(&d).unwrap();

    let key = FernetKey::from_base64(&key_text).unwrap();
    let welcome = recv_until(sock, |d| {
        let parsed = Datagram::parse(d).ok()?;
        let first = parsed.items().next();
        match first {
            Some(Item::Token(TokenKind::Welcome, t)) => key.open(t).ok(),
            _ => None,
        }
    })
    .expect("WELCOME");
    let w = Inner::parse(&welcome).unwrap();
    assert_eq!(w.caps, Some(CAP_GROUP | CAP_RAW));
    let (epoch, group_key) = w.group_key.expect("GROUP_KEY");
    let signer = w.group_signer.expect("GROUP_SIGNER");
    Member {
        group: GroupMember::new(signer, epoch, group_key).unwrap(),
        downlink: w.group_addr.expect("GROUP_ADDR"),
        id: String::from_utf8(w.client_id.unwrap().to_vec()).unwrap(),
    }
}

#[test]
fn a_v1_message_reaches_a_v2_member_as_one_signed_group_datagram() {
    let down = downlink_socket();
    let port2 = down.local_addr().unwrap().port();
    let downlink = format!("{DOWNLINK_GROUP}:{port2}");
    let server = Server::start(&["--downlink", &downlink]);

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut member = handshake(&sock, server.addr());
    assert_eq!(member.downlink, downlink.parse::<SocketAddr>().unwrap());
    assert_eq!(member.id, sock.local_addr().unwrap().to_string());

    // A client outside group mode (served one by one, as a v1 client is).
    let mut v1 = server.client_with(mcrelay::ClientOptions {
        group: false,
        ..mcrelay::ClientOptions::default()
    });
    v1.connect(DEADLINE).expect("handshake");
    let v1_id = v1.id().unwrap().to_string();
    assert!(v1.send(b"over the downlink").unwrap());
    // The v1 client's PEER_JOINED comes first, then the message.
    let opened = recv_until(&down, |d| {
        let value = value_of(d, outer::GROUP_DATA)?;
        let plain = member.group.open(Instant::now(), &value).ok()?;
        let m = Inner::parse(&plain).ok()?;
        (m.body == Some(&b"over the downlink"[..])).then(|| m.sender_id.map(<[u8]>::to_vec))
    })
    .expect("the message on the downlink");
    assert_eq!(opened, Some(v1_id.into_bytes()));

    let stats = server.admin().ok("stats");
    let stat = |name: &str| -> u64 {
        stats
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in stats"))
            .parse()
            .unwrap()
    };
    // The v1 client's join and its message: two GROUP_DATA, one member.
    assert_eq!(stat("group_data_sent"), 2);
    assert_eq!(stat("members_group"), 1);
    assert_eq!(stat("ratchets"), 1);
    assert_eq!(stat("send_errors"), 0);
    let clients = server.admin().ok("clients");
    assert!(
        clients.iter().any(|l| l.ends_with(" mode=group")),
        "{clients:?}"
    );
    assert!(
        clients.iter().any(|l| l.ends_with(" mode=v2")),
        "{clients:?}"
    );
}

#[test]
fn a_downlink_equal_to_the_uplink_is_refused_at_start() {
    let port = UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(common::bin())
        .args(["serve", "--no-admin", "--iface", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .args(["--downlink", &format!("239.255.0.77:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the uplink GROUP:PORT"), "{err}");
}
