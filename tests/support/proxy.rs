//! A forwarding socket that stands where one client believes the server is.
//! Whatever it injects reaches the client from the server's address as the
//! client sees it, which is what an off-path attacker who forges the
//! server's source address achieves: forged REJECTs, and SERVER_KEYs of
//! another key answering the client's HELLOs ahead of the real ones.
#![allow(dead_code)] // each test binary uses a different part of it

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mcrelay::wire::outer::{COOKIE, HELLO, SERVER_KEY};
use mcrelay::wire::tlv;

/// One client's path to the server, with injection.
pub struct Proxy {
    /// Where the client sends: give it as the server address.
    pub addr: SocketAddr,
    front: UdpSocket,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    client: Mutex<Option<SocketAddr>>,
    /// Sent to the client ahead of the answer to each of its HELLOs.
    rogue_answer: Mutex<Option<Vec<u8>>>,
    hellos: AtomicU64,
}

impl Proxy {
    /// Forwards between one client and `server` (which may restart on the
    /// same address).
    pub fn start(server: SocketAddr) -> Proxy {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&front, &back] {
            // Short, so the threads see `stop` soon.
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            client: Mutex::new(None),
            rogue_answer: Mutex::new(None),
            hellos: AtomicU64::new(0),
        });
        let up = {
            let (front, back, shared) = (
                front.try_clone().unwrap(),
                back.try_clone().unwrap(),
                shared.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = vec![0; 65536];
                while !shared.stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    *shared.client.lock().unwrap() = Some(from);
                    if buf[..n].starts_with(&HELLO.to_be_bytes()) {
                        shared.hellos.fetch_add(1, Ordering::Relaxed);
                        if let Some(rogue) = &*shared.rogue_answer.lock().unwrap() {
                            let _ = front.send_to(rogue, from);
                        }
                    }
                    let _ = back.send_to(&buf[..n], server);
                }
            })
        };
        let down = {
            let (front, shared) = (front.try_clone().unwrap(), shared.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0; 65536];
                while !shared.stop.load(Ordering::Relaxed) {
                    // Errors: timeouts, and ICMP while the server is down.
                    let Ok((n, _)) = back.recv_from(&mut buf) else {
                        continue;
                    };
                    let client = *shared.client.lock().unwrap();
                    if let Some(c) = client {
                        let _ = front.send_to(&buf[..n], c);
                    }
                }
            })
        };
        Proxy {
            addr: front.local_addr().unwrap(),
            front,
            shared,
            threads: vec![up, down],
        }
    }

    /// The client's address, once it sent something.
    pub fn client(&self) -> Option<SocketAddr> {
        *self.shared.client.lock().unwrap()
    }

    /// Sends `datagram` to the client from the server's address (as the
    /// client sees it). False while no client is known.
    pub fn inject(&self, datagram: &[u8]) -> bool {
        match self.client() {
            Some(c) => self.front.send_to(datagram, c).is_ok(),
            None => false,
        }
    }

    /// From now on, answers each HELLO first with SERVER_KEY `der` and a
    /// cookie of the right length, then forwards it (None: stop).
    pub fn set_rogue_key(&self, der: Option<&[u8]>) {
        *self.shared.rogue_answer.lock().unwrap() = der.map(|der| {
            let mut d = Vec::new();
            tlv::put(&mut d, SERVER_KEY, der);
            tlv::put(&mut d, COOKIE, &[0x5a; mcrelay::wire::COOKIE_LEN]);
            d
        });
    }

    /// HELLOs the client sent so far.
    pub fn hellos(&self) -> u64 {
        self.shared.hellos.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
