//! `mcrelay fingerprint --key-file PATH`: what clients pin.

const HELP: &str = "\
mcrelay fingerprint: print the SHA-256 fingerprint of the server's public key

USAGE:
    mcrelay fingerprint --key-file PATH

    --key-file PATH   PKCS#8 PEM RSA key (as `mcrelay serve --key-file` writes it)
";

/// Prints the fingerprint of an existing key file (never creates one).
pub fn run(mut args: pico_args::Arguments) -> Result<(), String> {
    if args.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    let path: String = super::opt(&mut args, "--key-file")?.ok_or("--key-file is required")?;
    super::finish(args)?;
    let path = std::path::Path::new(&path);
    if !path.exists() {
        return Err(format!("key file {} does not exist", path.display()));
    }
    let key = mcrelay::load_key(path).map_err(|e| e.to_string())?;
    println!("{}", key.fingerprint());
    Ok(())
}
