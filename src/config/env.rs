//! `${NAME}` and `${NAME:-fallback}` in the config's string values, expanded from the
//! environment before the file is read, so secrets stay out of the file.
//!
//! Expansion works on the text: each string literal that uses a variable is replaced by
//! a literal of its expanded value, and every edit is remembered so that a problem found
//! later in the expanded text is reported at the place in the file as written. An unset
//! variable without a fallback is a problem at its string. The values that came from
//! the environment are kept as secrets: `/config` and every config error show the
//! `${NAME}` they came from, never the value.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Value};

/// The text with its variables expanded, and what it takes to point back into the
/// text as written.
#[derive(Debug, Default, Clone)]
pub struct Expanded {
    pub text: String,
    /// Literals replaced, in order: where each stood and where its replacement stands.
    edits: Vec<Edit>,
    /// Unset variables and malformed references, at their place in the original text.
    pub problems: Vec<(Range<usize>, String)>,
    /// Each variable's value and the reference it came from, for hiding.
    pub secrets: Secrets,
}

#[derive(Debug, Clone)]
struct Edit {
    original: Range<usize>,
    expanded: Range<usize>,
}

/// Values that came from the environment, each with the `${NAME}` it came from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Secrets(Vec<(String, String)>);

impl Secrets {
    /// `text` with every value from the environment shown as the reference it came
    /// from. Values shorter than four characters are left (they are not secrets, and
    /// hiding them would garble the text).
    pub fn hide(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (value, reference) in &self.0 {
            if value.len() >= 4 && out.contains(value.as_str()) {
                out = out.replace(value.as_str(), reference);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Expanded {
    /// The offset in the original text of an offset in the expanded one: inside a
    /// replaced literal, the literal's start.
    pub fn original_offset(&self, at: usize) -> usize {
        let mut shift: isize = 0;
        for e in &self.edits {
            if at < e.expanded.start {
                break;
            }
            if at < e.expanded.end {
                return e.original.start;
            }
            shift = (e.original.end as isize) - (e.expanded.end as isize);
        }
        (at as isize + shift).max(0) as usize
    }
}

/// Expands `text`, looking variables up with `lookup`. Text that is not TOML is returned
/// as it is (its syntax error is reported by the reader).
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Expanded {
    let mut out = Expanded {
        text: text.to_string(),
        ..Default::default()
    };
    if !text.contains("${") {
        return out;
    }
    let Ok(doc) = ImDocument::parse(text) else {
        return out;
    };
    let mut literals = Vec::new();
    collect_item(doc.as_item(), &mut literals);
    literals.sort_by_key(|(span, _)| span.start);
    let mut expanded = String::with_capacity(text.len());
    let mut at = 0;
    for (span, value) in literals {
        match substitute(&value, &lookup, &mut out.secrets) {
            Ok(v) => {
                expanded.push_str(&text[at..span.start]);
                // A JSON string is a valid TOML basic string.
                let literal = serde_json::to_string(&v).unwrap_or_else(|_| "\"\"".into());
                let start = expanded.len();
                expanded.push_str(&literal);
                out.edits.push(Edit {
                    original: span.clone(),
                    expanded: start..expanded.len(),
                });
                at = span.end;
            }
            Err(message) => out.problems.push((span, message)),
        }
    }
    expanded.push_str(&text[at..]);
    out.text = expanded;
    out
}

/// Every string value (at any depth) that refers to a variable, with its span.
fn collect_item(item: &Item, out: &mut Vec<(Range<usize>, String)>) {
    match item {
        Item::Value(v) => collect_value(v, out),
        Item::Table(t) => t.iter().for_each(|(_, i)| collect_item(i, out)),
        Item::ArrayOfTables(a) => a
            .iter()
            .for_each(|t| t.iter().for_each(|(_, i)| collect_item(i, out))),
        Item::None => {}
    }
}

fn collect_value(v: &Value, out: &mut Vec<(Range<usize>, String)>) {
    match v {
        Value::String(s) if s.value().contains("${") => {
            if let Some(span) = s.span() {
                out.push((span, s.value().clone()));
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_value(v, out)),
        Value::InlineTable(t) => t.iter().for_each(|(_, v)| collect_value(v, out)),
        _ => {}
    }
}

/// One string with its references replaced.
fn substitute(
    s: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    secrets: &mut Secrets,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "unclosed reference {:?}: write ${{NAME}} or ${{NAME:-fallback}}",
                &rest[i..]
            ));
        };
        let inner = &after[..end];
        let (name, fallback) = match inner.split_once(":-") {
            Some((n, f)) => (n, Some(f)),
            None => (inner, None),
        };
        if !is_name(name) {
            return Err(format!(
                "${{{inner}}} is not a variable reference: a name is letters, digits and '_', not starting with a digit"
            ));
        }
        let value = match (lookup(name), fallback) {
            (Some(v), _) => {
                let reference = format!("${{{name}}}");
                if !secrets.0.iter().any(|(s, _)| s == &v) {
                    secrets.0.push((v.clone(), reference));
                }
                v
            }
            (None, Some(f)) => f.to_string(),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set: export it, or write ${{{name}:-fallback}} for a default"
                ))
            }
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cr3t-token".into()),
            "PORT" => Some("9001".into()),
            "QUOTE" => Some("a\"b\\c".into()),
            _ => None,
        }
    }

    #[test]
    fn references_are_expanded_in_every_string() {
        let text =
            "a = \"${TOKEN}\"\nb = [\"127.0.0.1:${PORT}\"]\nc = { d = \"x${MISSING:-fb}y\" }\n";
        let e = expand(text, env);
        assert!(e.problems.is_empty(), "{:?}", e.problems);
        let v: toml::Value = toml::from_str(&e.text).unwrap();
        assert_eq!(v["a"].as_str(), Some("s3cr3t-token"));
        assert_eq!(v["b"][0].as_str(), Some("127.0.0.1:9001"));
        assert_eq!(v["c"]["d"].as_str(), Some("xfby"));
        let e = expand("q = \"${QUOTE}\"", env);
        let v: toml::Value = toml::from_str(&e.text).unwrap();
        assert_eq!(v["q"].as_str(), Some("a\"b\\c"));
    }

    #[test]
    fn an_unset_variable_is_a_problem_at_its_string() {
        let text = "a = 1\nb = \"${NOPE}\"\n";
        let e = expand(text, env);
        assert_eq!(e.problems.len(), 1);
        let (span, message) = &e.problems[0];
        assert_eq!(&text[span.clone()], "\"${NOPE}\"");
        assert!(message.contains("NOPE is not set"), "{message}");
        let e = expand("a = \"${1X}\"\nb = \"${OPEN\"", env);
        assert_eq!(e.problems.len(), 2);
    }

    #[test]
    fn offsets_after_an_edit_point_back_into_the_file() {
        let text = "a = \"${TOKEN}\"\nb = 5\n";
        let e = expand(text, env);
        let b_expanded = e.text.find("b = 5").unwrap();
        assert_eq!(e.original_offset(b_expanded), text.find("b = 5").unwrap());
        let inside = e.text.find("s3cr3t").unwrap();
        assert_eq!(e.original_offset(inside), text.find('"').unwrap());
        assert_eq!(e.original_offset(0), 0);
    }

    #[test]
    fn secrets_are_shown_as_their_reference() {
        let e = expand("a = \"Bearer ${TOKEN}\"", env);
        assert_eq!(
            e.secrets.hide("header Bearer s3cr3t-token"),
            "header Bearer ${TOKEN}"
        );
        assert!(expand("a = \"plain\"", env).secrets.is_empty());
    }
}
