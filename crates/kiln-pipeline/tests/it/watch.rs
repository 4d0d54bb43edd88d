//! Watching a branch: a local one read in place, a remote one fetched from a bare repository.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kiln_pipeline::{BranchWatch, Error, WatchSource, find_repo};

use crate::checkout::{commit_of, git};

const POLL: Duration = Duration::from_millis(50);

fn commit_file(dir: &Path, name: &str, message: &str) -> String {
    std::fs::write(dir.join(name), message).unwrap();
    git(dir, &["add", name]);
    git(dir, &["commit", "-qm", message]);
    git(dir, &["rev-parse", "HEAD"])
}

fn local_repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    commit_file(dir.path(), "f", "first");
    dir
}

fn watch(dir: &Path, source: WatchSource) -> Result<BranchWatch, Error> {
    BranchWatch::new(&find_repo(dir).unwrap().unwrap(), source, POLL)
}

/// Branch `main` of remote `origin`.
fn origin_main() -> WatchSource {
    WatchSource::Remote {
        remote: "origin".into(),
        branch: "main".into(),
    }
}

fn no_warnings() -> impl FnMut(&str) {
    |warning: &str| panic!("unexpected warning: {warning}")
}

#[test]
fn a_local_branch_gives_its_newest_commit_and_stops_when_cancelled() {
    let dir = local_repository();
    let mut watch = watch(dir.path(), WatchSource::Local { branch: None }).unwrap();
    assert_eq!(watch.branch(), "main");
    let first = watch.current().unwrap();
    assert_eq!(first, commit_of(dir.path(), "HEAD"));
    assert_eq!(first.subject, "first");

    // Two commits before anyone looks: the newest wins.
    commit_file(dir.path(), "f", "second");
    let third = commit_file(dir.path(), "f", "third");
    let cancel = AtomicBool::new(false);
    let seen = watch
        .wait_for_change(&first.sha, &cancel, &mut no_warnings())
        .unwrap()
        .unwrap();
    assert_eq!(
        (seen.sha.as_str(), seen.subject.as_str()),
        (third.as_str(), "third")
    );

    // A commit made while waiting.
    let path = dir.path().to_path_buf();
    let committer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        commit_file(&path, "f", "fourth")
    });
    let seen = watch
        .wait_for_change(&third, &cancel, &mut no_warnings())
        .unwrap()
        .unwrap();
    assert_eq!(seen.sha, committer.join().unwrap());

    // Nothing new: only the cancel flag ends the wait, long before the next poll.
    let mut slow = BranchWatch::new(
        &find_repo(dir.path()).unwrap().unwrap(),
        WatchSource::Local { branch: None },
        Duration::from_secs(30),
    )
    .unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let setter = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            cancel.store(true, Ordering::Relaxed);
        })
    };
    let started = Instant::now();
    let waited = slow
        .wait_for_change(&seen.sha, &cancel, &mut no_warnings())
        .unwrap();
    setter.join().unwrap();
    assert_eq!(waited, None);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_named_local_branch_is_watched_while_head_is_elsewhere() {
    let dir = local_repository();
    git(dir.path(), &["branch", "release"]);
    let mut watch = watch(
        dir.path(),
        WatchSource::Local {
            branch: Some("release".into()),
        },
    )
    .unwrap();
    let first = watch.current().unwrap();
    // A commit on `main` (where HEAD is) is not one on `release`.
    commit_file(dir.path(), "f", "on main");
    assert_eq!(watch.current().unwrap(), first);
    git(dir.path(), &["checkout", "-q", "release"]);
    let released = commit_file(dir.path(), "f", "on release");
    let cancel = AtomicBool::new(false);
    let seen = watch
        .wait_for_change(&first.sha, &cancel, &mut no_warnings())
        .unwrap()
        .unwrap();
    assert_eq!(seen.sha, released);

    // The branch is deleted, then made again: a warning, once, and the watch goes on.
    git(dir.path(), &["checkout", "-q", "main"]);
    git(dir.path(), &["branch", "-q", "-D", "release"]);
    let path = dir.path().to_path_buf();
    let remaker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        git(&path, &["branch", "release", "main"]);
        git(&path, &["rev-parse", "main"])
    });
    let mut warnings = Vec::new();
    let seen = watch
        .wait_for_change(&released, &cancel, &mut |w: &str| {
            warnings.push(w.to_string())
        })
        .unwrap()
        .unwrap();
    assert_eq!(seen.sha, remaker.join().unwrap());
    assert_eq!(warnings, ["no branch `release` in this repository"]);
}

/// A bare repository as `origin` (a file path), the user's clone of it, and another clone
/// that pushes to it.
fn remote_setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("origin.git");
    let pusher = dir.path().join("pusher");
    let user = dir.path().join("user");
    std::fs::create_dir_all(&pusher).unwrap();
    git(dir.path(), &["init", "-q", "--bare", "origin.git"]);
    git(&pusher, &["init", "-q"]);
    commit_file(&pusher, "f", "first");
    git(
        &pusher,
        &["remote", "add", "origin", origin.to_str().unwrap()],
    );
    git(&pusher, &["push", "-q", "origin", "main"]);
    git(
        dir.path(),
        &["clone", "-q", origin.to_str().unwrap(), "user"],
    );
    (dir, pusher, user)
}

#[test]
fn a_remote_branch_is_seen_through_fetch_and_outlives_a_failed_fetch() {
    let (dir, pusher, user) = remote_setup();
    let mut watch = watch(&user, origin_main()).unwrap();
    let first = watch.current().unwrap();
    assert_eq!(first.subject, "first");

    let pushed = commit_file(&pusher, "f", "pushed");
    git(&pusher, &["push", "-q", "origin", "main"]);
    let cancel = AtomicBool::new(false);
    let seen = watch
        .wait_for_change(&first.sha, &cancel, &mut no_warnings())
        .unwrap()
        .unwrap();
    assert_eq!(
        (seen.sha.as_str(), seen.subject.as_str()),
        (pushed.as_str(), "pushed")
    );
    // Only the remote-tracking ref moved: the user's branch and tree did not.
    assert_eq!(git(&user, &["rev-parse", "main"]), first.sha);
    assert_eq!(git(&user, &["status", "--porcelain"]), "");

    // The remote goes away; it comes back later with a new commit.
    let origin = dir.path().join("origin.git");
    let away = dir.path().join("origin.away");
    std::fs::rename(&origin, &away).unwrap();
    let returner = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        let back = commit_file(&pusher, "f", "after the outage");
        std::fs::rename(&away, &origin).unwrap();
        git(&pusher, &["push", "-q", "origin", "main"]);
        back
    });
    let mut warnings = Vec::new();
    let seen = watch
        .wait_for_change(&pushed, &cancel, &mut |w: &str| {
            warnings.push(w.to_string())
        })
        .unwrap()
        .unwrap();
    assert_eq!(seen.sha, returner.join().unwrap());
    // Reported once, not at every poll.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("cannot fetch branch `main` from `origin`: "),
        "{warnings:?}"
    );
}

#[test]
fn a_cancelled_watch_of_a_remote_returns_none() {
    let (_dir, _pusher, user) = remote_setup();
    let mut watch = watch(&user, origin_main()).unwrap();
    let current = watch.current().unwrap();
    let cancel = AtomicBool::new(true);
    assert_eq!(
        watch
            .wait_for_change(&current.sha, &cancel, &mut no_warnings())
            .unwrap(),
        None
    );
}

#[test]
fn a_branch_or_remote_that_does_not_exist_is_a_clear_error() {
    let (_dir, _pusher, user) = remote_setup();
    let error = watch(
        &user,
        WatchSource::Local {
            branch: Some("nope".into()),
        },
    )
    .unwrap_err();
    assert_eq!(error.to_string(), "no branch `nope` in this repository");
    assert_eq!(
        error.hint().as_deref(),
        Some("branches of this repository: main")
    );

    let error = watch(
        &user,
        WatchSource::Remote {
            remote: "upstream".into(),
            branch: "main".into(),
        },
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "no git remote `upstream` in this repository (remotes: origin)"
    );
    assert_eq!(
        error.hint().as_deref(),
        Some("add it with `git remote add upstream URL`")
    );

    let error = watch(
        &user,
        WatchSource::Remote {
            remote: "origin".into(),
            branch: "nope".into(),
        },
    )
    .unwrap_err();
    assert_eq!(error.to_string(), "no branch `nope` in remote `origin`");
    assert_eq!(
        error.hint().as_deref(),
        Some("branches of remote `origin`: main")
    );

    let error = watch(
        &user,
        WatchSource::Local {
            branch: Some("a..b".into()),
        },
    )
    .unwrap_err();
    assert_eq!(error.to_string(), "`a..b` is not a valid branch name");

    git(&user, &["checkout", "-q", "--detach"]);
    let error = watch(&user, WatchSource::Local { branch: None }).unwrap_err();
    assert!(matches!(&error, Error::DetachedHead { .. }), "{error:?}");
    assert_eq!(
        error.hint().as_deref(),
        Some("check out a branch, or name the branch to watch")
    );
}

#[test]
fn an_unreachable_remote_is_an_error_when_the_watch_starts() {
    let (dir, _pusher, user) = remote_setup();
    std::fs::remove_dir_all(dir.path().join("origin.git")).unwrap();
    let error = watch(&user, origin_main()).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("cannot fetch branch `main` from `origin`: "),
        "{error}"
    );
    assert!(error.hint().unwrap().contains("git remote get-url origin"));
}
