//! `mcrelay client add|remove|list`: managing the clients file a relay
//! reads with `--clients-file`.

use std::path::Path;

use mcrelay::{clientsfile, Perms};

use super::{finish, opt};

const HELP: &str = "\
mcrelay client: manage the named clients of a clients file

USAGE:
    mcrelay client add NAME [--perms pub|sub|pubsub] --clients-file PATH
    mcrelay client remove NAME --clients-file PATH
    mcrelay client list --clients-file PATH

add      draws a random token for NAME, appends NAME, the token's SHA-256 and
         the permissions to the file (created with mode 0600 if missing), and
         prints the token on stdout, once: the file keeps only its digest.
         Save it for the client, e.g. `... > alice.token`, then
         `mcrelay chat --token-file alice.token`.
remove   deletes NAME's line; every other line stays as it was
list     prints each client's name and permissions (never digests or tokens)

NAME is 1 to 32 of A-Z a-z 0-9 . _ - and unique in the file. Permissions:
pub (may publish, receives nothing), sub (receives, may not publish),
pubsub (both; the default). Edits replace the file atomically, keeping its
mode and owner.

    --clients-file PATH   the file `mcrelay serve --clients-file` reads
    --perms P             add: pub, sub or pubsub [default: pubsub]
";

/// Runs `mcrelay client ...`.
pub fn run(mut args: pico_args::Arguments) -> Result<(), String> {
    if args.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    let action = args
        .subcommand()
        .map_err(|e| e.to_string())?
        .ok_or("client: add, remove or list? (try --help)")?;
    let path: Option<String> = opt(&mut args, "--clients-file")?;
    match action.as_str() {
        "add" => {
            let perms: Perms = opt(&mut args, "--perms")?.unwrap_or_default();
            let name = name_arg(&mut args, "add")?;
            finish(args)?;
            let path = required(path)?;
            let token =
                clientsfile::add(Path::new(&path), &name, perms).map_err(|e| e.to_string())?;
            eprintln!(
                "mcrelay: added {name} ({perms}) to {path}; its token follows, shown this once"
            );
            println!("{token}");
            Ok(())
        }
        "remove" => {
            let name = name_arg(&mut args, "remove")?;
            finish(args)?;
            let path = required(path)?;
            let gone = clientsfile::remove(Path::new(&path), &name).map_err(|e| e.to_string())?;
            eprintln!(
                "mcrelay: removed {} ({}) from {path}",
                gone.name, gone.perms
            );
            Ok(())
        }
        "list" => {
            finish(args)?;
            let path = required(path)?;
            let table = clientsfile::load(Path::new(&path)).map_err(|e| e.to_string())?;
            let width = table.iter().map(|e| e.name.len()).max().unwrap_or(0);
            let mut out = String::new();
            for e in table.iter() {
                out.push_str(&format!("{:width$}  {}\n", e.name, e.perms));
            }
            print!("{out}");
            Ok(())
        }
        other => Err(format!(
            "client: unknown action '{other}': add, remove or list (try --help)"
        )),
    }
}

fn required(path: Option<String>) -> Result<String, String> {
    path.ok_or_else(|| "--clients-file is required".to_string())
}

/// The NAME argument of `add` and `remove` (flags were taken out first).
fn name_arg(args: &mut pico_args::Arguments, action: &str) -> Result<String, String> {
    let name: Option<String> = args.opt_free_from_str().map_err(|e| e.to_string())?;
    match name {
        Some(n) if n.starts_with('-') => Err(format!("client {action}: unknown flag '{n}'")),
        Some(n) => Ok(n),
        None => Err(format!("client {action}: NAME is missing")),
    }
}
