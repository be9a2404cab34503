//! Fuzz bodies for the federation codecs (cargo-fuzz target `federation`):
//! the NATS decoder and the federation message parser, on arbitrary bytes.
//! The first byte picks the codec and, for the decoder, how the rest is
//! split into reads.

use crate::federation::msg::{FedMsg, Kind};
use crate::federation::nats::{Decoder, MAX_CONTROL_LINE};

/// Payload limit of the fuzzed decoder: small, so oversize skips happen.
const MAX_PAYLOAD: usize = 512;

/// Even first byte: the NATS decoder; odd: [`FedMsg::parse`].
pub fn federation(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        nats(rest, 1 + usize::from(sel >> 1));
    } else {
        fed_msg(rest);
    }
}

/// Everything the decoder yields, as text, and the error it stopped at.
fn decode(data: &[u8], chunk: usize) -> (Vec<String>, Option<String>) {
    let mut d = Decoder::new(MAX_PAYLOAD);
    let mut ops = Vec::new();
    for part in data.chunks(chunk) {
        d.feed(part);
        loop {
            match d.next() {
                Ok(Some(op)) => ops.push(format!("{op:?}")),
                Ok(None) => break,
                Err(e) => return (ops, Some(format!("{e:?}"))),
            }
        }
        // At most one incomplete operation is carried over.
        assert!(
            d.buffered() <= MAX_CONTROL_LINE + MAX_PAYLOAD + 2,
            "decoder holds {} bytes",
            d.buffered()
        );
    }
    (ops, None)
}

/// The same ops whatever the split, and a bounded buffer.
fn nats(data: &[u8], chunk: usize) {
    let whole = decode(data, data.len().max(1));
    let split = decode(data, chunk);
    match (&whole.1, &split.1) {
        // An error ends the stream: the ops before it must agree.
        (Some(_), _) | (_, Some(_)) => {
            let n = whole.0.len().min(split.0.len());
            assert_eq!(whole.0[..n], split.0[..n], "split changed the ops");
            assert_eq!(whole.1, split.1, "split changed the error");
        }
        (None, None) => assert_eq!(whole.0, split.0, "split changed the ops"),
    }
}

/// A plaintext that parses re-emits canonically and parses the same.
fn fed_msg(data: &[u8]) {
    let Ok(m) = FedMsg::parse(data) else {
        return;
    };
    let mut again = Vec::new();
    m.emit(&mut again);
    let m2 = FedMsg::parse(&again).expect("a re-emitted message parses");
    assert_eq!(m.header, m2.header);
    match (m.kind, m2.kind) {
        (Kind::Announce { members: a, .. }, Kind::Announce { members: b, .. }) => {
            assert!(a.iter().eq(b.iter()), "announce members changed");
        }
        (a, b) => assert_eq!(a, b),
    }
}
