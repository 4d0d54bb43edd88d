//! Params and metrics files (YAML or JSON) flattened to dotted keys: `train: {C: 1}` -> `train.C`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use marked_yaml::Node;

use crate::diagnostic::{Diagnostic, Location, SourceFile};
use crate::yaml;

/// A leaf value of a params or metrics file.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// An integer literal (`7`): kept apart from floats, since `1` and `1.0` mean different
    /// things to many libraries (scikit-learn's `max_features`, for one).
    Int(i64),
    /// Any other number (`0.5`, `1.0`, `1e-3`).
    Number(f64),
    Bool(bool),
    Text(String),
    Null,
}

impl Scalar {
    /// Reads a YAML scalar as YAML 1.2's core schema would type it.
    pub fn from_yaml(text: &str) -> Scalar {
        match text {
            "true" | "True" | "TRUE" => return Scalar::Bool(true),
            "false" | "False" | "FALSE" => return Scalar::Bool(false),
            "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
            _ => {}
        }
        let looks_numeric =
            text.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '-' | '+' | '.'));
        if looks_numeric && let Ok(i) = text.parse::<i64>() {
            return Scalar::Int(i);
        }
        match text.parse::<f64>() {
            Ok(n) if looks_numeric && !text.ends_with('.') => Scalar::Number(n),
            _ => Scalar::Text(text.to_string()),
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Scalar::Int(i) => Some(*i as f64),
            Scalar::Number(n) => Some(*n),
            Scalar::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }

    /// A stable text form: the same value always encodes the same way (used in cache keys, so
    /// it must never change without bumping the key's version tag).
    ///
    /// Integers are `i:` and their decimal digits; text is `s:` and the text; booleans
    /// `b:true`/`b:false`; null is `null`. Floats are `n:` and the shortest decimal that reads
    /// back as the same `f64`, as the `ryu` crate writes it (`0.5`, `1.0`, `1e-7`, `1e16`), not
    /// Rust's `Debug`, whose form is not promised; `-0.0` keeps its sign (`n:-0.0`), and the
    /// values that have no decimal are `n:nan` (every NaN), `n:inf` and `n:-inf`.
    pub fn canonical(&self) -> String {
        match self {
            Scalar::Int(i) => format!("i:{i}"),
            Scalar::Number(n) if n.is_nan() => "n:nan".to_string(),
            Scalar::Number(n) if n.is_infinite() => {
                if *n > 0.0 { "n:inf" } else { "n:-inf" }.to_string()
            }
            Scalar::Number(n) => format!("n:{}", ryu::Buffer::new().format_finite(*n)),
            Scalar::Bool(b) => format!("b:{b}"),
            Scalar::Text(t) => format!("s:{t}"),
            Scalar::Null => "null".to_string(),
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Number(n) => write!(f, "{n:?}"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Text(t) => f.write_str(t),
            Scalar::Null => f.write_str("null"),
        }
    }
}

/// Dotted key -> leaf value, sorted by key.
pub type FlatValues = BTreeMap<String, Scalar>;

/// A params or metrics file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    #[error("cannot read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not valid YAML or JSON: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Reads and flattens a YAML or JSON file whose top level is a mapping. An empty file is empty.
pub fn read_flat(path: &Path) -> Result<FlatValues, ValuesError> {
    let bytes = std::fs::read(path).map_err(|source| ValuesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse_error = |diagnostic: Diagnostic| {
        let message = match diagnostic.location.as_ref().map(Location::line_column) {
            Some((line, column)) => format!("line {line}, column {column}: {}", diagnostic.message),
            None => diagnostic.message,
        };
        ValuesError::Parse {
            path: path.to_path_buf(),
            message,
        }
    };
    let source = SourceFile::from_bytes(path, bytes).map_err(|diagnostic| {
        let (line, column) = diagnostic
            .location
            .as_ref()
            .map_or((0, 0), Location::line_column);
        ValuesError::Parse {
            path: path.to_path_buf(),
            message: format!("it is not UTF-8 (first bad byte at line {line}, column {column})"),
        }
    })?;
    parse_source(&source).map_err(parse_error)
}

/// Flattens YAML or JSON text (see [`read_flat`]); the error says where the text is wrong.
pub fn parse_flat(text: &str) -> Result<FlatValues, String> {
    parse_source(&SourceFile::new("", text)).map_err(|diagnostic| {
        match diagnostic.location.as_ref().map(Location::line_column) {
            Some((line, column)) => format!("line {line}, column {column}: {}", diagnostic.message),
            None => diagnostic.message,
        }
    })
}

/// Flattens a params or metrics file, its mistakes as diagnostics located in it.
pub fn parse_source(source: &SourceFile) -> Result<FlatValues, Diagnostic> {
    let mut values = FlatValues::new();
    if source.text.trim().is_empty() {
        return Ok(values);
    }
    let options = yaml::Options {
        duplicate_keys_are_errors: false,
        quoted_is_text: true,
    };
    let node = yaml::load(&source.text, options).map_err(|error| error.diagnostic(source))?;
    flatten(&node, String::new(), &mut values);
    Ok(values)
}

fn flatten(node: &Node, prefix: String, out: &mut FlatValues) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match node {
        // A quoted scalar (`"1.10"`, `'007'`) is text, whatever it looks like.
        Node::Scalar(scalar) if !scalar.may_coerce() => {
            out.insert(prefix, Scalar::Text(scalar.as_str().to_string()));
        }
        Node::Scalar(scalar) => {
            out.insert(prefix, Scalar::from_yaml(scalar.as_str()));
        }
        Node::Mapping(mapping) => {
            for (key, value) in mapping.iter() {
                flatten(value, join(key.as_str()), out);
            }
        }
        Node::Sequence(sequence) => {
            for (index, value) in sequence.iter().enumerate() {
                flatten(value, join(&index.to_string()), out);
            }
        }
    }
}

/// The values under `selector`: the key itself, or every key below it when it names a section.
pub fn select<'a>(
    values: &'a FlatValues,
    selector: &str,
) -> impl Iterator<Item = (&'a String, &'a Scalar)> {
    let section = format!("{selector}.");
    values
        .iter()
        .filter(move |(key, _)| *key == selector || key.starts_with(&section))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_yaml_and_json() {
        let yaml = parse_flat(
            "train:\n  C: 0.5\n  max_iter: 200\n  solver: lbfgs\nseed: 7\nlayers: [3, 4]\n",
        )
        .unwrap();
        assert_eq!(yaml["train.C"], Scalar::Number(0.5));
        assert_eq!(yaml["train.solver"], Scalar::Text("lbfgs".into()));
        assert_eq!(yaml["layers.1"], Scalar::Int(4));
        let json =
            parse_flat(r#"{"accuracy": 0.95, "per_class": {"setosa": 1.0}, "ok": true}"#).unwrap();
        assert_eq!(json["per_class.setosa"], Scalar::Number(1.0));
        assert_eq!(json["ok"], Scalar::Bool(true));
    }

    #[test]
    fn selects_sections_and_keys() {
        let values = parse_flat("train: {C: 1, max_iter: 100}\ntrainer: x\n").unwrap();
        let keys: Vec<_> = select(&values, "train").map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["train.C", "train.max_iter"]);
        assert_eq!(select(&values, "train.C").count(), 1);
    }

    #[test]
    fn canonical_forms_are_pinned() {
        let cases = [
            (Scalar::Int(-7), "i:-7"),
            (Scalar::Number(0.5), "n:0.5"),
            (Scalar::Number(1.0), "n:1.0"),
            (Scalar::Number(1e-7), "n:1e-7"),
            (Scalar::Number(1e15), "n:1000000000000000.0"),
            (Scalar::Number(1e16), "n:1e16"),
            (Scalar::Number(123456.789), "n:123456.789"),
            (Scalar::Number(0.1 + 0.2), "n:0.30000000000000004"),
            (Scalar::Number(-0.0), "n:-0.0"),
            (Scalar::Number(0.0), "n:0.0"),
            (Scalar::Number(f64::NAN), "n:nan"),
            (Scalar::Number(-f64::NAN), "n:nan"),
            (Scalar::Number(f64::INFINITY), "n:inf"),
            (Scalar::Number(f64::NEG_INFINITY), "n:-inf"),
            (Scalar::Bool(true), "b:true"),
            (Scalar::Text("lbfgs".into()), "s:lbfgs"),
            (Scalar::Null, "null"),
        ];
        for (value, expected) in cases {
            assert_eq!(value.canonical(), expected, "{value:?}");
        }
    }

    #[test]
    fn numbers_and_text_are_told_apart() {
        assert_eq!(Scalar::from_yaml("1e-3"), Scalar::Number(0.001));
        assert_eq!(Scalar::from_yaml("7"), Scalar::Int(7));
        assert_ne!(
            Scalar::from_yaml("1").canonical(),
            Scalar::from_yaml("1.0").canonical()
        );
        let quoted = parse_flat("version: \"1.10\"\nid: '007'\nC: 1.0\n").unwrap();
        assert_eq!(quoted["version"], Scalar::Text("1.10".into()));
        assert_eq!(quoted["id"], Scalar::Text("007".into()));
        assert_eq!(quoted["C"], Scalar::Number(1.0));
        assert_eq!(Scalar::from_yaml("inf"), Scalar::Text("inf".into()));
        assert_eq!(Scalar::from_yaml("1.2.3"), Scalar::Text("1.2.3".into()));
    }
}
