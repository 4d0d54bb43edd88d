//! Watching a branch for new commits: a local branch is read in process (gix, no `git`
//! process per poll); a remote branch is polled with `git fetch` into its remote-tracking ref,
//! as Jenkins' pollSCM does, then read the same way.
//!
//! A fetch that fails (the network, the remote) is a warning and is retried at the next poll:
//! a watch outlives outages. A fetch runs in its own process group, is stopped when the watch
//! is cancelled, and is given up after [`FETCH_TIMEOUT`].

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Error;
use crate::checkout::{Commit, Repo, failure_detail, git_checked, git_command, git_output};

/// How long one `git fetch` may take before it is stopped and counted as failed.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a wait looks at its cancel flag.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// What to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchSource {
    /// A local branch: the one HEAD is on when the watch starts (switching branches later does
    /// not change what is watched), or the one named.
    Local { branch: Option<String> },
    /// A branch of a remote, fetched at every poll.
    Remote { remote: String, branch: String },
}

/// A branch being watched; see [`BranchWatch::wait_for_change`].
#[derive(Debug)]
pub struct BranchWatch {
    repo_root: PathBuf,
    /// The remote to fetch from, for a remote branch.
    remote: Option<String>,
    branch: String,
    /// The ref read at each poll: `refs/heads/<branch>` or `refs/remotes/<remote>/<branch>`.
    reference: String,
    poll: Duration,
    /// The last warning given, so that an outage is reported once, not at every poll.
    last_warning: Option<String>,
}

impl BranchWatch {
    /// Starts watching `source` in `repo`, checking every `poll`. A branch or remote that does
    /// not exist is an error; so is a remote that cannot be reached now.
    pub fn new(repo: &Repo, source: WatchSource, poll: Duration) -> Result<BranchWatch, Error> {
        let repository = open(&repo.root)?;
        let (remote, branch) = match source {
            WatchSource::Local { branch: None } => {
                let head = repository
                    .head_name()
                    .map_err(|e| read_error(&repo.root, e))?;
                match head.as_ref().and_then(|name| {
                    name.as_bstr()
                        .strip_prefix(b"refs/heads/")
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                }) {
                    Some(branch) => (None, branch),
                    None => {
                        let commit = repository
                            .head_id()
                            .map(|id| id.to_hex_with_len(12).to_string())
                            .unwrap_or_default();
                        return Err(Error::DetachedHead { commit });
                    }
                }
            }
            WatchSource::Local {
                branch: Some(branch),
            } => {
                check_branch_name(&branch)?;
                let found = repository
                    .try_find_reference(format!("refs/heads/{branch}").as_str())
                    .map_err(|e| read_error(&repo.root, e))?;
                if found.is_none() {
                    return Err(Error::BranchNotFound {
                        branch,
                        place: "this repository".into(),
                        known: local_branches(&repository),
                    });
                }
                (None, branch)
            }
            WatchSource::Remote { remote, branch } => {
                check_branch_name(&branch)?;
                check_remote(repo, &remote)?;
                check_remote_branch(repo, &remote, &branch)?;
                (Some(remote), branch)
            }
        };
        let reference = match &remote {
            Some(remote) => format!("refs/remotes/{remote}/{branch}"),
            None => format!("refs/heads/{branch}"),
        };
        Ok(BranchWatch {
            repo_root: repo.root.clone(),
            remote,
            branch,
            reference,
            poll,
            last_warning: None,
        })
    }

    /// The branch watched (without `refs/heads/`).
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The commit the branch points at now, fetching it first for a remote branch.
    pub fn current(&mut self) -> Result<Commit, Error> {
        if let Some(remote) = &self.remote {
            let never = AtomicBool::new(false);
            match fetch(&self.repo_root, remote, &self.branch, &never) {
                Fetched::Done => {}
                Fetched::Failed(detail) => {
                    return Err(Error::Fetch {
                        remote: remote.clone(),
                        branch: self.branch.clone(),
                        detail,
                    });
                }
                Fetched::Cancelled => unreachable!("`never` is never set"),
            }
        }
        match self.read()? {
            Some(commit) => Ok(commit),
            None => Err(self.gone()),
        }
    }

    /// Blocks until the branch points at a commit other than `seen`, checking at once and then
    /// every poll, and returns the newest commit (the commits in between are skipped). `None`
    /// when `cancel` is set, which is looked at every 50 ms, during a fetch too. A failed
    /// fetch, or a branch that disappeared, is reported once through `on_warning` and checked
    /// again at the next poll.
    pub fn wait_for_change(
        &mut self,
        seen: &str,
        cancel: &AtomicBool,
        on_warning: &mut dyn FnMut(&str),
    ) -> Result<Option<Commit>, Error> {
        // Anything but a commit id differs from every commit.
        let seen_id = gix::ObjectId::from_hex(seen.as_bytes()).ok();
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let fetched = match &self.remote {
                Some(remote) => match fetch(&self.repo_root, remote, &self.branch, cancel) {
                    Fetched::Done => true,
                    Fetched::Cancelled => return Ok(None),
                    Fetched::Failed(detail) => {
                        let error = Error::Fetch {
                            remote: remote.clone(),
                            branch: self.branch.clone(),
                            detail,
                        };
                        self.warn(&error.to_string(), on_warning);
                        false
                    }
                },
                None => true,
            };
            if fetched {
                let repository = open(&self.repo_root)?;
                match self.read_id(&repository)? {
                    Some(id) => {
                        self.last_warning = None;
                        if Some(id) != seen_id {
                            return Commit::read(&repository, id).map(Some);
                        }
                    }
                    None => {
                        let gone = self.gone().to_string();
                        self.warn(&gone, on_warning);
                    }
                }
            }
            if !sleep_unless_cancelled(self.poll, cancel) {
                return Ok(None);
            }
        }
    }

    fn warn(&mut self, message: &str, on_warning: &mut dyn FnMut(&str)) {
        if self.last_warning.as_deref() != Some(message) {
            on_warning(message);
            self.last_warning = Some(message.to_string());
        }
    }

    /// The commit the watched ref names, `None` when the ref does not exist.
    fn read(&self) -> Result<Option<Commit>, Error> {
        let repository = open(&self.repo_root)?;
        match self.read_id(&repository)? {
            Some(id) => Commit::read(&repository, id).map(Some),
            None => Ok(None),
        }
    }

    /// The object the watched ref names. The repository is opened anew at each poll (about
    /// 2.5 ms in a debug build, where a `git rev-parse` process takes 6 ms): it then sees new
    /// packs and packed refs, and the watch holds none of gix's handles, which are bound to
    /// their thread (`Rc`) in the build of gix Kiln uses.
    fn read_id(&self, repository: &gix::Repository) -> Result<Option<gix::ObjectId>, Error> {
        let Some(mut reference) = repository
            .try_find_reference(self.reference.as_str())
            .map_err(|e| read_error(&self.repo_root, e))?
        else {
            return Ok(None);
        };
        let id = reference
            .peel_to_id()
            .map_err(|e| read_error(&self.repo_root, e))?;
        Ok(Some(id.detach()))
    }

    fn gone(&self) -> Error {
        Error::BranchNotFound {
            branch: self.branch.clone(),
            place: match &self.remote {
                Some(remote) => format!("remote `{remote}`"),
                None => "this repository".into(),
            },
            known: String::new(),
        }
    }
}

fn open(root: &std::path::Path) -> Result<gix::Repository, Error> {
    gix::open(root).map_err(|e| read_error(root, e))
}

fn read_error(
    root: &std::path::Path,
    error: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::GitRead {
        path: root.to_path_buf(),
        source: Box::new(error),
    }
}

fn check_branch_name(branch: &str) -> Result<(), Error> {
    let valid = !branch.starts_with('-')
        && gix::refs::FullName::try_from(format!("refs/heads/{branch}")).is_ok();
    if valid {
        Ok(())
    } else {
        Err(Error::BadBranchName {
            branch: branch.to_string(),
        })
    }
}

fn local_branches(repository: &gix::Repository) -> String {
    let Ok(platform) = repository.references() else {
        return String::new();
    };
    let Ok(branches) = platform.local_branches() else {
        return String::new();
    };
    let names: Vec<String> = branches
        .filter_map(Result::ok)
        .map(|r| r.name().shorten().to_string())
        .collect();
    names.join(", ")
}

fn check_remote(repo: &Repo, remote: &str) -> Result<(), Error> {
    let names = git_checked(&repo.root, &["remote"])?;
    if names.lines().any(|name| name == remote) {
        return Ok(());
    }
    let known: Vec<&str> = names.lines().collect();
    Err(Error::RemoteNotFound {
        remote: remote.to_string(),
        known: if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        },
    })
}

/// Asks the remote for its branches; `branch` must be one of them.
fn check_remote_branch(repo: &Repo, remote: &str, branch: &str) -> Result<(), Error> {
    let output = git_output(&repo.root, &["ls-remote", "--heads", remote])?;
    if !output.status.success() {
        return Err(Error::Fetch {
            remote: remote.to_string(),
            branch: branch.to_string(),
            detail: failure_detail(&output),
        });
    }
    let listing = String::from_utf8_lossy(&output.stdout);
    let heads: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split('\t').nth(1))
        .filter_map(|name| name.strip_prefix("refs/heads/"))
        .collect();
    if heads.contains(&branch) {
        return Ok(());
    }
    let mut known: Vec<&str> = heads.iter().take(10).copied().collect();
    if heads.len() > known.len() {
        known.push("...");
    }
    Err(Error::BranchNotFound {
        branch: branch.to_string(),
        place: format!("remote `{remote}`"),
        known: known.join(", "),
    })
}

enum Fetched {
    Done,
    Failed(String),
    Cancelled,
}

/// `git fetch` of one branch into its remote-tracking ref, leaving `FETCH_HEAD`, tags and
/// submodules alone.
fn fetch(root: &std::path::Path, remote: &str, branch: &str, cancel: &AtomicBool) -> Fetched {
    let refspec = format!("+refs/heads/{branch}:refs/remotes/{remote}/{branch}");
    let mut command = git_command(
        root,
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            remote,
            &refspec,
        ],
    );
    command.stdout(Stdio::null()).process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return Fetched::Failed(format!("cannot start `git`: {error}")),
    };
    // Read while it runs, so that a chatty git never blocks on a full pipe.
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(error) => {
                stop(&mut child);
                return Fetched::Failed(format!("cannot wait for `git fetch`: {error}"));
            }
        }
        if cancel.load(Ordering::Relaxed) {
            stop(&mut child);
            return Fetched::Cancelled;
        }
        if started.elapsed() > FETCH_TIMEOUT {
            stop(&mut child);
            return Fetched::Failed(format!(
                "`git fetch` took longer than {} s and was stopped",
                FETCH_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(CANCEL_CHECK);
    };
    if status.success() {
        return Fetched::Done;
    }
    let text = stderr
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Fetched::Failed(if lines.is_empty() {
        format!("`git fetch` exited with {status}")
    } else {
        lines.join("; ")
    })
}

/// Kills the fetch and whatever it started (ssh, a remote helper): they share its group.
fn stop(child: &mut Child) {
    crate::run::signal_group(child.id(), libc::SIGKILL);
    let _ = child.wait();
}

/// Sleeps `duration`, waking every 50 ms to look at `cancel`; false when it was set.
fn sleep_unless_cancelled(duration: Duration, cancel: &AtomicBool) -> bool {
    let until = Instant::now() + duration;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep(CANCEL_CHECK.min(until - now));
    }
}
