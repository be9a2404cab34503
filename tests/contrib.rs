//! The deployment files in contrib/ stay in step with the binary: the
//! OpenWrt init script must map every `mcrelay serve` flag and build a
//! command line the relay accepts (contrib/openwrt/check-init.sh checks
//! both against stand-ins for UCI and procd).

use std::process::Command;

#[test]
fn openwrt_init_script_maps_every_serve_flag() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/openwrt/check-init.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_mcrelay"))
        .output()
        .expect("run bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("every 'mcrelay serve' flag has a UCI option"),
        "{text}"
    );
}
