//! The `mcrelay` command: one binary, several subcommands.

mod cmd;

use std::process::ExitCode;

const USAGE: &str = "\
mcrelay: a secure, managed relay for an open UDP multicast group

USAGE:
    mcrelay <COMMAND> [OPTIONS]

COMMANDS:
    serve         run the relay (safe defaults: no flags needed)
    bench         measure a relay under load, the machine's limit, or the footprint
    fingerprint   print the SHA-256 fingerprint of a key file's public key
    federation-key
                  print a new random key for a federation (--federation-key-file)
    chat          interactive terminal client: lines typed are sent, messages printed
    send          send one message (argument or stdin); exit 0 if the server accepted it
    listen        print one line (or JSON object) per event until killed
    client        add, remove or list the named clients of a clients file
    stats         print a running relay's counters once (plain or Prometheus)
    help          print this text; `mcrelay <COMMAND> --help` for a command's flags

OPTIONS:
    -h, --help       print help
    -V, --version    print the version
";

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    let sub = args.subcommand().unwrap_or(None);
    let result = match sub.as_deref() {
        Some("serve") => cmd::serve::run(args),
        Some("fingerprint") => cmd::fingerprint::run(args),
        Some("federation-key") => cmd::federation_key::run(args),
        Some("bench") => cmd::bench::run(args),
        Some("chat") => cmd::chat::run(args),
        Some("send") => cmd::send::run(args),
        Some("listen") => cmd::listen::run(args),
        Some("client") => cmd::client::run(args),
        Some("stats") => cmd::stats::run(args),
        Some("help") | None if !args.contains(["-V", "--version"]) => {
            print!("{USAGE}");
            Ok(())
        }
        None | Some("-V") | Some("--version") => {
            println!("mcrelay {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("-h") | Some("--help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command '{other}' (try: mcrelay --help)")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("mcrelay: {msg}");
            ExitCode::from(2)
        }
    }
}
