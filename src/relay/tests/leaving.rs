//! How clients leave: silence, BYE, a kick, the server's shutdown.

use super::*;

#[test]
fn idle_clients_time_out() {
    let timeout = 2 * SEC;
    let mut net = Net::new(Config {
        client_timeout: timeout,
        ..Config::default()
    });
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    let c = net.joined(ClientOptions::default()); // sends only forged tokens
    net.take_events(a);
    net.take_events(b);
    let t0 = net.now;
    assert!(net.relay.poll_timeout().is_some_and(|t| t <= t0 + timeout));

    net.advance(SEC);
    net.keepalive(a);
    net.deliver(net.addr(c), &plain(&[(outer::KEEPALIVE, &body(100, 3))]));
    net.advance(timeout - SEC - MS);
    assert_eq!(net.relay.client_count(), 3);
    net.advance(MS);
    assert_eq!(net.relay.client_count(), 1, "removed at 2 s, not later");
    let mut got = net.take_events(a);
    got.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        got,
        [
            left(&net.id(b), LeaveReason::Timeout),
            left(&net.id(c), LeaveReason::Timeout)
        ]
    );
    assert_eq!(
        (
            net.stats().clients_timed_out,
            net.stats().dropped(Drop::BadToken)
        ),
        (2, 1)
    );

    // A keeps itself alive; the removed client is a stranger now.
    net.keepalive(a);
    for _ in 0..3 {
        net.advance(SEC);
        net.keepalive(a);
    }
    assert_eq!(net.relay.client_count(), 1);
    net.keepalive(b);
    assert_eq!(
        net.take_events(b).last(),
        Some(&ClientEvent::Rejected(RejectReason::UnknownSession))
    );
    assert_eq!(net.stats().dropped(Drop::Stranger), 1);

    // Then A falls silent: gone exactly one timeout after its last datagram.
    let last = net.now;
    assert!(net
        .relay
        .poll_timeout()
        .is_some_and(|t| t <= last + timeout));
    net.advance(timeout - MS);
    assert_eq!(net.relay.client_count(), 1);
    net.advance(MS);
    assert_eq!(net.relay.client_count(), 0);
    assert_eq!(
        net.events.last(),
        Some(&Event::Left {
            id: net.cid(a),
            reason: LeaveReason::Timeout
        })
    );
    assert_eq!(net.stats().clients_timed_out, 3);
}

/// Three joined clients, their notices so far taken.
fn three(net: &mut Net) -> [usize; 3] {
    let ids: Vec<usize> = (0..3)
        .map(|_| net.joined(ClientOptions::default()))
        .collect();
    for &i in &ids {
        net.take_events(i);
    }
    net.events.clear();
    [ids[0], ids[1], ids[2]]
}

#[test]
fn bye_removes_the_client_and_tells_the_others() {
    let mut net = Net::new(Config::default());
    let [a, b, c] = three(&mut net);
    let bye = net.outgoing(a, |cl, o| cl.bye(o));
    net.deliver_all(net.addr(a), bye);
    for i in [b, c] {
        assert_eq!(net.take_events(i), [left(&net.id(a), LeaveReason::Bye)]);
    }
    assert!(net.take_events(a).is_empty());
    assert_eq!(net.stats().clients_left, 1);
    assert_eq!(
        net.events,
        [Event::Left {
            id: net.cid(a),
            reason: LeaveReason::Bye
        }]
    );
    assert_eq!(net.relay.client_count(), 2);
}

#[test]
fn a_kicked_client_is_told_in_its_own_session_and_becomes_a_stranger() {
    let mut net = Net::new(Config::default());
    let [_, b, c] = three(&mut net);
    assert!(net.relay.kick(&net.cid(b), &mut net.tx));
    net.route(&mut VecDeque::new());
    assert_eq!(net.take_events(c), [left(&net.id(b), LeaveReason::Kicked)]);
    // v2 §5: the kicked client hears of it itself, with REASON 3.
    assert_eq!(net.take_events(b), [left(&net.id(b), LeaveReason::Kicked)]);
    net.keepalive(b);
    assert_eq!(
        net.take_events(b),
        [ClientEvent::Rejected(RejectReason::UnknownSession)]
    );
    assert!(!net.relay.kick(&ClientId::new(addr(1)), &mut net.tx));
    assert!(net.tx.is_empty());
    let s = net.stats();
    assert_eq!(
        (
            s.clients_kicked,
            s.dropped(Drop::Stranger),
            net.relay.client_count()
        ),
        (1, 1, 2)
    );
    assert_eq!(
        net.events,
        [Event::Left {
            id: net.cid(b),
            reason: LeaveReason::Kicked
        }]
    );
}

#[test]
fn shutdown_tells_every_client_and_forgets_them() {
    let mut net = Net::new(Config::default());
    let [a, b, c] = three(&mut net);
    let late = net.outgoing(c, |cl, o| cl.send(b"anyone?", o));
    net.relay.shutdown(&mut net.tx);
    net.route(&mut VecDeque::new());
    for i in [a, b, c] {
        assert_eq!(
            net.take_events(i),
            [ClientEvent::ServerClosing],
            "client {i}"
        );
    }
    assert_eq!(net.relay.client_count(), 0);
    net.deliver_all(net.addr(c), late);
    assert_eq!(
        net.take_events(c),
        [ClientEvent::Rejected(RejectReason::UnknownSession)]
    );
}
