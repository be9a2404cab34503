//! Subcommands and the flag helpers they share.

pub mod bench;
pub mod chat;
pub mod client;
pub mod client_args;
pub mod federate;
pub mod federation_key;
pub mod fingerprint;
pub mod json;
pub mod listen;
pub mod send;
pub mod serve;
pub mod stats;

use std::str::FromStr;

/// Parses an optional flag, naming it in the error.
pub fn opt<T: FromStr>(
    args: &mut pico_args::Arguments,
    name: &'static str,
) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    args.opt_value_from_fn(name, |s| s.parse::<T>())
        .map_err(|e| flag_error(name, e))
}

/// Parses every occurrence of a repeatable flag.
pub fn many<T: FromStr>(
    args: &mut pico_args::Arguments,
    name: &'static str,
) -> Result<Vec<T>, String>
where
    T::Err: std::fmt::Display,
{
    args.values_from_fn(name, |s| s.parse::<T>())
        .map_err(|e| flag_error(name, e))
}

fn flag_error(name: &str, e: pico_args::Error) -> String {
    match e {
        pico_args::Error::OptionWithoutAValue(_) => format!("{name} needs a value"),
        pico_args::Error::Utf8ArgumentParsingFailed { value, cause } => {
            format!("bad value '{value}' for {name}: {cause}")
        }
        pico_args::Error::ArgumentParsingFailed { cause } => {
            format!("bad value for {name}: {cause}")
        }
        other => format!("{name}: {other}"),
    }
}

/// Fails on any argument nobody consumed: a typo must not be ignored.
pub fn finish(args: pico_args::Arguments) -> Result<(), String> {
    let rest = args.finish();
    match rest.first() {
        None => Ok(()),
        Some(a) => Err(format!(
            "unexpected argument '{}' (try --help)",
            a.to_string_lossy()
        )),
    }
}

/// Reads a secret token file: contents minus one trailing newline.
pub fn read_token_file(path: &str) -> Result<Vec<u8>, String> {
    let mut t = std::fs::read(path).map_err(|e| format!("token file {path}: {e}"))?;
    if t.last() == Some(&b'\n') {
        t.pop();
        if t.last() == Some(&b'\r') {
            t.pop();
        }
    }
    if t.is_empty() {
        return Err(format!("token file {path} is empty"));
    }
    Ok(t)
}
