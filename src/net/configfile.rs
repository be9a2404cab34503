//! `mcrelay serve --config PATH`: a TOML file whose keys are `serve`'s long
//! flag names (the flags themselves are the binary's: it hands their
//! table, [`Flag`]s, to every function here) (`client-timeout = 60`, `iface = ["br-lan", "lan0.20"]`,
//! `no-admin = true`).
//!
//! There is one source of truth for what a value may be: the flag parser.
//! Each key becomes the arguments its flag would take (`--key value`,
//! repeated for an array, a bare `--key` for `true`, nothing for `false`),
//! and each key's arguments are parsed on their own first, so an error
//! names the key and its line. The arguments of the keys the command line
//! does not give then go in front of the command line, which overrides
//! the file key by key (a list given on the command line replaces the
//! file's list).
//!
//! [`changes`] compares two effective configurations, key by key, for a
//! reload: what a SIGHUP can apply and what needs a restart.

use std::ffi::OsString;
use std::fmt;

use toml::de::{DeTable, DeValue};

/// Largest config file read: a config is a few hundred bytes.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// How a flag takes its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    /// `--flag VALUE`, once: a string or an integer in the file.
    Value,
    /// `--flag VALUE`, repeatable: an array (or one value) in the file.
    List,
    /// `--flag`: a boolean in the file.
    Switch,
}

/// One `serve` flag as the config file sees it.
#[derive(Clone, Copy, Debug)]
pub struct Flag {
    /// The long name without `--`: the config key.
    pub name: &'static str,
    /// How it takes a value.
    pub arity: Arity,
    /// Whether a running relay can apply a change on SIGHUP (else it
    /// needs a restart).
    pub reload: bool,
    /// For a flag with no value by default: what leaving it out means
    /// (printed by `--print-config`).
    pub unset: &'static str,
}

/// One key of the file, turned into its flag's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key (a flag name).
    pub key: &'static str,
    /// Its 1-based line in the file.
    pub line: usize,
    /// `--key value ...`, as the command line would have it.
    pub args: Vec<String>,
}

/// Reads and parses the config file at `path` against `flags`.
///
/// # Errors
/// One line naming the file, and the line and key where there is one.
pub fn read(path: &str, flags: &[Flag]) -> Result<Vec<Entry>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("config file {path}: {e}"))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("config file {path}: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "config file {path} is larger than {} KiB",
            MAX_FILE_BYTES >> 10
        ));
    }
    parse(path, &text, flags)
}

/// Parses config text: every key must be one of `flags`, with a value of
/// the kind its flag takes. Entries come in file order.
///
/// # Errors
/// One line: `config file PATH line N: ...`.
pub fn parse(path: &str, text: &str, flags: &[Flag]) -> Result<Vec<Entry>, String> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let table = DeTable::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(s.start));
        let why = e
            .message()
            .lines()
            .next()
            .unwrap_or("not valid TOML")
            .trim();
        format!("config file {path} line {line}: {why}")
    })?;
    let mut entries = Vec::new();
    for (key, value) in table.get_ref() {
        let line = line_of(key.span().start);
        let at = |why: String| format!("config file {path} line {line}: {why}");
        let name = key.get_ref().as_ref();
        let Some(flag) = flags.iter().find(|f| f.name == name) else {
            return Err(at(unknown_key(name, flags)));
        };
        let args = to_args(flag, value.get_ref()).map_err(|why| at(format!("{name}: {why}")))?;
        entries.push(Entry {
            key: flag.name,
            line,
            args,
        });
    }
    entries.sort_by_key(|e| e.line);
    Ok(entries)
}

fn unknown_key(name: &str, flags: &[Flag]) -> String {
    let shown = name.escape_debug();
    if ["config", "print-config", "help"].contains(&name) {
        return format!("'{shown}' is a command-line flag only, not a config key");
    }
    let dashed = name.replace('_', "-");
    match flags.iter().find(|f| f.name == dashed) {
        Some(f) => format!("unknown key '{shown}' (did you mean '{}'?)", f.name),
        None => format!(
            "unknown key '{shown}' (the keys are the long flags of `mcrelay serve --help`, without --)"
        ),
    }
}

/// A TOML value as its flag's arguments.
fn to_args(flag: &Flag, value: &DeValue<'_>) -> Result<Vec<String>, String> {
    let dashed = format!("--{}", flag.name);
    match (flag.arity, value) {
        (Arity::Switch, DeValue::Boolean(true)) => Ok(vec![dashed]),
        (Arity::Switch, DeValue::Boolean(false)) => Ok(Vec::new()),
        (Arity::Switch, other) => Err(format!("expected true or false, not {}", kind(other))),
        (Arity::Value, v) => Ok(vec![dashed, scalar(v)?]),
        (Arity::List, DeValue::Array(items)) => {
            let mut args = Vec::with_capacity(items.len() * 2);
            for item in items {
                args.push(dashed.clone());
                args.push(scalar(item.get_ref())?);
            }
            Ok(args)
        }
        (Arity::List, v) => Ok(vec![dashed, scalar(v)?]),
    }
}

/// A string or an integer as flag text.
fn scalar(value: &DeValue<'_>) -> Result<String, String> {
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
            .map(|n| n.to_string())
            .map_err(|_| format!("integer {i} is out of range")),
        other => Err(format!(
            "expected a string or an integer, not {}",
            kind(other)
        )),
    }
}

fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array (only lists such as group and iface take several values)",
        DeValue::Table(_) => "a table",
    }
}

/// The file's arguments for the keys `cli` does not give, then `cli`: the
/// command line wins key by key.
pub fn merge(entries: &[Entry], cli: Vec<OsString>) -> Vec<OsString> {
    let given = |key: &str| {
        let flag = format!("--{key}");
        cli.iter().any(|a| a.to_str() == Some(flag.as_str()))
    };
    let mut args: Vec<OsString> = entries
        .iter()
        .filter(|e| !given(e.key))
        .flat_map(|e| e.args.iter().map(OsString::from))
        .collect();
    args.extend(cli);
    args
}

/// Renders a string as a TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One key's effective value as TOML text (`None`: not set).
pub type Values = Vec<(&'static str, Option<String>)>;

/// Renders effective values as a config file: every key, in `flags`
/// order; a key with no value is a comment saying what that means.
pub fn render(values: &Values, flags: &[Flag]) -> String {
    let mut out = String::from(
        "# mcrelay serve: the effective configuration (mcrelay serve --print-config).\n\
         # Usable as is with `mcrelay serve --config FILE`; command-line flags override it.\n",
    );
    for flag in flags {
        match values.iter().find(|(k, _)| *k == flag.name) {
            Some((k, Some(v))) => out.push_str(&format!("{k} = {v}\n")),
            Some((k, None)) => out.push_str(&format!("# {k} = ...  ({})\n", flag.unset)),
            None => {}
        }
    }
    out
}

/// When a change takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    /// On SIGHUP, in the running relay.
    Reload,
    /// Only after a restart.
    Restart,
}

/// One key whose effective value differs between two configurations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: &'static str,
    /// Its old value as TOML text (`None`: not set).
    pub old: Option<String>,
    /// Its new value.
    pub new: Option<String>,
    /// When the change takes effect.
    pub applies: Applies,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not set)".into());
        write!(
            f,
            "{}: {} -> {}{}",
            self.key,
            show(&self.old),
            show(&self.new),
            match self.applies {
                Applies::Reload => "",
                Applies::Restart => " (needs a restart)",
            }
        )
    }
}

/// The keys whose values differ between `old` and `new`, in `flags`
/// order, each marked with when it applies. (The contents of the token and
/// clients files are not values: a reload re-reads them in any case.)
pub fn changes(old: &Values, new: &Values, flags: &[Flag]) -> Vec<Change> {
    let get = |vs: &Values, key: &str| {
        vs.iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.clone())
    };
    flags
        .iter()
        .filter_map(|flag| {
            let (o, n) = (get(old, flag.name), get(new, flag.name));
            let applies = if flag.reload {
                Applies::Reload
            } else {
                Applies::Restart
            };
            (o != n).then_some(Change {
                key: flag.name,
                old: o,
                new: n,
                applies,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[
        Flag {
            name: "port",
            arity: Arity::Value,
            reload: false,
            unset: "",
        },
        Flag {
            name: "iface",
            arity: Arity::List,
            reload: false,
            unset: "",
        },
        Flag {
            name: "no-admin",
            arity: Arity::Switch,
            reload: false,
            unset: "",
        },
        Flag {
            name: "token-file",
            arity: Arity::Value,
            reload: true,
            unset: "no shared token",
        },
        Flag {
            name: "client-timeout",
            arity: Arity::Value,
            reload: true,
            unset: "",
        },
    ];

    fn args(entries: &[Entry]) -> Vec<String> {
        entries.iter().flat_map(|e| e.args.clone()).collect()
    }

    #[test]
    fn keys_become_flag_arguments() {
        let text = "# a comment\nport = 5009\niface = [\"br-lan\", \"lan0.20\"]\n\
                    no-admin = true\ntoken-file = '/etc/t'\nclient-timeout = 0x10\n";
        let e = parse("f", text, FLAGS).unwrap();
        assert_eq!(
            args(&e),
            [
                "--port",
                "5009",
                "--iface",
                "br-lan",
                "--iface",
                "lan0.20",
                "--no-admin",
                "--token-file",
                "/etc/t",
                "--client-timeout",
                "16"
            ]
        );
        assert_eq!(
            e.iter().map(|e| e.line).collect::<Vec<_>>(),
            [2, 3, 4, 5, 6]
        );
        let e = parse(
            "f",
            "no-admin = false\niface = \"eth0\"\niface_x = 1\n",
            FLAGS,
        );
        assert!(e.unwrap_err().contains("line 3: unknown key 'iface_x'"));
        let e = parse("f", "no-admin = false\niface = \"eth0\"\n", FLAGS).unwrap();
        assert_eq!(args(&e), ["--iface", "eth0"]);
        assert!(parse("f", "", FLAGS).unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_line_and_key() {
        for (text, want) in [
            (
                "\n\nfoo = 1\n",
                "config file f line 3: unknown key 'foo' (the keys are",
            ),
            (
                "client_timeout = 1\n",
                "line 1: unknown key 'client_timeout' (did you mean 'client-timeout'?)",
            ),
            (
                "config = \"x\"\n",
                "line 1: 'config' is a command-line flag only",
            ),
            (
                "port = true\n",
                "line 1: port: expected a string or an integer, not a boolean",
            ),
            (
                "port = 1.5\n",
                "port: expected a string or an integer, not a float",
            ),
            (
                "port = [1, 2]\n",
                "port: expected a string or an integer, not an array",
            ),
            (
                "no-admin = \"yes\"\n",
                "no-admin: expected true or false, not a string",
            ),
            (
                "iface = [\"a\", true]\n",
                "iface: expected a string or an integer, not a boolean",
            ),
            ("\nport = 1\nport = 2\n", "config file f line 3: "),
            ("port = \n", "config file f line 1: "),
            ("[admin]\nport = 1\n", "line 1: unknown key 'admin'"),
        ] {
            let e = parse("f", text, FLAGS).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn the_command_line_overrides_key_by_key() {
        let e = parse(
            "f",
            "port = 1\niface = [\"a\", \"b\"]\nno-admin = true\n",
            FLAGS,
        )
        .unwrap();
        let cli: Vec<OsString> = ["--iface", "c", "--client-timeout", "5"]
            .iter()
            .map(OsString::from)
            .collect();
        let merged: Vec<String> = merge(&e, cli)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            merged,
            [
                "--port",
                "1",
                "--no-admin",
                "--iface",
                "c",
                "--client-timeout",
                "5"
            ]
        );
    }

    #[test]
    fn render_and_changes() {
        let old: Values = vec![
            ("port", Some("5007".into())),
            ("iface", Some("[\"a\"]".into())),
            ("no-admin", Some("false".into())),
            ("token-file", None),
            ("client-timeout", Some("60".into())),
        ];
        let text = render(&old, FLAGS);
        assert!(text.contains("\nport = 5007\n"), "{text}");
        assert!(
            text.contains("\n# token-file = ...  (no shared token)\n"),
            "{text}"
        );
        // What render prints parses back to the same arguments.
        let e = parse("f", &text, FLAGS).unwrap();
        assert_eq!(
            args(&e),
            ["--port", "5007", "--iface", "a", "--client-timeout", "60"]
        );
        let mut new = old.clone();
        new[0].1 = Some("5008".into());
        new[3].1 = Some("\"/etc/t\"".into());
        new[4].1 = Some("30".into());
        let c = changes(&old, &new, FLAGS);
        assert_eq!(
            c.iter().map(|c| (c.key, c.applies)).collect::<Vec<_>>(),
            [
                ("port", Applies::Restart),
                ("token-file", Applies::Reload),
                ("client-timeout", Applies::Reload)
            ]
        );
        assert_eq!(c[0].to_string(), "port: 5007 -> 5008 (needs a restart)");
        assert_eq!(c[1].to_string(), "token-file: (not set) -> \"/etc/t\"");
        assert!(changes(&old, &old, FLAGS).is_empty());
    }

    #[test]
    fn strings_escape() {
        assert_eq!(toml_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        let text = format!(
            "token-file = {}\n",
            toml_string("/tmp/we\"ird\\ path\u{7f}")
        );
        let e = parse("f", &text, FLAGS).unwrap();
        assert_eq!(e[0].args[1], "/tmp/we\"ird\\ path\u{7f}");
    }
}
