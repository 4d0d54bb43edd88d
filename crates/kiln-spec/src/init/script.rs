//! What a Python script reads and writes, guessed from its source for `kiln init`.
//!
//! This is a reading of the text, not of Python: string literals that look like paths, how their
//! line builds them (from `__file__`, from a name bound earlier, or from the working folder), and
//! whether the line writes (`open(..., "w")`, `json.dump`, `pickle.dump`, `.to_csv`, ...) or reads
//! them. It finds what the common ways of naming files in training code name, and nothing else:
//! `kiln init` writes down only what it found, and says what to check.

use std::collections::HashMap;

/// Where a path found in a script starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Base {
    /// The folder the script runs in.
    WorkingDir,
    /// The script's own folder, then this many folders up.
    ScriptDir(usize),
}

/// A path a script names: `base` joined with `rel` (which may hold `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundPath {
    pub base: Base,
    pub rel: String,
}

/// What one script reads, writes and imports.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    pub writes: Vec<FoundPath>,
    pub reads: Vec<FoundPath>,
    /// Every path the script names, read, written or neither.
    pub named: Vec<FoundPath>,
    /// Modules imported by name (`import x`, `from x import y`): sibling modules among them are
    /// deps too.
    pub imports: Vec<String>,
}

impl Facts {
    /// Every path named relative to the working folder.
    pub fn working_dir_paths(&self) -> impl Iterator<Item = &str> {
        self.named
            .iter()
            .filter(|p| p.base == Base::WorkingDir)
            .map(|p| p.rel.as_str())
    }
}

const WRITES: &[&str] = &[
    ".write_text(",
    ".write_bytes(",
    "json.dump(",
    "pickle.dump(",
    "joblib.dump(",
    "dump(",
    ".to_csv(",
    ".to_json(",
    ".to_parquet(",
    ".to_pickle(",
    ".save(",
    ".save_model(",
    ".savefig(",
    "np.save(",
    "np.savez(",
    "SerializeToString",
];
const READS: &[&str] = &[
    "read_csv(",
    "read_json(",
    "read_parquet(",
    "read_pickle(",
    ".read_text(",
    ".read_bytes(",
    "load(",
    "loadtxt(",
    "genfromtxt(",
    "open(",
    "DictReader(",
];

/// Reads what `source` (a Python file) reads, writes and imports.
pub(crate) fn analyse(source: &str) -> Facts {
    let mut facts = Facts::default();
    let mut bound: HashMap<String, FoundPath> = HashMap::new();
    let mut in_docstring: Option<&str> = None;
    for raw in source.lines() {
        // Docstrings and other triple-quoted text are prose, not paths.
        if let Some(quote) = in_docstring {
            if raw.contains(quote) {
                in_docstring = None;
            }
            continue;
        }
        let trimmed = raw.trim_start();
        if let Some(quote) = ["\"\"\"", "'''"]
            .into_iter()
            .find(|q| trimmed.starts_with(q) || trimmed.contains(&format!("= {q}")))
        {
            if trimmed.matches(quote).count() == 1 {
                in_docstring = Some(quote);
            }
            continue;
        }
        let (code, literals) = split_literals(raw);
        if let Some(module) = import_of(&code) {
            facts.imports.extend(module);
            continue;
        }
        let values = paths_of(&code, &literals, &bound);
        facts
            .named
            .extend(values.iter().filter(|v| !v.rel.is_empty()).cloned());
        let writes = is_write(&code, &literals);
        let reads = !writes && READS.iter().any(|r| code.contains(r));
        // `NAME = <path>`: remember it; the line itself neither reads nor writes.
        if let Some(name) = assigned_name(&code)
            && !writes
            && !reads
        {
            if let Some(value) = values.into_iter().next() {
                bound.insert(name.to_string(), value);
            }
            continue;
        }
        let mut targets: Vec<FoundPath> = values
            .into_iter()
            .filter(|value| value.rel.contains('.'))
            .collect();
        if targets.is_empty() {
            targets = names_in(&code)
                .filter_map(|name| bound.get(name).cloned())
                .filter(|path| has_extension(&path.rel))
                .collect();
        }
        // `shutil.copy(source, target)`: the last path is written, the others read.
        if ["copy(", "copyfile(", "copy2(", "move("]
            .iter()
            .any(|call| code.contains(&format!("shutil.{call}")))
            && let Some(target) = targets.pop()
        {
            facts.reads.extend(targets);
            facts.writes.push(target);
        } else if writes {
            facts.writes.extend(targets);
        } else if reads {
            facts.reads.extend(targets);
        }
    }
    facts.writes.dedup();
    facts.reads.dedup();
    facts
}

/// The line with its string literals blanked out (so that `#` or keywords inside them do not
/// count), its comment removed, and the literals in order with what stands before each.
fn split_literals(line: &str) -> (String, Vec<Literal>) {
    let mut code = String::new();
    let mut literals = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        match c {
            '#' => break,
            '"' | '\'' => {
                let mut text = String::new();
                let mut closed = false;
                while let Some((_, inner)) = chars.next() {
                    if inner == '\\' {
                        if let Some((_, escaped)) = chars.next() {
                            text.push(escaped);
                        }
                    } else if inner == c {
                        closed = true;
                        break;
                    } else {
                        text.push(inner);
                    }
                }
                let formatted = code.ends_with(['f', 'F']);
                literals.push(Literal {
                    before: code.clone(),
                    text,
                    formatted,
                });
                code.push_str(if closed { "\"\"" } else { "\"" });
            }
            _ => code.push(c),
        }
    }
    (code, literals)
}

struct Literal {
    /// The code of the line before the literal (literals blanked).
    before: String,
    text: String,
    /// An f-string: its `{...}` parts are not known.
    formatted: bool,
}

/// `import a, b` / `from a.b import c` -> the top-level module names.
fn import_of(code: &str) -> Option<Vec<String>> {
    let code = code.trim();
    let modules = if let Some(rest) = code.strip_prefix("import ") {
        rest.split(',')
            .filter_map(|part| part.split_whitespace().next())
            .map(|m| m.split('.').next().unwrap_or(m).to_string())
            .collect()
    } else if let Some(rest) = code.strip_prefix("from ") {
        let module = rest.split_whitespace().next()?;
        if module.starts_with('.') {
            return Some(Vec::new());
        }
        vec![module.split('.').next().unwrap_or(module).to_string()]
    } else {
        return None;
    };
    Some(modules)
}

/// `NAME = ...` (not `==`, not `NAME[...] =`).
fn assigned_name(code: &str) -> Option<&str> {
    let (left, right) = code.split_once('=')?;
    if right.starts_with('=') || left.ends_with(['!', '<', '>', '=']) {
        return None;
    }
    let name = left.trim();
    let name = name.split(':').next().unwrap_or(name).trim();
    is_identifier(name).then_some(name)
}

fn is_identifier(word: &str) -> bool {
    !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !word.starts_with(|c: char| c.is_ascii_digit())
}

/// The identifiers on a line, in order.
fn names_in(code: &str) -> impl Iterator<Item = &str> {
    code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| is_identifier(word))
}

/// `open(..., "w")`-like modes and the write calls.
fn is_write(code: &str, literals: &[Literal]) -> bool {
    let mode_write = code.contains("open(")
        && literals.iter().any(|l| {
            !l.text.is_empty()
                && l.text.len() <= 3
                && l.text.chars().all(|c| "wxab+t".contains(c))
                && l.text.contains(['w', 'x', 'a'])
        });
    mode_write || WRITES.iter().any(|w| code.contains(w))
}

/// The paths the line builds: each run of joined path-like literals (`a / "b" / "c.csv"`,
/// `os.path.join(a, "b", "c.csv")`) from the base that stands before its first literal. A line
/// with no path literal may still name a folder (`HERE = Path(__file__).parent`).
fn paths_of(
    code: &str,
    literals: &[Literal],
    bound: &HashMap<String, FoundPath>,
) -> Vec<FoundPath> {
    let parts: Vec<&Literal> = literals
        .iter()
        .filter(|l| !l.formatted && is_path_part(l, code))
        .collect();
    if parts.is_empty() {
        let folder =
            base_of(code, bound).filter(|_| code.contains("__file__") || code.contains(".parent"));
        return folder.into_iter().collect();
    }
    let mut paths: Vec<FoundPath> = Vec::new();
    let mut previous_end = 0;
    for part in parts {
        let between = &part.before[previous_end..];
        let joined = between.trim_end() == "/"
            || between.trim_start().starts_with('/') && between.trim_end().ends_with('/')
            || (in_join(&part.before) && !between.contains(')') && !between.contains("join("));
        match paths.last_mut() {
            Some(path) if joined && previous_end > 0 => {
                path.rel.push('/');
                path.rel.push_str(part.text.trim_start_matches("./"));
            }
            _ => {
                // The base is what stands between the previous path and this literal.
                let before = &part.before[previous_end..];
                let mut found = base_of(before, bound).unwrap_or(FoundPath {
                    base: Base::WorkingDir,
                    rel: String::new(),
                });
                if !found.rel.is_empty() {
                    found.rel.push('/');
                }
                found.rel.push_str(part.text.trim_start_matches("./"));
                paths.push(found);
            }
        }
        // The literal is blanked as `""` in the code.
        previous_end = part.before.len() + 2;
    }
    paths
}

/// The folder a path starts from: `__file__` and its parents, or the last bound name.
fn base_of(before: &str, bound: &HashMap<String, FoundPath>) -> Option<FoundPath> {
    if before.contains("__file__") {
        return Some(FoundPath {
            base: Base::ScriptDir(levels_up(before)),
            rel: String::new(),
        });
    }
    names_in(before)
        .filter_map(|name| bound.get(name))
        .last()
        .map(|found| {
            let mut found = found.clone();
            for _ in 0..before.matches(".parent").count() {
                found.rel.push_str("/..");
            }
            found
        })
}

/// True when the text ends inside an `os.path.join(` call.
fn in_join(before: &str) -> bool {
    before.rfind("os.path.join(").is_some_and(|start| {
        let inside = &before[start + "os.path.join(".len()..];
        inside.matches('(').count() >= inside.matches(')').count()
    })
}

/// How many folders above the script's own a `__file__` expression points: `Path(__file__)
/// .parent` is the script's folder (0), each further `.parent` one more, `.parents[N]` N.
fn levels_up(expression: &str) -> usize {
    let mut parents = expression.matches(".parent").count()
        - expression.matches(".parents[").count()
        + expression.matches("dirname(").count();
    for (index, _) in expression.match_indices(".parents[") {
        let digits: String = expression[index + ".parents[".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        parents += digits.parse::<usize>().map_or(1, |n| n + 1);
    }
    parents.saturating_sub(1)
}

/// A literal that is part of a path: it has a file extension or a `/`, is `..`, or is joined
/// with `/` or `os.path.join`.
fn is_path_part(literal: &Literal, code: &str) -> bool {
    let text = literal.text.as_str();
    if text.is_empty() || text.contains(char::is_whitespace) || text.contains("://") {
        return false;
    }
    let before = literal.before.as_str();
    let joined = before.trim_end().ends_with('/')
        || in_join(before)
        || code[before.len()..]
            .trim_start_matches('"')
            .trim_start()
            .starts_with('/');
    let looks = text.contains('/') || has_extension(text) || text == "..";
    // `encoding="utf-8"` and other keyword arguments of a call.
    let keyword = before.trim_end().ends_with('=') && before.contains('(');
    let mode = text.len() <= 3 && text.chars().all(|c| "rwxab+t".contains(c));
    (looks || joined) && !keyword && !mode
}

/// `name.ext` with a short alphanumeric extension.
pub(crate) fn has_extension(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.rsplit_once('.') {
        Some((stem, ext)) => {
            !stem.is_empty()
                && (1..=10).contains(&ext.len())
                && ext.chars().all(|c| c.is_ascii_alphanumeric())
                && ext.chars().any(|c| c.is_ascii_alphabetic())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Base, rel: &str) -> FoundPath {
        FoundPath {
            base,
            rel: rel.to_string(),
        }
    }

    #[test]
    fn finds_what_a_training_script_writes() {
        let facts = analyse(
            r#""""Trains the model.

Writes "notes.json" nowhere: this is prose.
"""
import json, pickle
from pathlib import Path
import pandas as pd
from features import build  # a sibling module

HERE = Path(__file__).resolve().parent
MODEL_DIR = Path(__file__).resolve().parents[1]
TRAIN = "data/processed/train.csv"


def main():
    frame = pd.read_csv(TRAIN)
    model = build(frame)
    with open(MODEL_DIR / "model.pkl", "wb") as file:
        pickle.dump(model, file)
    with open("metrics.json", "w", encoding="utf-8") as file:
        json.dump({"accuracy": 1.0}, file)
    (HERE / "report.txt").write_text("done")
"#,
        );
        assert_eq!(
            facts.writes,
            [
                at(Base::ScriptDir(1), "model.pkl"),
                at(Base::WorkingDir, "metrics.json"),
                at(Base::ScriptDir(0), "report.txt"),
            ]
        );
        assert_eq!(
            facts.reads,
            [at(Base::WorkingDir, "data/processed/train.csv")]
        );
        assert!(facts.imports.contains(&"features".to_string()));
    }

    #[test]
    fn finds_what_a_predict_script_loads() {
        let facts = analyse(
            "import os, pickle\n\ndef load(model_dir):\n    with open(os.path.join(model_dir, \"model.pkl\"), \"rb\") as f:\n        return pickle.load(f)\n",
        );
        assert_eq!(facts.reads.len(), 1);
        assert_eq!(facts.reads[0].rel, "model.pkl");
        assert!(facts.writes.is_empty());
    }

    #[test]
    fn two_paths_on_one_line_stay_apart() {
        let facts = analyse(
            "import os, shutil\nshutil.copy('data/raw/a.csv', os.path.join('data', 'processed', 'a.csv'))\n",
        );
        assert_eq!(facts.reads, [at(Base::WorkingDir, "data/raw/a.csv")]);
        assert_eq!(facts.writes, [at(Base::WorkingDir, "data/processed/a.csv")]);
    }

    #[test]
    fn levels_count_parents() {
        assert_eq!(levels_up("Path(__file__).parent"), 0);
        assert_eq!(levels_up("Path(__file__).resolve().parent.parent"), 1);
        assert_eq!(levels_up("Path(__file__).parents[2]"), 2);
        assert_eq!(levels_up("os.path.dirname(os.path.abspath(__file__))"), 0);
    }
}
