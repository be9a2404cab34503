//! Prints the worked byte-level examples quoted in PROTOCOL.md.
//!
//! Every datagram and plaintext below is built by the library itself
//! (`mcrelay::client`, `mcrelay::relay`, `mcrelay::wire::tlv`, `mcrelay::wire`,
//! `mcrelay::wire::fragment`), never written out by hand; rerun it and compare
//! with the document to see whether the two still agree.
//!
//! Run with `cargo run --example worked_bytes`.
//!
//! Most of the output is the same on every run. What is not: the RSA key
//! and the RSA ciphertext of the live handshake in section 2 (a fresh key
//! each run; the cores' seeds and clocks are fixed, so the cookie and the
//! tokens' timestamps are not). The Fernet token of section 8 is sealed by
//! the library under a fixed key, timestamp and IV; the program checks its
//! HMAC with the `hmac` crate and opens it with the `fernet` crate, to show
//! that the field layout it prints is the real one.

use std::net::SocketAddr;
use std::time::Instant;

use fernet::Fernet;
use hmac::{Hmac, KeyInit, Mac};
use mcrelay::fernet::FernetKey;
use mcrelay::wire::fragment;
use mcrelay::wire::tlv;
use mcrelay::wire::{self, inner, outer, LeaveReason, RejectReason};
use mcrelay::Config;
use mcrelay::ServerKey;
use mcrelay::{ClientCore, ClientEvent, ClientOptions};
use mcrelay::{Relay, Transmits};
use rsa::sha2::Sha256;

/// A documentation address (RFC 5737) used as the example client.
const ALICE: ([u8; 4], u16) = ([192, 0, 2, 10], 40000);

/// The wall clock the cores are started with: 2023-11-14T22:13:20Z.
const UNIX: u64 = 1_700_000_000;

#[path = "support/print.rs"]
mod print;
use print::{dump, only, outline, section};

fn main() {
    let alice = SocketAddr::from(ALICE);
    let alice_id = alice.to_string(); // exactly how the server forms client ids

    section("1. HELLO datagram (ClientCore::hello)");
    let mut client = ClientCore::new(ClientOptions::default(), Instant::now(), UNIX, [1; 32]);
    let hello = client.hello();
    println!("length {} bytes; first 16:", hello.len());
    dump(&hello[..16]);
    println!(
        "bytes 16..{} are all zero: {}",
        hello.len(),
        hello[16..].iter().all(|&b| b == 0)
    );

    section("2. Live handshake through the sans-IO cores (sizes only)");
    let mut client = handshake(client, alice);

    section("3. REJECT 4 (BAD_COOKIE)");
    dump(&wire::reject_datagram(RejectReason::BadCookie));

    section("4. Client->server DATA plaintext: SEQ=1 BODY=\"hi\"");
    let mut p = Vec::new();
    wire::put_seq(&mut p, 1);
    tlv::put(&mut p, inner::BODY, b"hi");
    dump(&p);
    let data_plain = p.clone();

    section(&format!(
        "5. Server->client relay plaintext: SEQ=7 SENDER_ID=\"{alice_id}\" BODY=\"hi\""
    ));
    let mut p = Vec::new();
    wire::put_seq(&mut p, 7);
    tlv::put(&mut p, inner::SENDER_ID, alice_id.as_bytes());
    tlv::put(&mut p, inner::BODY, b"hi");
    dump(&p);

    section(&format!(
        "6. Notice plaintext: SEQ=3 PEER_LEFT=\"{alice_id}\" REASON=2 (timeout)"
    ));
    let mut p = Vec::new();
    wire::put_seq(&mut p, 3);
    tlv::put(&mut p, inner::PEER_LEFT, alice_id.as_bytes());
    tlv::put_u8(&mut p, inner::REASON, LeaveReason::Timeout as u8);
    dump(&p);

    section("7. A 3000-byte datagram split at 1200 bytes (fragment::split, msg_id 0x0000002a)");
    let mut big = Vec::new();
    tlv::put(&mut big, outer::DATA, &[b'A'; 2996]);
    println!("original: one DATA TLV, {} bytes in all", big.len());
    let n = fragment::split(&big, 1200, 0x2a, |d| {
        let f = fragment::parse_fragment(&d[4..]).expect("split emits valid fragments");
        println!(
            "fragment index {} of count {}: datagram {} bytes, chunk {} bytes; first 12:",
            f.index,
            f.count,
            d.len(),
            f.chunk.len()
        );
        dump(&d[..12]);
    });
    println!("fragments: {}", n.unwrap_or(0));

    section("8. Fernet token under a fixed key, plaintext = example 4");
    fernet_token(&data_plain);

    section("9. Largest BODY whose client DATA datagram fits in 1200 bytes (ClientCore::send)");
    let mut out = Vec::new();
    let fits = (1..=1200)
        .take_while(|&n| {
            out.clear();
            client.send(&vec![0; n], &mut out) && out.len() == 1
        })
        .last();
    println!(
        "{} bytes; one more byte and the DATA datagram is sent as FRAGMENTs",
        fits.unwrap_or(0)
    );
}

/// HELLO -> SERVER_KEY+COOKIE -> COOKIE+SESSION_KEY -> WELCOME, with real cores.
/// Returns the client, established.
fn handshake(mut client: ClientCore, addr: SocketAddr) -> ClientCore {
    let now = Instant::now();
    let key = ServerKey::generate().expect("RSA key generation");
    let mut server = Relay::new(Config::default(), key, now, UNIX, [2; 32]);
    let mut tx = Transmits::new();
    let mut out = Vec::new();
    let mut events = Vec::new();

    let hello = client.hello();
    server.handle_datagram(now, addr, &hello, &mut tx);
    let answer = only(&tx);
    println!(
        "HELLO {} bytes -> answer {} bytes:",
        hello.len(),
        answer.len()
    );
    outline(&answer);

    client
        .handle_datagram(now, &answer, &mut out, &mut events)
        .expect("no pin set");
    let session_key = out.pop().expect("SESSION_KEY datagram");
    println!("COOKIE+SESSION_KEY datagram {} bytes:", session_key.len());
    outline(&session_key);

    tx.clear();
    server.handle_datagram(now, addr, &session_key, &mut tx);
    let welcome = only(&tx);
    println!("WELCOME datagram {} bytes:", welcome.len());
    outline(&welcome);
    client
        .handle_datagram(now, &welcome, &mut out, &mut events)
        .expect("no pin set");
    for e in &events {
        match e {
            ClientEvent::ServerKey { fingerprint } => {
                println!("client saw server key, fingerprint {fingerprint}")
            }
            other => println!("client event: {other:?}"),
        }
    }
    client
}

/// The single datagram in a batch.
fn fernet_token(plain: &[u8]) {
    // Fixed key: bytes 0x00..=0x1f. First half signs, second half encrypts.
    let raw_key: Vec<u8> = (0u8..32).collect();
    let key = b64url_encode(&raw_key);
    let timestamp: u64 = 1_700_000_000; // 2023-11-14T22:13:20Z
                                        // Fixed IV 0x20..=0x2f, so the whole token is the same on every run (a
                                        // real sender draws it from a CSPRNG).
    let iv: [u8; 16] = std::array::from_fn(|i| 0x20 + i as u8);
    let ours = FernetKey::from_bytes(&raw_key.clone().try_into().expect("32 bytes"));
    let token = ours.seal_text(timestamp, iv, plain);

    println!("key (URL-safe base64, {} chars): {key}", key.len());
    println!("  signing key    = {}", mcrelay::hex(&raw_key[..16]));
    println!("  encryption key = {}", mcrelay::hex(&raw_key[16..]));
    println!(
        "token text ({} ASCII chars, the TLV value): {token}",
        token.len()
    );
    let bytes = b64url_decode(&token).expect("fernet emits valid base64");
    let (signed, mac) = bytes.split_at(bytes.len() - 32);
    println!("decoded token {} bytes:", bytes.len());
    println!("  version    {:02x}", bytes[0]);
    let ts = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
    println!("  timestamp  {}  (= {ts})", mcrelay::hex(&bytes[1..9]));
    println!("  IV         {}", mcrelay::hex(&bytes[9..25]));
    println!(
        "  ciphertext {} bytes (AES-128-CBC, PKCS7; {} plaintext bytes)",
        signed.len() - 25,
        plain.len()
    );
    dump(&signed[25..]);
    println!("  HMAC       {}", mcrelay::hex(mac));

    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&raw_key[..16]).expect("any key length");
    m.update(signed);
    let ok = m.finalize().into_bytes().as_slice() == mac;
    println!(
        "HMAC-SHA256(signing key, first {} bytes) matches: {ok}",
        signed.len()
    );
    // An independent implementation opens it.
    let f = Fernet::new(&key).expect("32-byte key");
    let back = f
        .decrypt_at_time(&token, None, timestamp)
        .expect("own token");
    println!("decrypts to example 4: {}", back == plain);
    println!(
        "outer DATA TLV: 00 05 {:02x} {:02x} followed by the {} token chars",
        token.len() >> 8,
        token.len() & 0xff,
        token.len()
    );
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// URL-safe base64 with '=' padding, as Fernet keys and tokens use it.
fn b64url_encode(data: &[u8]) -> String {
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                s.push(char::from(B64URL[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Inverse of [`b64url_encode`]; padding optional.
fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for ch in text.trim_end_matches('=').bytes() {
        let v = B64URL.iter().position(|&x| x == ch)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
