//! Prints the protocol v2 worked examples quoted in PROTOCOL.md (§11).
//!
//! Every datagram and plaintext below is built by the library itself: the
//! relay core answers a HELLO and a hand-made SESSION_KEY2 (whose TLVs come
//! from `mcrelay::wire::handshake`), and the group datagram is sealed and
//! signed by `mcrelay::group::GroupSender`, then checked and opened by
//! `GroupMember`, the member's side. Rerun it and compare with the
//! document to see whether the two still agree.
//!
//! Run with `cargo run --example worked_bytes_v2`.
//!
//! Only the RSA key and the RSA ciphertext change from run to run; the
//! relay's seed and clock are fixed (so are its cookie, group key, signer
//! and IVs), and so are the client's Fernet key and the fixed keys of the
//! group example.

use std::net::SocketAddr;
use std::time::Instant;

use mcrelay::fernet::{encode_key, FernetKey};
use mcrelay::group::{ratchet, GroupMember, GroupSender};
use mcrelay::wire::group::{GroupData, SIGNATURE_LEN};
use mcrelay::wire::handshake::{Handshake, CAP_GROUP, CAP_RAW};
use mcrelay::wire::tlv::{self, Reader};
use mcrelay::wire::{inner, outer, Inner, MIN_HELLO_LEN};
use mcrelay::Config;
use mcrelay::ServerKey;
use mcrelay::{Relay, Transmits};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;

/// A documentation address (RFC 5737) used as the example client.
const ALICE: ([u8; 4], u16) = ([192, 0, 2, 10], 40000);
/// The wall clock the relay is started with: 2023-11-14T22:13:20Z.
const UNIX: u64 = 1_700_000_000;

#[path = "support/print.rs"]
mod print;
use print::{dump, only, outline, section};

fn main() {
    let alice = SocketAddr::from(ALICE);
    let now = Instant::now();
    let key = ServerKey::generate().expect("RSA key generation");
    let mut relay = Relay::new(Config::default(), key, now, UNIX, [2; 32]);
    let mut tx = Transmits::new();

    section("1. The answer to a HELLO: SERVER_KEY + COOKIE + VERSIONS");
    let mut hello = Vec::new();
    tlv::put(
        &mut hello,
        outer::HELLO,
        &[&[1u8][..], &[0; MIN_HELLO_LEN - 5]].concat(),
    );
    relay.handle_datagram(now, alice, &hello, &mut tx);
    let answer = only(&tx);
    println!(
        "HELLO {} bytes -> answer {} bytes (at most 3x):",
        hello.len(),
        answer.len()
    );
    outline(&answer);
    let der = value_of(&answer, outer::SERVER_KEY);
    let cookie = value_of(&answer, outer::COOKIE);

    section("2. SESSION_KEY2 plaintext: FERNET_KEY, BIND (= the COOKIE), CAPS = GROUP|RAW");
    // The client's fresh Fernet key; fixed here so the dump is stable.
    let client_raw: [u8; 32] = std::array::from_fn(|i| 0x40 + i as u8);
    let client_key = encode_key(&client_raw);
    let mut plain = Vec::new();
    Handshake {
        fernet_key: client_key.as_bytes(),
        bind: cookie.as_slice().try_into().expect("16-byte cookie"),
        caps: CAP_GROUP | CAP_RAW,
        credential: None,
    }
    .emit(&mut plain);
    println!(
        "{} bytes (at most 190 fit one RSA-2048 OAEP-SHA256 block):",
        plain.len()
    );
    dump(&plain);
    let ct = rsa::PublicKey::from_public_key_der(&der)
        .expect("SERVER_KEY is a DER public key")
        .oaep_encrypt::<Sha256>(&plain)
        .expect("fits one block");
    let mut d = Vec::new();
    tlv::put(&mut d, outer::COOKIE, &cookie);
    tlv::put(&mut d, outer::SESSION_KEY2, &ct);
    println!("COOKIE + SESSION_KEY2 datagram {} bytes:", d.len());
    outline(&d);

    section("3. The v2 WELCOME (RAW granted: a raw token), and its plaintext");
    tx.clear();
    relay.handle_datagram(now, alice, &d, &mut tx);
    let welcome = only(&tx);
    outline(&welcome);
    let token = value_of(&welcome, outer::WELCOME);
    println!(
        "token: {} raw bytes, first byte {:02x}",
        token.len(),
        token[0]
    );
    let opened = FernetKey::from_bytes(&client_raw)
        .open(&token)
        .expect("under the client's key");
    dump(&opened);
    let w = Inner::parse(&opened).expect("inner rules");
    let (epoch, group_key) = w.group_key.expect("GROUP granted");
    println!(
        "SEQ {} CLIENT_ID {} CAPS {:?} GROUP_KEY epoch {epoch} key {}",
        w.seq,
        String::from_utf8_lossy(w.client_id.unwrap_or_default()),
        w.caps,
        String::from_utf8_lossy(group_key)
    );
    println!(
        "GROUP_ADDR {:?} GROUP_SIGNER {}",
        w.group_addr,
        mcrelay::hex(w.group_signer.unwrap_or_default())
    );

    section("4. A GROUP_DATA: GSEQ=1 SENDER_ID=\"192.0.2.10:40000\" BODY=\"hi\"");
    // Fixed group key (epoch 1), signer seed, IV and time: stable bytes.
    let group_raw: [u8; 32] = std::array::from_fn(|i| i as u8);
    let signer_seed = [0x5a; 32];
    let mut sender = GroupSender::new(group_raw, signer_seed);
    let mut tail = Vec::new();
    tlv::put(&mut tail, inner::SENDER_ID, alice.to_string().as_bytes());
    tlv::put(&mut tail, inner::BODY, b"hi");
    let iv: [u8; 16] = std::array::from_fn(|i| 0x20 + i as u8);
    let mut g = Vec::new();
    sender.seal(UNIX, iv, &tail, &mut g);
    println!("group key (epoch 1): {}", sender.key_text());
    println!(
        "signer public key:   {}",
        mcrelay::hex(&sender.signer_public())
    );
    println!("GROUP_DATA datagram {} bytes:", g.len());
    dump(&g);
    let value = value_of(&g, outer::GROUP_DATA);
    let parsed = GroupData::parse(&value).expect("well-formed");
    println!(
        "  type 000c, length {}; epoch {} | signature {} bytes | raw token {} bytes",
        value.len(),
        parsed.epoch,
        SIGNATURE_LEN,
        parsed.token.len()
    );
    let mut signed = Vec::new();
    GroupData::signed_message(parsed.epoch, parsed.token, &mut signed);
    println!(
        "signed message: \"mcrelay-v2 group\" | {} | token ({} bytes in all)",
        mcrelay::hex(&signed[16..20]),
        signed.len()
    );
    let mut member = GroupMember::new(
        &sender.signer_public(),
        sender.epoch(),
        sender.key_text().as_bytes(),
    )
    .expect("valid keys");
    let plain = member
        .open(now, &value)
        .expect("signature, key and GSEQ check");
    println!("a member verifies and opens it to:");
    dump(&plain);

    section("5. The join ratchet: key[2] from key[1] (HKDF-SHA256)");
    println!("info = \"mcrelay-v2 join\" | 00 00 00 02, salt empty, ikm = key[1]'s 32 bytes");
    println!("key[1] {}", encode_key(&group_raw));
    println!("key[2] {}", encode_key(&ratchet(&group_raw, 2)));

    section("6. A rekey to one member: SEQ=5 GROUP_KEY(epoch 3, key)");
    let mut p = Vec::new();
    mcrelay::wire::put_seq(&mut p, 5);
    inner::put_group_key(&mut p, 3, encode_key(&[0x77; 32]).as_bytes());
    dump(&p);

    section("7. Member KEEPALIVEs: SEQ=9 KEY_REQUEST(epoch 3); SEQ=10 PROBE");
    let mut p = Vec::new();
    mcrelay::wire::put_seq(&mut p, 9);
    tlv::put(&mut p, inner::KEY_REQUEST, &3u32.to_be_bytes());
    dump(&p);
    let mut p = Vec::new();
    mcrelay::wire::put_seq(&mut p, 10);
    tlv::put(&mut p, inner::PROBE, &[]);
    dump(&p);
}

/// The single datagram in a batch.
/// The value of the first TLV of `kind`.
fn value_of(d: &[u8], kind: u16) -> Vec<u8> {
    Reader::new(d)
        .map_while(Result::ok)
        .find(|t| t.kind == kind)
        .map(|t| t.value.to_vec())
        .unwrap_or_else(|| panic!("no TLV of type {kind:#06x}"))
}
