//! `mcrelay federation-key`: a new key for a federation's key file.

const HELP: &str = "\
mcrelay federation-key: print a new random federation key

USAGE:
    mcrelay federation-key

Prints the 44-character key and a newline, which is also the format of the
file `mcrelay serve --federation-key-file` reads. Every relay of a federation
needs the same key; keep the file readable by its owner only:

    (umask 077; mcrelay federation-key > /etc/mcrelay/federation.key)
";

/// Prints a new key.
pub fn run(mut args: pico_args::Arguments) -> Result<(), String> {
    if args.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    super::finish(args)?;
    print!("{}", mcrelay::new_federation_key());
    Ok(())
}
