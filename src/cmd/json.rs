//! Just enough hand-written JSON for the commands' `--json` output
//! (`bench` reports, `listen` event lines): objects built field by field,
//! no dependency.

use std::fmt::Write;

/// A JSON object under construction.
#[derive(Default)]
pub struct Obj {
    out: String,
}

/// Appends `v` as a JSON string literal (RFC 8259 §7).
fn push_string(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Legal raw in JSON, but not in JavaScript strings before ES2019.
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON number for `v` (`null` when it is not finite: JSON has no NaN).
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        "null".into()
    } else if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.6}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .into()
    }
}

/// A JSON array of already-encoded values.
pub fn array(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    format!("[{}]", items.join(","))
}

impl Obj {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a field whose value is already JSON.
    pub fn raw(mut self, key: &str, value: String) -> Self {
        self.key(key);
        self.out.push_str(&value);
        self
    }

    /// Starts a field: the separator, the key and the colon.
    fn key(&mut self, key: &str) {
        if !self.out.is_empty() {
            self.out.push(',');
        }
        push_string(&mut self.out, key);
        self.out.push(':');
    }

    /// Adds a number field.
    pub fn num(self, key: &str, v: f64) -> Self {
        self.raw(key, number(v))
    }

    /// Adds a number field, or `null`.
    pub fn opt(self, key: &str, v: Option<f64>) -> Self {
        self.raw(key, v.map_or("null".into(), number))
    }

    /// Adds a string field.
    pub fn str(mut self, key: &str, v: &str) -> Self {
        self.key(key);
        push_string(&mut self.out, v);
        self
    }

    /// Adds a boolean field.
    pub fn bool(self, key: &str, v: bool) -> Self {
        self.raw(key, v.to_string())
    }

    /// The finished object.
    pub fn finish(self) -> String {
        format!("{{{}}}", self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_numbers() {
        let o = Obj::new()
            .str("a\"b", "x\\y\n\u{1}")
            .num("n", 3.0)
            .num("f", 0.25)
            .num("nan", f64::NAN)
            .opt("none", None)
            .bool("t", true)
            .raw("arr", array(["1".to_string(), "2".to_string()]))
            .finish();
        assert_eq!(
            o,
            r#"{"a\"b":"x\\y\n\u0001","n":3,"f":0.25,"nan":null,"none":null,"t":true,"arr":[1,2]}"#
        );
    }
}
