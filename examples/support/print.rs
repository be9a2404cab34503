//! Printing shared by the worked-bytes examples: hex dumps and TLV
//! outlines in the layout PROTOCOL.md quotes.

use mcrelay::wire::tlv::Reader;
use mcrelay::Transmits;

/// The one datagram in `tx`.
pub fn only(tx: &Transmits) -> Vec<u8> {
    assert_eq!(tx.len(), 1, "expected exactly one datagram");
    tx.iter()
        .next()
        .map(|(_, d)| d.to_vec())
        .unwrap_or_default()
}

/// One line per outer TLV: type, length and the first bytes of the value.
pub fn outline(datagram: &[u8]) {
    for t in Reader::new(datagram) {
        let t = t.expect("well-formed");
        let head = &t.value[..t.value.len().min(8)];
        println!(
            "  type 0x{:04x} length {:>4}  value starts {}{}",
            t.kind,
            t.value.len(),
            spaced(head),
            if t.value.len() > 8 { " ..." } else { "" }
        );
    }
}

/// A section heading.
pub fn section(title: &str) {
    println!("\n== {title}");
}

/// Hex dump, 16 bytes a line, with offsets and printable ASCII.
pub fn dump(bytes: &[u8]) {
    for (i, line) in bytes.chunks(16).enumerate() {
        let ascii: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        println!("  {:04x}  {:<47}  |{ascii}|", i * 16, spaced(line));
    }
}

/// Bytes as space-separated hex.
pub fn spaced(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
