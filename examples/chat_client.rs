//! The Rust client library in a few lines: connect to a relay, send the
//! messages given on the command line, print what arrives for a while,
//! say BYE.
//!
//! ```text
//! cargo run --example chat_client -- 127.0.0.1:5007 "hello" "anyone there?"
//! ```
//!
//! Keepalives and recovery after a server restart are switched on, so the
//! session survives the 30 s of listening whatever the server does.
//! `mcrelay chat` is the full interactive client built on the same type.

use std::time::{Duration, Instant};

use mcrelay::{ClientEvent, ClientOptions};
use mcrelay::{Target, UdpClient, DEFAULT_KEEPALIVE};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:5007".into());
    let target = Target::Unicast(server.parse()?);
    // ClientOptions also takes a pin (`pin: Some(hex)`) and an access token.
    let mut client = UdpClient::new(target, ClientOptions::default())?;
    client.set_keepalive(Some(DEFAULT_KEEPALIVE));
    client.set_auto_reconnect(Some(Duration::from_secs(1)));

    let id = client.connect(Duration::from_secs(5))?;
    println!(
        "connected as {id}; server key {}",
        client.fingerprint().unwrap_or("?")
    );
    for message in args {
        // Long messages are fragmented by the library.
        client.send(message.as_bytes())?;
    }

    let end = Instant::now() + Duration::from_secs(30);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        // `recv` also sends the keepalives and recovery handshakes.
        match client.recv(left)? {
            Some(ClientEvent::Message { sender, body }) => {
                println!(
                    "[{sender}] {}",
                    String::from_utf8_lossy(&body).escape_debug()
                )
            }
            Some(ClientEvent::PeerJoined(id)) => println!("* {id} joined"),
            Some(ClientEvent::PeerLeft { id, reason }) => {
                println!("* {id} left ({})", reason.map_or("?", |r| r.name()))
            }
            Some(ClientEvent::Welcome { id }) => println!("* reconnected as {id}"),
            Some(other) => println!("* {other:?}"),
            None => {}
        }
    }
    client.bye()?;
    Ok(())
}
