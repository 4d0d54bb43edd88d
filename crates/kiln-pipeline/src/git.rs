//! The git state a run records: the commit checked out and whether tracked files changed.
//! Asked of the `git` command, which every CI machine has.

use std::path::Path;
use std::process::{Command, Stdio};

fn git(root: &Path, args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .current_dir(root)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The commit checked out in the project's git repository (`None` outside one). Outside a
/// repository no `git` process is started: its start-up alone is a good part of a no-op run.
pub fn git_commit(root: &Path) -> Option<String> {
    let in_repository = root.ancestors().any(|dir| dir.join(".git").exists());
    if !in_repository {
        return None;
    }
    git(root, &["rev-parse", "HEAD"])
}

/// Whether tracked files have uncommitted changes.
pub fn git_dirty(root: &Path) -> bool {
    git(root, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty())
}
