//! Federation inputs: remote messages, joins and leaves reach local members
//! like local ones (in group mode and per recipient), and relayed local
//! messages come out as `Event::Relayed` only when federation is on.

use super::group::hear;
use super::v2::*;
use super::*;
use crate::relay::RemoteInput;

const EAST: &str = "east/10.0.0.5:40000";

fn federated() -> Config {
    Config {
        federation: true,
        ..roomy()
    }
}

fn remote(net: &mut Net, input: RemoteInput<'_>) {
    net.relay.handle_remote(net.now, input, &mut net.tx);
    let mut queue = VecDeque::new();
    net.route(&mut queue);
    for (src, d) in queue {
        net.deliver(src, &d);
    }
}

fn relayed(net: &mut Net) -> Vec<(String, Vec<u8>)> {
    std::mem::take(&mut net.events)
        .into_iter()
        .filter_map(|e| match e {
            Event::Relayed { sender, body } => Some((sender, body)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_remote_message_reaches_every_local_member_once_under_its_remote_id() {
    let mut net = Net::new(federated());
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.take_events(a);
    let before = net.stats().deliveries;
    remote(
        &mut net,
        RemoteInput::Message {
            sender_id: EAST,
            body: b"hello",
        },
    );
    for i in [a, b] {
        assert_eq!(net.messages(i), [(EAST.to_string(), b"hello".to_vec())]);
    }
    assert_eq!(net.stats().deliveries - before, 2);
    assert!(
        relayed(&mut net).is_empty(),
        "a remote message is not re-published"
    );
}

#[test]
fn remote_joins_and_leaves_are_announced_with_their_reason() {
    let mut net = Net::new(federated());
    let a = net.joined(ClientOptions::default());
    remote(&mut net, RemoteInput::Joined { id: EAST });
    remote(
        &mut net,
        RemoteInput::Left {
            id: EAST,
            reason: LeaveReason::Unreachable as u8,
        },
    );
    assert_eq!(
        net.take_events(a),
        [
            ClientEvent::PeerJoined(EAST.into()),
            left(EAST, LeaveReason::Unreachable)
        ]
    );
}

#[test]
fn relayed_local_messages_are_handed_out_only_when_federated() {
    let mut net = Net::new(federated());
    let a = net.joined(ClientOptions::default());
    let _b = net.joined(ClientOptions::default());
    net.send(a, b"up");
    assert_eq!(relayed(&mut net), [(net.id(a), b"up".to_vec())]);

    let mut alone = Net::new(roomy());
    let a = alone.joined(ClientOptions::default());
    let _b = alone.joined(ClientOptions::default());
    alone.send(a, b"up");
    assert_eq!(alone.stats().messages_relayed, 1);
    assert!(relayed(&mut alone).is_empty());
}

#[test]
fn a_remote_message_is_one_group_data_for_members_and_data_for_the_rest() {
    let mut net = Net::new(federated());
    let mut ms = [
        net.v2(addr(41001), GROUP_RAW),
        net.v2(addr(41002), GROUP_RAW),
    ];
    let p = net.joined(ClientOptions::default());
    hear(&mut net, &mut ms);
    let groups = net.stats().group_data_sent;
    remote(
        &mut net,
        RemoteInput::Message {
            sender_id: EAST,
            body: b"hi",
        },
    );
    assert_eq!(net.stats().group_data_sent - groups, 1);
    let heard = hear(&mut net, &mut ms);
    assert_eq!(heard, [[format!("{EAST}: hi")], [format!("{EAST}: hi")]]);
    assert_eq!(net.messages(p), [(EAST.to_string(), b"hi".to_vec())]);
    // A remote join moves no group key: no rekey, no ratchet.
    let (rekeys, ratchets) = (net.stats().rekeys, net.stats().ratchets);
    remote(&mut net, RemoteInput::Joined { id: EAST });
    remote(
        &mut net,
        RemoteInput::Left {
            id: EAST,
            reason: 1,
        },
    );
    assert_eq!(
        (net.stats().rekeys, net.stats().ratchets),
        (rekeys, ratchets)
    );
    let heard = hear(&mut net, &mut ms);
    assert_eq!(
        heard[0],
        [format!("joined {EAST}"), format!("left {EAST} (1)")]
    );
}

#[test]
fn a_remote_message_too_long_for_its_id_is_dropped_and_counted() {
    let mut net = Net::new(federated());
    let a = net.joined(ClientOptions::default());
    let big = vec![b'x'; tlv::MAX_VALUE_LEN];
    remote(
        &mut net,
        RemoteInput::Message {
            sender_id: EAST,
            body: &big,
        },
    );
    assert!(net.messages(a).is_empty());
    assert_eq!(dropped(net.stats(), &[Drop::Oversize]), 1);
}
