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
    /// Held while the checkout lives, so that another process's create leaves it alone.
    lock: std::fs::File,
}

impl Checkout {
    /// Checks `commit` out into `<state_dir>/worktrees/<sha12>`, replacing what a killed
    /// process left there, and removing the worktrees of other commits that killed processes
    /// left (a live checkout holds the lock `<sha12>.lock` beside its folder).
    pub fn create(repo: &Repo, state_dir: &Path, commit: &Commit) -> Result<Checkout, Error> {
        // SHA-1 or SHA-256, in full: the folder is named by it, and a short id may be ambiguous.
        let full = matches!(commit.sha.len(), 40 | 64);
        if !full || !commit.sha.bytes().all(|b| b.is_ascii_hexdigit()) {
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
        let Some(lock) = try_lock(&worktree)? else {
            return Err(Error::CheckoutBusy {
                commit: commit.short().to_string(),
            });
        };
        remove_stale(&repo.root, &worktrees, &worktree);
        if worktree.symlink_metadata().is_ok() {
            remove_worktree(&repo.root, &worktree);
            if worktree.symlink_metadata().is_ok() {
                std::fs::remove_dir_all(&worktree)
                    .map_err(|source| Error::io("remove", &worktree, source))?;
            }
        }
        let path = worktree.to_string_lossy();
        // Forced twice: the path may still be registered (its folder deleted by hand, and the
        // registration even locked); only Kiln puts worktrees there.
        git_checked(
            &repo.root,
            &[
                "worktree",
                "add",
                "--force",
                "--force",
                "--detach",
                "--quiet",
                &path,
                &commit.sha,
            ],
        )?;
        let checkout = Checkout {
            project_root: worktree.join(&repo.subdir),
            worktree,
            commit: commit.clone(),
            repo_root: repo.root.clone(),
            lock,
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
        let _ = std::fs::remove_file(lock_path(&self.worktree));
        let _ = self.lock.unlock();
    }
}

fn lock_path(worktree: &Path) -> PathBuf {
    worktree.with_extension("lock")
}

/// The lock of the worktree at `worktree`, when no live process holds it; released when the
/// file is dropped or its process dies.
fn try_lock(worktree: &Path) -> Result<Option<std::fs::File>, Error> {
    let path = lock_path(worktree);
    kiln_store::lock::try_lock(&path).map_err(|source| Error::io("lock", &path, source))
}

/// Removes the worktrees under `worktrees` (folders, and registrations whose folder is gone)
/// that no live checkout holds, except `ours`. Only Kiln's own worktrees are looked at: `git
/// worktree prune` would also drop the user's worktrees on a disk not mounted now.
fn remove_stale(repo_root: &Path, worktrees: &Path, ours: &Path) {
    let mut stale: Vec<PathBuf> = std::fs::read_dir(worktrees)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| entry.path())
        .collect();
    let real = worktrees
        .canonicalize()
        .unwrap_or_else(|_| worktrees.to_path_buf());
    if let Ok(output) = git_output(repo_root, &["worktree", "list", "--porcelain"]) {
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Some(path) = line.strip_prefix("worktree ") else {
                continue;
            };
            let path = Path::new(path);
            if let Some(name) = path.file_name()
                && (path.parent() == Some(worktrees) || path.parent() == Some(real.as_path()))
            {
                let path = worktrees.join(name);
                if !stale.contains(&path) {
                    stale.push(path);
                }
            }
        }
    }
    for worktree in stale.iter().filter(|path| path.as_path() != ours) {
        if let Ok(Some(_lock)) = try_lock(worktree) {
            remove_worktree(repo_root, worktree);
            if worktree.symlink_metadata().is_ok() {
                let _ = std::fs::remove_dir_all(worktree);
            }
            let _ = std::fs::remove_file(lock_path(worktree));
        }
    }
}

/// `git worktree remove`, twice forced: the worktree holds the run's outs (untracked) and may
/// have been locked. It also drops the registration of a worktree whose folder is gone.
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
