//! Outs go into `.gitignore`, as DVC does: once a stage's outs are stored, each out that git
//! does not track gets a `/name` line in the `.gitignore` of its folder (created if missing,
//! existing lines kept, never twice), so that `git status` does not list what the cache holds.
//! Nothing is written outside a git checkout, and the run's own edits of `.gitignore` do not
//! make the tree it ran on dirty (see `git.rs`).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use kiln_spec::RelPath;

/// Stages run in parallel and may share a folder: one `.gitignore` update at a time. Holds the
/// files this process wrote.
static WRITTEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The `.gitignore` files this process changed: the run's own edits, which do not make the
/// tree it ran on dirty.
pub(crate) fn written() -> Vec<PathBuf> {
    WRITTEN.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Adds the stage's outs to their folders' `.gitignore`. A problem is put in `warning` (when it
/// holds none yet): it must not fail a stage whose outs are stored.
pub(crate) fn ignore_outs(root: &Path, outs: &[RelPath], warnings: &mut Vec<String>) {
    if outs.is_empty() || !crate::git::in_repository(root) {
        return;
    }
    let mut written = WRITTEN.lock().unwrap_or_else(|e| e.into_inner());
    for out in outs {
        match ignore_out(root, out) {
            Ok(Some(file)) if !written.contains(&file) => written.push(file),
            Ok(_) => {}
            Err(problem) => {
                warnings.push(format!(
                    "cannot add `{out}` to its folder's `.gitignore`: {problem}"
                ));
            }
        }
    }
}

/// Adds one out; returns the `.gitignore` it changed, if it changed one.
fn ignore_out(root: &Path, out: &RelPath) -> Result<Option<PathBuf>, String> {
    let path = out.to_path(root);
    let (Some(folder), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let file = folder.join(".gitignore");
    let existing = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(format!("cannot read `{}`: {error}", file.display())),
    };
    let entry = ignore_line(&name.to_string_lossy());
    let Some(updated) = with_line(&existing, &entry) else {
        return Ok(None);
    };
    // Only when the line is missing is git asked (a process): a no-op run asks nothing. An out
    // that git already ignores (a pattern higher up) needs no line, as DVC leaves it.
    if tracked_by_git(root, out)? || ignored_by_git(root, out)? {
        return Ok(None);
    }
    kiln_store::atomic::write(&file, updated.as_bytes())
        .map_err(|error| format!("cannot write `{}`: {error}", file.display()))?;
    Ok(Some(file))
}

/// The `.gitignore` line that matches exactly `name` in its own folder: anchored with `/`, and
/// with the characters that `.gitignore` gives a meaning escaped.
fn ignore_line(name: &str) -> String {
    let mut line = String::from("/");
    for c in name.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '!' | '#') {
            line.push('\\');
        }
        line.push(c);
    }
    if line.ends_with(' ') {
        // A trailing space is dropped by git unless escaped.
        line.pop();
        line.push_str("\\ ");
    }
    line
}

/// `text` with `line` appended, or `None` when it already has that line.
fn with_line(text: &str, line: &str) -> Option<String> {
    if text.lines().any(|l| l.trim_end_matches('\r') == line) {
        return None;
    }
    let mut updated = String::with_capacity(text.len() + line.len() + 2);
    updated.push_str(text);
    if !text.is_empty() && !text.ends_with('\n') {
        updated.push('\n');
    }
    updated.push_str(line);
    updated.push('\n');
    Some(updated)
}

/// Whether git tracks `out` (a file, or any file under a folder): a tracked out is the user's
/// choice and is left out of `.gitignore`, as DVC leaves it.
fn tracked_by_git(root: &Path, out: &RelPath) -> Result<bool, String> {
    let output = Command::new("git")
        .args(["ls-files", "-z", "--"])
        .arg(out.as_str())
        .current_dir(root)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run `git ls-files`: {error}"))?;
    if !output.status.success() {
        return Err(format!("`git ls-files` failed ({})", output.status));
    }
    Ok(!output.stdout.is_empty())
}

/// Whether a `.gitignore` (or `info/exclude`, or the global excludes) already ignores `out`.
fn ignored_by_git(root: &Path, out: &RelPath) -> Result<bool, String> {
    let status = Command::new("git")
        .args(["check-ignore", "-q", "--"])
        .arg(out.as_str())
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|error| format!("cannot run `git check-ignore`: {error}"))?;
    // 0: ignored; 1: not ignored; anything else: git could not tell.
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(format!("`git check-ignore` failed ({status})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_anchored_and_escaped() {
        assert_eq!(ignore_line("model.pkl"), "/model.pkl");
        assert_eq!(ignore_line("a*b[1]#!"), "/a\\*b\\[1\\]\\#\\!");
        assert_eq!(ignore_line("trailing "), "/trailing\\ ");
    }

    #[test]
    fn a_line_is_added_once_and_other_lines_are_kept() {
        assert_eq!(with_line("", "/model.pkl").as_deref(), Some("/model.pkl\n"));
        assert_eq!(
            with_line("# mine\n*.log", "/model.pkl").as_deref(),
            Some("# mine\n*.log\n/model.pkl\n")
        );
        assert_eq!(with_line("*.log\n/model.pkl\n", "/model.pkl"), None);
        assert_eq!(with_line("/model.pkl\r\n", "/model.pkl"), None);
    }
}
