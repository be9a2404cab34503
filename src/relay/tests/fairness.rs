//! Handshake fairness: one host's share of the RSA budget, the reserve for
//! clients that re-key, and the per-host session cap.

use super::*;

#[test]
fn one_host_on_many_ports_gets_a_quarter_of_the_rsa_budget() {
    // Default limits: 200 RSA/s, so one host gets 50, each port 10 at once.
    let mut net = Net::new(Config::default());
    let [host, other] = hosts_apart(&net, &[], 2)[..] else {
        unreachable!()
    };
    let flood: Vec<(SocketAddr, Vec<u8>)> = (0..100)
        .map(|p| {
            let src = at(host, 2000 + p);
            (src, garbage_session_key(&mut net, src))
        })
        .collect();
    for _ in 0..10 {
        for (src, d) in &flood {
            net.deliver(*src, d);
        }
    }
    let s = net.stats();
    assert_eq!(s.dropped(Drop::RsaDecrypt), 50, "one host's share");
    // Ports whose per-address buckets collide are held by those first.
    let limited = dropped(s, &[Drop::RateLimitedIp, Drop::RateLimitedAddr]);
    assert_eq!(limited, 1000 - 50);
    // Another host is served at once; the flooding host's new port is not.
    let newcomer = net.add_at(at(other, 3000), ClientOptions::default());
    net.connect(newcomer);
    assert!(net.peers[newcomer].core.is_established());
    let same_host = net.add_at(at(host, 3000), ClientOptions::default());
    net.connect(same_host);
    assert!(!net.peers[same_host].core.is_established());
    let s = net.stats();
    let limited = dropped(s, &[Drop::RateLimitedIp, Drop::RateLimitedAddr]);
    assert_eq!(limited, 1000 - 50 + 1);
    // A second later its share has refilled.
    net.advance(SEC);
    net.connect(same_host);
    assert!(net.peers[same_host].core.is_established());
}

#[test]
fn under_load_the_reserve_goes_to_clients_that_re_key() {
    // 8 RSA/s: 2 per host, and the last 2 kept for registered addresses.
    let mut net = Net::new(Config {
        rsa_rate: 8,
        ..Config::default()
    });
    let hosts = hosts_apart(&net, &[], 5);
    let a = net.add_at(at(hosts[0], 1000), ClientOptions::default());
    net.connect(a);
    assert!(net.peers[a].core.is_established());
    // Three hosts flood: 2 + 2 + 1 decryptions, then only the reserve is left.
    for &host in &hosts[1..4] {
        for port in 0..2 {
            let src = at(host, 1000 + port);
            let d = garbage_session_key(&mut net, src);
            net.deliver(src, &d);
        }
    }
    let s = net.stats();
    assert_eq!(s.dropped(Drop::RsaDecrypt), 5);
    assert_eq!(s.dropped(Drop::UnderLoad), 1);
    let b = net.add_at(at(hosts[4], 1000), ClientOptions::default());
    net.connect(b);
    assert!(!net.peers[b].core.is_established(), "a newcomer waits");
    assert_eq!(net.stats().dropped(Drop::UnderLoad), 2);
    net.connect(a);
    assert!(net.peers[a].core.is_established(), "a session re-keys");
    assert_eq!(net.stats().handshakes_completed, 2);
    net.advance(SEC);
    net.connect(b);
    assert!(net.peers[b].core.is_established());
}

#[test]
fn sessions_per_host_are_capped() {
    let mut net = Net::new(Config {
        max_clients_per_ip: 2,
        ..Config::default()
    });
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    let c = net.add(ClientOptions::default());
    net.connect(c);
    assert_eq!(
        net.take_events(c).last(),
        Some(&ClientEvent::Rejected(RejectReason::ServerFull))
    );
    assert_eq!(net.stats().dropped(Drop::IpFull), 1);
    // Other hosts are not affected; registered addresses may re-key.
    let d = net.add_at(at([127, 0, 0, 2], 40001), ClientOptions::default());
    net.connect(d);
    assert!(net.peers[d].core.is_established());
    net.connect(a);
    assert!(net.peers[a].core.is_established());
    // A leave frees a place for that host.
    let bye = net.outgoing(b, |cl, o| cl.bye(o));
    net.deliver_all(net.addr(b), bye);
    net.connect(c);
    assert!(net.peers[c].core.is_established());
    assert_eq!(net.relay.client_count(), 3);
}
