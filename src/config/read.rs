//! Reading a TOML file into the file model so that one problem never hides the next.
//!
//! serde stops at the first unknown key or wrong type. To report every one, the text is
//! parsed into a spanned document first; when deserialization fails, the entry the
//! error points into (the deepest key and its value, or failing that the table around
//! it) is blanked out of the text, bytes replaced by spaces so every other span stays
//! where it was, and deserialization runs again. What finally deserializes goes on to
//! validation, so its problems are reported too.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml_edit::{ImDocument, Item, Table, Value};

/// A problem at a byte range of the original text.
pub type Problem = (Range<usize>, String);

/// More than this many problems in one file and the rest are not looked for.
const MAX_PROBLEMS: usize = 100;

/// Deserializes `text` into `T`, collecting every problem on the way. The value is what
/// remains once the entries with problems are taken out (`None` when the text is not
/// TOML at all, or what remains still does not deserialize).
pub fn deserialize_all<T: DeserializeOwned>(text: &str) -> (Option<T>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut pruned = text.to_string();
    // Keys taken out so far, with where they stood: the "missing field" a required key's
    // removal causes is no second problem.
    let mut blanked: Vec<(String, usize)> = Vec::new();
    for _ in 0..MAX_PROBLEMS {
        let doc = match ImDocument::parse(pruned.as_str()) {
            Ok(doc) => doc,
            Err(e) => {
                // Only the original text's syntax errors are the user's; a blanked
                // entry that leaves broken syntax behind ends the search instead.
                if problems.is_empty() {
                    problems.push((e.span().unwrap_or(0..0), e.message().to_string()));
                }
                return (None, problems);
            }
        };
        let error = match toml::from_str::<T>(&pruned) {
            Ok(value) => return (Some(value), problems),
            Err(e) => e,
        };
        let span = error.span().unwrap_or(0..0);
        let message = error.message().trim_end().to_string();
        let Some(target) = entry_around(doc.as_table(), span.start, false)
            .or_else(|| table_around(doc.as_table(), span.start))
        else {
            problems.push((span, message));
            return (None, problems);
        };
        // The table runs on to the next header, past entries already blanked.
        let region_end = pruned[target.range.end..]
            .find("\n[")
            .map_or(pruned.len(), |i| target.range.end + i);
        let region = target.range.start..region_end;
        let consequence = missing_field(&message).is_some_and(|name| {
            blanked
                .iter()
                .any(|(key, at)| key == name && region.contains(at))
        });
        if !consequence {
            problems.push((span, message));
        }
        if let Some(key) = &target.key {
            blanked.push((key.clone(), target.range.start));
        }
        blank(&mut pruned, target);
    }
    (None, problems)
}

/// The key serde's "missing field `key`" names.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// What to blank: a byte range, whether it sits inside an inline table (whose
/// separating comma must go with it), and the key when it is one entry.
struct Target {
    range: Range<usize>,
    inline: bool,
    key: Option<String>,
}

/// The deepest key/value entry whose key or value contains byte `at`.
fn entry_around(table: &Table, at: usize, inline: bool) -> Option<Target> {
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        match item {
            Item::Value(value) => {
                if let Some(found) = value_entry(name, key.span(), value, at, inline) {
                    return Some(found);
                }
            }
            Item::Table(t) => {
                if let Some(found) = entry_around(t, at, false) {
                    return Some(found);
                }
            }
            Item::ArrayOfTables(tables) => {
                if let Some(found) = tables.iter().find_map(|t| entry_around(t, at, false)) {
                    return Some(found);
                }
            }
            Item::None => {}
        }
    }
    None
}

fn value_entry(
    name: &str,
    key: Option<Range<usize>>,
    value: &Value,
    at: usize,
    inline: bool,
) -> Option<Target> {
    let (key, span) = (key?, value.span()?);
    let range = key.start.min(span.start)..span.end.max(key.end);
    if !range.contains(&at) {
        return None;
    }
    if let Value::InlineTable(t) = value {
        for (inner, _) in t.iter() {
            if let Some((k, Item::Value(v))) = t.get_key_value(inner) {
                if let Some(found) = value_entry(inner, k.span(), v, at, true) {
                    return Some(found);
                }
            }
        }
    }
    Some(Target {
        range,
        inline,
        key: Some(name.to_string()),
    })
}

/// The innermost table (its header and everything in it) that contains byte `at`.
fn table_around(table: &Table, at: usize) -> Option<Target> {
    for (_, item) in table.iter() {
        let children: Vec<&Table> = match item {
            Item::Table(t) => vec![t],
            Item::ArrayOfTables(a) => a.iter().collect(),
            _ => continue,
        };
        for child in children {
            if let Some(found) = table_around(child, at) {
                return Some(found);
            }
            if let Some(range) = extent(child) {
                if range.contains(&at) {
                    return Some(Target {
                        range,
                        inline: false,
                        key: None,
                    });
                }
            }
        }
    }
    None
}

/// A table's header and everything it holds, as one byte range.
fn extent(table: &Table) -> Option<Range<usize>> {
    let mut range = table.span()?;
    for (name, item) in table.iter() {
        let key_end = table
            .get_key_value(name)
            .and_then(|(k, _)| k.span())
            .map(|s| s.end);
        let item_end = match item {
            Item::Value(v) => v.span().map(|s| s.end),
            Item::Table(t) => extent(t).map(|s| s.end),
            Item::ArrayOfTables(a) => a.iter().filter_map(extent).map(|s| s.end).max(),
            Item::None => None,
        };
        if let Some(end) = item_end.or(key_end) {
            range.end = range.end.max(end);
        }
    }
    Some(range)
}

/// Replaces the target's bytes with spaces (newlines stay, so lines keep their numbers).
fn blank(text: &mut String, target: Target) {
    let mut range = target.range;
    let bytes = text.as_bytes();
    if target.inline {
        // `{ a = 1, b = 2 }` without `a = 1` must lose one comma too.
        let after = bytes[range.end..].iter().position(|b| *b != b' ');
        match after.map(|i| range.end + i) {
            Some(i) if bytes[i] == b',' => range.end = i + 1,
            _ => {
                if let Some(i) = bytes[..range.start].iter().rposition(|b| *b != b' ') {
                    if bytes[i] == b',' {
                        range.start = i;
                    }
                }
            }
        }
    }
    let replaced: String = text[range.clone()]
        .chars()
        .flat_map(|c| {
            let n = if c == '\n' { 0 } else { c.len_utf8() };
            std::iter::repeat_n(' ', n).chain((c == '\n').then_some('\n'))
        })
        .collect();
    text.replace_range(range, &replaced);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        #[serde(default)]
        a: Option<Section>,
        #[serde(default)]
        items: Vec<Item2>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        n: Option<i64>,
        s: Option<String>,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        x: Option<i64>,
        y: Option<i64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item2 {
        name: String,
    }

    fn lines(text: &str) -> Vec<(usize, String)> {
        let (_, problems) = deserialize_all::<Doc>(text);
        problems
            .into_iter()
            .map(|(span, m)| (text[..span.start].matches('\n').count() + 1, m))
            .collect()
    }

    #[test]
    fn every_unknown_key_and_wrong_type_is_found() {
        let text = "[a]\nn = \"x\"\nbogus = 1\ns = 3\nalso = 2\n";
        let found = lines(text);
        let at: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
        assert_eq!(at.len(), 4, "{found:?}");
        for line in [2, 3, 4, 5] {
            assert!(at.contains(&line), "line {line} in {found:?}");
        }
        assert!(found
            .iter()
            .any(|(_, m)| m.contains("unknown field `bogus`")));
    }

    #[test]
    fn a_bad_element_does_not_hide_the_next() {
        let text = "[[items]]\nnam = \"a\"\n\n[[items]]\nname = 3\n\n[[items]]\nname = \"ok\"\n";
        let found = lines(text);
        let at: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
        assert!(at.contains(&2) && at.contains(&5), "{found:?}");
    }

    #[test]
    fn a_required_key_taken_out_is_not_missing_as_well() {
        let text = "[[items]]\nname = 3\n\n[[items]]\nother = 1\n";
        let found = lines(text);
        // name's wrong type, then other's unknown key and that item's missing name.
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].1.contains("invalid type"), "{found:?}");
        assert!(
            found
                .iter()
                .any(|(l, m)| *l == 4 && m.contains("missing field `name`")),
            "{found:?}"
        );
    }

    #[test]
    fn inline_tables_lose_the_bad_entry_and_its_comma() {
        let text = "[a]\ninner = { x = \"no\", y = \"neither\" }\n";
        let found = lines(text);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn a_clean_file_deserializes_and_a_syntax_error_is_one_problem() {
        let (value, problems) = deserialize_all::<Doc>("[a]\nn = 1\n");
        assert!(value.is_some() && problems.is_empty());
        let (value, problems) = deserialize_all::<Doc>("[a\nn = 1\n");
        assert!(value.is_none());
        assert_eq!(problems.len(), 1);
    }
}
