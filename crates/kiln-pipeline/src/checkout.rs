//! Clean checkouts of one commit, for running the pipeline on what was committed rather than on
//! the user's working tree.
//!
//! A checkout is a detached `git worktree` of the user's repository under
//! `<state dir>/worktrees/<sha12>`: it shares the repository's objects (nothing is cloned) and
//! never touches the user's working tree, index or branches. The `git` command adds and removes
//! it: gix reads worktrees but does not create them. Every `git` here runs without a terminal
//! prompt and with no standard input, so it fails rather than waits for credentials.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::Error;

/// Where a project sits in its git repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// The root of the work tree holding the project.
    pub root: PathBuf,
    /// The project's folder relative to `root`, empty at the root.
    pub subdir: PathBuf,
}

/// Finds the git work tree holding `project_root`; `None` when it is in none (or in a bare
/// repository).
pub fn find_repo(project_root: &Path) -> Result<Option<Repo>, Error> {
    if !crate::git::in_repository(project_root) {
        return Ok(None);
    }
    let repository = gix::discover(project_root).map_err(|source| Error::GitRead {
        path: project_root.to_path_buf(),
        source: Box::new(source),
    })?;
    let Some(workdir) = repository.workdir() else {
        return Ok(None);
    };
    let root = workdir
        .canonicalize()
        .map_err(|source| Error::io("resolve", workdir, source))?;
    let project = project_root
        .canonicalize()
        .map_err(|source| Error::io("resolve", project_root, source))?;
    let Ok(subdir) = project.strip_prefix(&root) else {
        return Ok(None);
    };
    Ok(Some(Repo {
        subdir: subdir.to_path_buf(),
        root,
    }))
}

/// A commit, as a run in a checkout names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The full object id, in hex.
    pub sha: String,
    /// The first line of the message.
    pub subject: String,
}

impl Commit {
    /// The commit `id` names in `repository`.
    pub(crate) fn read(repository: &gix::Repository, id: gix::ObjectId) -> Result<Commit, Error> {
        let read_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::GitRead {
            path: repository.git_dir().to_path_buf(),
            source,
        };
        let commit = repository
            .find_commit(id)
            .map_err(|e| read_error(Box::new(e)))?;
        let message = commit.message().map_err(|e| read_error(Box::new(e)))?;
        Ok(Commit {
            sha: id.to_string(),
            subject: message.summary().to_string(),
        })
    }

    /// The first 12 hex digits, as worktree folders and messages show it.
    pub fn short(&self) -> &str {
        &self.sha[..self.sha.len().min(12)]
    }
}

/// A clean checkout of one commit. Dropping it removes the worktree.
#[derive(Debug)]
pub struct Checkout {
    pub commit: Commit,
    /// The worktree's root: `<state dir>/worktrees/<sha12>`.
    pub worktree: PathBuf,
    /// The project inside it: `worktree` joined with the project's folder in the repository.
    pub project_root: PathBuf,
    /// The user's work tree, which the worktree was added to.
    repo_root: PathBuf,
}

impl Checkout {
    /// Checks `commit` out into `<state_dir>/worktrees/<sha12>`, replacing what a killed
    /// process left there.
    pub fn create(repo: &Repo, state_dir: &Path, commit: &Commit) -> Result<Checkout, Error> {
        if commit.sha.len() < 12 || !commit.sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::NotACommitId {
                sha: commit.sha.clone(),
            });
        }
        // `git` runs in the repository's root: a relative path would land elsewhere.
        let state_dir = std::path::absolute(state_dir)
            .map_err(|source| Error::io("resolve", state_dir, source))?;
        crate::workspace::create_state_dir(&state_dir)?;
        let worktrees = state_dir.join("worktrees");
        std::fs::create_dir_all(&worktrees)
            .map_err(|source| Error::io("create", &worktrees, source))?;
        let worktree = worktrees.join(commit.short());
        if worktree.symlink_metadata().is_ok() {
            remove_worktree(&repo.root, &worktree);
            if worktree.symlink_metadata().is_ok() {
                std::fs::remove_dir_all(&worktree)
                    .map_err(|source| Error::io("remove", &worktree, source))?;
            }
        }
        // A worktree whose folder is gone is still registered until pruned, and `git worktree
        // add` refuses its path.
        let _ = git_output(&repo.root, &["worktree", "prune"]);
        let path = worktree.to_string_lossy();
        git_checked(
            &repo.root,
            &["worktree", "add", "--detach", "--quiet", &path, &commit.sha],
        )?;
        let checkout = Checkout {
            project_root: worktree.join(&repo.subdir),
            worktree,
            commit: commit.clone(),
            repo_root: repo.root.clone(),
        };
        if !checkout.project_root.is_dir() {
            // Dropped: the worktree goes.
            return Err(Error::ProjectNotInCommit {
                folder: repo.subdir.clone(),
                commit: commit.short().to_string(),
            });
        }
        Ok(checkout)
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        remove_worktree(&self.repo_root, &self.worktree);
        if self.worktree.symlink_metadata().is_ok() {
            let _ = std::fs::remove_dir_all(&self.worktree);
        }
        let _ = git_output(&self.repo_root, &["worktree", "prune"]);
    }
}

/// `git worktree remove`, twice forced: the worktree holds the run's outs (untracked) and may
/// have been locked. Failures are left to the next prune.
fn remove_worktree(repo_root: &Path, worktree: &Path) {
    let path = worktree.to_string_lossy();
    let _ = git_output(
        repo_root,
        &["worktree", "remove", "--force", "--force", &path],
    );
}

/// A `git` command in `dir` that never prompts: no terminal prompt, no standard input, and
/// messages in English (they are shown to the user and read for known failures).
pub(crate) fn git_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

pub(crate) fn git_output(dir: &Path, args: &[&str]) -> Result<Output, Error> {
    git_command(dir, args)
        .output()
        .map_err(|source| Error::GitSpawn { source })
}

/// Runs `git args` in `dir`; its stdout, or its stderr in the error when it fails.
pub(crate) fn git_checked(dir: &Path, args: &[&str]) -> Result<String, Error> {
    let output = git_output(dir, args)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(Error::GitFailed {
            command: args.join(" "),
            detail: failure_detail(&output),
        })
    }
}

/// What a failed `git` said, in one line.
pub(crate) fn failure_detail(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    if lines.is_empty() {
        format!("exited with {}", output.status)
    } else {
        lines.join("; ")
    }
}
