//! Setting one value of a params file (YAML or JSON) in place, as `dvc exp run --set-param`
//! does: only the scalar's own text is replaced, so comments, key order, quoting and layout stay
//! as the user wrote them.
//!
//! The parser gives the position where the scalar starts; its end is found by the rules of its
//! style (plain, single- or double-quoted). Every edit is then checked by reading the new text
//! back: every other value must be unchanged and the edited one must read as intended, so a
//! mistake here is an error, never a damaged file. Files with anchors, aliases and merge keys are
//! read as everywhere else in Kiln; a value whose text is shared through them is refused, since
//! rewriting it would change every key that shares it.

use marked_yaml::Node;

use crate::values::{FlatValues, Scalar, parse_flat};

/// Why a value could not be set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EditError {
    #[error("the file is not valid YAML or JSON: {0}")]
    Parse(String),
    #[error("there is no `{key}` in the file")]
    NotFound { key: String },
    #[error("`{key}` is a {kind}, not a single value; set one of its keys instead: {keys}")]
    NotAValue {
        key: String,
        kind: &'static str,
        keys: String,
    },
    #[error("cannot set `{key}`: its value is {what}, which Kiln does not edit")]
    Unsupported { key: String, what: &'static str },
    #[error("cannot write {value} into `{key}`: {why}")]
    Unwritable {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error(
        "`{key}` shares its text with {others} (through an anchor, an alias or a merge key): setting it would change them too; write `{key}` out on its own in the file first"
    )]
    Shared { key: String, others: String },
    #[error(
        "setting `{key}` would not read back as intended ({detail}); the file was left as it is"
    )]
    Check { key: String, detail: String },
}

/// The syntax a params file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    /// Strings are always double-quoted and numbers must be JSON numbers.
    Json,
}

impl Format {
    /// JSON for `.json` files, YAML otherwise.
    pub fn of_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// A value set in a file's text.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    /// The whole new text of the file.
    pub text: String,
    /// The value before.
    pub previous: Scalar,
    /// The value now, as the new text reads.
    pub value: Scalar,
    /// Every value of the new text, flattened (what a reader of the file will see).
    pub values: FlatValues,
}

/// Sets the value at the dotted `key` (`train.C`, `layers.0`) of `text` to `value`.
pub fn set_value(text: &str, key: &str, value: &Scalar, format: Format) -> Result<Edit, EditError> {
    let before = parse_flat(text).map_err(EditError::Parse)?;
    // The loader Kiln reads every YAML file with: anchors, aliases and merge keys included. A
    // value that comes through an alias keeps the position of the text it was copied from.
    let options = crate::yaml::Options {
        duplicate_keys_are_errors: false,
        quoted_is_text: true,
    };
    let root = crate::yaml::load(text, options).map_err(|e| EditError::Parse(e.to_string()))?;
    let parts: Vec<&str> = key.split('.').collect();
    let (node, in_flow) =
        find(text, &root, &parts, is_flow(text, &root)).ok_or(EditError::NotFound {
            key: key.to_string(),
        })?;
    let scalar = match node {
        Node::Scalar(scalar) => scalar,
        Node::Mapping(_) | Node::Sequence(_) => {
            let keys: Vec<String> = crate::values::select(&before, key)
                .map(|(k, _)| format!("`{k}`"))
                .take(8)
                .collect();
            return Err(EditError::NotAValue {
                key: key.to_string(),
                kind: if matches!(node, Node::Mapping(_)) {
                    "mapping"
                } else {
                    "list"
                },
                keys: if keys.is_empty() {
                    "(it has none)".to_string()
                } else {
                    keys.join(", ")
                },
            });
        }
    };
    let previous = before.get(key).cloned().ok_or(EditError::NotFound {
        key: key.to_string(),
    })?;
    let start = scalar
        .span()
        .start()
        .and_then(|marker| byte_offset(text, marker.character()))
        .ok_or_else(|| EditError::Check {
            key: key.to_string(),
            detail: "the parser gave no position for it".to_string(),
        })?;
    let style = Style::at(&text[start..], scalar.may_coerce());
    let end = match style {
        Style::Plain => plain_end(text, start, in_flow),
        Style::Single => single_quoted_end(text, start),
        Style::Double => double_quoted_end(text, start),
        Style::Block => {
            return Err(EditError::Unsupported {
                key: key.to_string(),
                what: "a block scalar (`|` or `>`)",
            });
        }
        Style::Other => {
            return Err(EditError::Unsupported {
                key: key.to_string(),
                what: "tagged or anchored",
            });
        }
    }
    .ok_or_else(|| EditError::Check {
        key: key.to_string(),
        detail: "the end of its text was not found".to_string(),
    })?;
    if style == Style::Plain && text[start..end] != *scalar.as_str() {
        let what = if scalar.as_str().is_empty() {
            "empty (`key:` with nothing after it)"
        } else {
            "written over several lines"
        };
        return Err(EditError::Unsupported {
            key: key.to_string(),
            what,
        });
    }
    let replacement = render(key, value, style, format, in_flow)?;
    let mut new_text = String::with_capacity(text.len() + replacement.len());
    new_text.push_str(&text[..start]);
    new_text.push_str(&replacement);
    new_text.push_str(&text[end..]);

    // Read it back: the edited value as intended, every other value untouched.
    let check = |detail: String| EditError::Check {
        key: key.to_string(),
        detail,
    };
    let after =
        parse_flat(&new_text).map_err(|e| check(format!("the new text is invalid: {e}")))?;
    let written = after
        .get(key)
        .cloned()
        .ok_or_else(|| check("the key is gone".to_string()))?;
    if !same_value(&written, value) {
        return Err(check(format!("it would read as `{written}`")));
    }
    let mut expected = before;
    expected.insert(key.to_string(), written.clone());
    if expected != after {
        let changed: Vec<String> = after
            .iter()
            .filter(|(k, v)| expected.get(*k) != Some(*v))
            .map(|(k, _)| format!("`{k}`"))
            .take(5)
            .collect();
        return Err(EditError::Shared {
            key: key.to_string(),
            others: changed.join(", "),
        });
    }
    Ok(Edit {
        text: new_text,
        previous,
        value: written,
        values: after,
    })
}

/// The same value, a NaN included (`NaN != NaN`).
fn same_value(a: &Scalar, b: &Scalar) -> bool {
    match (a, b) {
        (Scalar::Number(x), Scalar::Number(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

/// Whether a collection is written in flow style (`{...}`, `[...]`, as in JSON): its first
/// character says.
fn is_flow(text: &str, node: &Node) -> bool {
    !matches!(node, Node::Scalar(_))
        && node
            .span()
            .start()
            .and_then(|m| byte_offset(text, m.character()))
            .and_then(|at| text[at..].chars().next())
            .is_some_and(|c| c == '{' || c == '[')
}

/// The node at `parts` and whether it sits inside a flow collection. A mapping key may itself
/// hold dots (`"a.b": 1`): the longest key that matches is taken first.
fn find<'a>(text: &str, node: &'a Node, parts: &[&str], in_flow: bool) -> Option<(&'a Node, bool)> {
    if parts.is_empty() {
        return Some((node, in_flow));
    }
    match node {
        Node::Mapping(mapping) => (1..=parts.len()).rev().find_map(|n| {
            let name = parts[..n].join(".");
            let child = mapping.get_node(&name)?;
            find(text, child, &parts[n..], in_flow || is_flow(text, child))
        }),
        Node::Sequence(sequence) => {
            let index: usize = parts[0].parse().ok()?;
            let child = sequence.get_node(index)?;
            find(text, child, &parts[1..], in_flow || is_flow(text, child))
        }
        Node::Scalar(_) => None,
    }
}

/// The byte offset of the `n`th character.
fn byte_offset(text: &str, n: usize) -> Option<usize> {
    if n == text.chars().count() {
        return Some(text.len());
    }
    text.char_indices().nth(n).map(|(i, _)| i)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    Single,
    Double,
    Block,
    Other,
}

impl Style {
    fn at(rest: &str, plain: bool) -> Style {
        match rest.chars().next() {
            Some('"') if !plain => Style::Double,
            Some('\'') if !plain => Style::Single,
            Some('|' | '>') if !plain => Style::Block,
            Some('&' | '!' | '*') => Style::Other,
            _ if plain => Style::Plain,
            _ => Style::Other,
        }
    }
}

/// The end of a plain scalar starting at `start`: the end of the line, a comment, or (inside
/// `{...}` or `[...]`) the next `,`, `]` or `}`; trailing blanks are not part of it.
fn plain_end(text: &str, start: usize, in_flow: bool) -> Option<usize> {
    let rest = &text[start..];
    let mut end = rest.len();
    let mut previous = ' ';
    for (i, c) in rest.char_indices() {
        let stop = c == '\n'
            || c == '\r'
            || (c == '#' && (previous == ' ' || previous == '\t'))
            || (in_flow && matches!(c, ',' | ']' | '}'));
        if stop {
            end = i;
            break;
        }
        previous = c;
    }
    Some(start + rest[..end].trim_end_matches([' ', '\t']).len())
}

/// The end (after the closing quote) of a single-quoted scalar; `''` is an escaped quote.
fn single_quoted_end(text: &str, start: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            if bytes.get(i + 1) == Some(&b'\'') {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// The end (after the closing quote) of a double-quoted scalar; `\` escapes the next character.
fn double_quoted_end(text: &str, start: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The text of `value` in the file: its original quoting for text, and forms that YAML 1.2,
/// PyYAML (YAML 1.1, what most training scripts read with) and JSON all read alike.
fn render(
    key: &str,
    value: &Scalar,
    original: Style,
    format: Format,
    in_flow: bool,
) -> Result<String, EditError> {
    Ok(match value {
        Scalar::Int(i) => i.to_string(),
        Scalar::Number(n) if !n.is_finite() => {
            return Err(EditError::Unwritable {
                key: key.to_string(),
                value: value.to_string(),
                why: "JSON and Kiln's params reader have no infinite or NaN numbers",
            });
        }
        Scalar::Number(n) => float_text(*n),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Null => "null".to_string(),
        Scalar::Text(text) => {
            let quoted_double = format == Format::Json || original == Style::Double;
            if quoted_double || text.chars().any(char::is_control) {
                double_quoted(text)
            } else if original == Style::Single {
                format!("'{}'", text.replace('\'', "''"))
            } else if plain_is_safe(text, in_flow) {
                text.clone()
            } else {
                double_quoted(text)
            }
        }
    })
}

/// A float that every reader takes for a float: a `.` in the mantissa and a signed exponent
/// (`1.0e-07` style), since PyYAML reads `1e-7` as a string.
fn float_text(n: f64) -> String {
    let shortest = ryu::Buffer::new().format_finite(n).to_string();
    match shortest.split_once('e') {
        None => shortest,
        Some((mantissa, exponent)) => {
            let mantissa = if mantissa.contains('.') {
                mantissa.to_string()
            } else {
                format!("{mantissa}.0")
            };
            let exponent = if exponent.starts_with('-') {
                exponent.to_string()
            } else {
                format!("+{exponent}")
            };
            format!("{mantissa}e{exponent}")
        }
    }
}

/// Text that reads back as the same text unquoted, in YAML 1.2 and in PyYAML alike.
fn plain_is_safe(text: &str, in_flow: bool) -> bool {
    let mut chars = text.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '/');
    let rest_ok = chars.all(|c| {
        c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/') || (c == ' ' && !in_flow)
    });
    let ambiguous = matches!(
        text.to_ascii_lowercase().as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
    );
    first_ok
        && rest_ok
        && !ambiguous
        && !text.ends_with(' ')
        && Scalar::from_yaml(text) == Scalar::Text(text.to_string())
}

/// A double-quoted string, valid in YAML and JSON alike.
fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str, key: &str, value: Scalar) -> Result<String, EditError> {
        set_value(text, key, &value, Format::Yaml).map(|edit| edit.text)
    }

    #[test]
    fn only_the_value_changes_comments_and_layout_stay() {
        let text = "# Training params\ntrain:\n  C: 1.0   # regularisation\n  max_iter: 200\n\nseed: 7 # fixed\n";
        let edit = set_value(text, "train.C", &Scalar::Number(0.5), Format::Yaml).unwrap();
        assert_eq!(
            edit.text,
            "# Training params\ntrain:\n  C: 0.5   # regularisation\n  max_iter: 200\n\nseed: 7 # fixed\n"
        );
        assert_eq!(edit.previous, Scalar::Number(1.0));
        assert_eq!(edit.value, Scalar::Number(0.5));
        assert_eq!(
            set(text, "seed", Scalar::Int(42)).unwrap(),
            text.replace("seed: 7", "seed: 42")
        );
    }

    #[test]
    fn flow_mappings_and_lists() {
        assert_eq!(
            set(
                "train: {C: 1, solver: lbfgs}\n",
                "train.C",
                Scalar::Number(0.25)
            )
            .unwrap(),
            "train: {C: 0.25, solver: lbfgs}\n"
        );
        assert_eq!(
            set(
                "train: {C: 1, solver: lbfgs}\n",
                "train.solver",
                Scalar::Text("saga".into())
            )
            .unwrap(),
            "train: {C: 1, solver: saga}\n"
        );
        assert_eq!(
            set("layers: [3, 4]\n", "layers.1", Scalar::Int(8)).unwrap(),
            "layers: [3, 8]\n"
        );
        assert_eq!(
            set("layers:\n  - 3\n  - 4\n", "layers.0", Scalar::Int(5)).unwrap(),
            "layers:\n  - 5\n  - 4\n"
        );
        // Text that would break the flow mapping is quoted.
        assert_eq!(
            set("t: {a: x, b: y}\n", "t.a", Scalar::Text("p, q".into())).unwrap(),
            "t: {a: \"p, q\", b: y}\n"
        );
    }

    #[test]
    fn quoted_strings_keep_their_quotes() {
        assert_eq!(
            set("name: 'old'\n", "name", Scalar::Text("it's".into())).unwrap(),
            "name: 'it''s'\n"
        );
        assert_eq!(
            set(
                "name: \"a \\\" b\"  # c\n",
                "name",
                Scalar::Text("new".into())
            )
            .unwrap(),
            "name: \"new\"  # c\n"
        );
        // Text that YAML would read as something else is quoted.
        assert_eq!(
            set("solver: lbfgs\n", "solver", Scalar::Text("yes".into())).unwrap(),
            "solver: \"yes\"\n"
        );
        assert_eq!(
            set("solver: lbfgs\n", "solver", Scalar::Text("1.10".into())).unwrap(),
            "solver: \"1.10\"\n"
        );
    }

    #[test]
    fn nested_keys_and_keys_with_dots() {
        let text = "model:\n  optimizer:\n    lr: 0.001\n    name: adam\n\"a.b\": 1\n";
        assert_eq!(
            set(text, "model.optimizer.lr", Scalar::Number(0.01)).unwrap(),
            text.replace("lr: 0.001", "lr: 0.01")
        );
        assert_eq!(
            set(text, "a.b", Scalar::Int(2)).unwrap(),
            text.replace("\"a.b\": 1", "\"a.b\": 2")
        );
    }

    #[test]
    fn floats_are_written_so_that_every_reader_sees_a_float() {
        assert_eq!(float_text(0.5), "0.5");
        assert_eq!(float_text(1.0), "1.0");
        assert_eq!(float_text(1e-7), "1.0e-7");
        assert_eq!(float_text(2.5e20), "2.5e+20");
        assert_eq!(
            set("lr: 1\n", "lr", Scalar::Number(1e-7)).unwrap(),
            "lr: 1.0e-7\n"
        );
    }

    #[test]
    fn json_files_stay_json() {
        let text = "{\n  \"train\": {\"C\": 1.0, \"solver\": \"lbfgs\"},\n  \"seed\": 7\n}\n";
        let edited = set_value(
            text,
            "train.solver",
            &Scalar::Text("saga".into()),
            Format::Json,
        )
        .unwrap()
        .text;
        assert_eq!(edited, text.replace("\"lbfgs\"", "\"saga\""));
        let edited = set_value(text, "train.C", &Scalar::Number(0.5), Format::Json)
            .unwrap()
            .text;
        assert_eq!(edited, text.replace("1.0", "0.5"));
    }

    #[test]
    fn a_mapping_is_refused_with_its_keys() {
        let error = set("train:\n  C: 1\n  max_iter: 5\n", "train", Scalar::Int(1)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "`train` is a mapping, not a single value; set one of its keys instead: `train.C`, `train.max_iter`"
        );
        assert!(matches!(
            set("layers: [1, 2]\n", "layers", Scalar::Int(1)),
            Err(EditError::NotAValue { kind: "list", .. })
        ));
        assert_eq!(
            set("a: 1\n", "b", Scalar::Int(1)),
            Err(EditError::NotFound { key: "b".into() })
        );
        assert!(matches!(
            set("a: |\n  text\n", "a", Scalar::Int(1)),
            Err(EditError::Unsupported { .. })
        ));
        assert!(matches!(
            set("a:\nb: 2\n", "a", Scalar::Int(1)),
            Err(EditError::Unsupported { .. })
        ));
        assert!(matches!(
            set("a: 1\n", "a", Scalar::Number(f64::INFINITY)),
            Err(EditError::Unwritable { .. })
        ));
        assert!(matches!(
            set("a: [1\n", "a", Scalar::Int(1)),
            Err(EditError::Parse(_))
        ));
    }

    #[test]
    fn multi_byte_text_before_the_value() {
        let text = "# paramètres: ünïcode\nname: café # ☕\nC: 1\n";
        assert_eq!(
            set(text, "C", Scalar::Int(2)).unwrap(),
            "# paramètres: ünïcode\nname: café # ☕\nC: 2\n"
        );
        assert_eq!(
            set(text, "name", Scalar::Text("thé".into())).unwrap(),
            "# paramètres: ünïcode\nname: thé # ☕\nC: 1\n"
        );
    }
}

#[cfg(test)]
mod anchor_tests {
    use super::*;

    const ANCHORED: &str = "defaults: &d {lr: 0.1, depth: 2}\ntrain: {<<: *d, epochs: 3}\nfinetune: {<<: *d, lr: 0.01}\n";

    #[test]
    fn a_key_written_out_in_a_file_with_anchors_is_set() {
        let edit = set_value(ANCHORED, "train.epochs", &Scalar::Int(10), Format::Yaml).unwrap();
        assert_eq!(edit.text, ANCHORED.replace("epochs: 3", "epochs: 10"));
        let edit = set_value(ANCHORED, "finetune.lr", &Scalar::Number(0.5), Format::Yaml).unwrap();
        assert_eq!(edit.text, ANCHORED.replace("lr: 0.01", "lr: 0.5"));
    }

    #[test]
    fn a_value_shared_through_an_anchor_is_refused_with_the_keys_it_shares() {
        let error =
            set_value(ANCHORED, "train.lr", &Scalar::Number(0.5), Format::Yaml).unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(error, EditError::Shared { .. }) && text.contains("`defaults.lr`"),
            "{text}"
        );
        let aliased = "same: &s 5\nother: *s\n";
        assert!(set_value(aliased, "other", &Scalar::Int(6), Format::Yaml).is_err());
    }
}
