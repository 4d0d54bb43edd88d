//! Running a commit in a clean checkout: a git worktree of the user's repository, sharing the
//! project's registry and stage cache, leaving the user's tree alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use kiln_pipeline::{
    Checkout, Commit, Error, Event, Observer, Outcome, Repo, RunOptions, RunReport, Workspace,
    find_repo,
};

struct Quiet;

impl Observer for Quiet {
    fn on_event(&self, _event: Event<'_>) {}
}

pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        // `git status` would refresh the index: the tests compare it.
        .env("GIT_OPTIONAL_LOCKS", "0")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

pub(crate) fn commit_of(dir: &Path, rev: &str) -> Commit {
    Commit {
        sha: git(dir, &["rev-parse", rev]),
        subject: git(dir, &["log", "-1", "--format=%s", rev]),
    }
}

/// A repository whose project is its folder `proj/`: three stages, `b` reading `a`'s out.
fn repository() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("proj");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(dir.path().join("README"), "outside the project\n").unwrap();
    std::fs::write(
        project.join("kiln.yaml"),
        "models:\n  m:\n    stages:\n\
         \x20     a: {cmd: 'cat a.txt > a.out', deps: [a.txt], outs: [a.out]}\n\
         \x20     b: {cmd: 'cat a.out b.txt > b.out', deps: [a.out, b.txt], outs: [b.out]}\n\
         \x20     c: {cmd: 'cat c.txt > c.out', deps: [c.txt], outs: [c.out]}\n",
    )
    .unwrap();
    for name in ["a", "b", "c"] {
        std::fs::write(project.join(format!("{name}.txt")), format!("{name} 1\n")).unwrap();
    }
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-qm", "first"]);
    (dir, project)
}

fn run_in(workspace: &mut Workspace, root: &Path) -> RunReport {
    let project = kiln_spec::load(root).unwrap();
    let options = RunOptions {
        models: Vec::new(),
        overrides: Vec::new(),
        jobs: 2,
        force: false,
        cancel: Arc::new(AtomicBool::new(false)),
        artifact_check: None,
    };
    kiln_pipeline::run(workspace, &project, &options, &Quiet).unwrap()
}

fn outcomes(report: &RunReport) -> Vec<(String, Outcome)> {
    report.models[0]
        .stages
        .iter()
        .map(|s| (s.id.stage.clone(), s.outcome.clone()))
        .collect()
}

/// Everything of the user's repository a checkout must leave alone.
#[derive(Debug, PartialEq)]
struct UserState {
    head: String,
    branch: String,
    status: String,
    index: Vec<u8>,
    a_txt: String,
    stat_cache: Vec<u8>,
}

fn user_state(repo: &Path, project: &Path) -> UserState {
    UserState {
        head: git(repo, &["rev-parse", "HEAD"]),
        branch: git(repo, &["symbolic-ref", "HEAD"]),
        status: git(repo, &["status", "--porcelain", "--untracked-files=all"]),
        index: std::fs::read(repo.join(".git/index")).unwrap(),
        a_txt: std::fs::read_to_string(project.join("a.txt")).unwrap(),
        stat_cache: std::fs::read(project.join(".kiln/stat-cache")).unwrap(),
    }
}

fn worktrees(repo: &Path) -> usize {
    git(repo, &["worktree", "list", "--porcelain"])
        .lines()
        .filter(|l| l.starts_with("worktree "))
        .count()
}

#[test]
fn a_commit_runs_in_a_clean_checkout_sharing_the_projects_cache() {
    let (dir, project) = repository();
    let state_dir = project.join(".kiln");
    // The user ran the first commit in their tree: its stages are in the project's cache.
    let mut user = Workspace::open(&project).unwrap();
    let first_run = run_in(&mut user, &project);
    assert!(outcomes(&first_run).iter().all(|(_, o)| *o == Outcome::Ran));
    drop(user);
    let first = commit_of(dir.path(), "HEAD");
    // A second commit changes only `c`'s dep.
    std::fs::write(project.join("c.txt"), "c 2\n").unwrap();
    git(dir.path(), &["add", "proj/c.txt"]);
    git(dir.path(), &["commit", "-qm", "change c"]);
    let second = commit_of(dir.path(), "HEAD");
    assert_eq!(second.subject, "change c");
    // The user's tree is dirty: an edited file, a staged one.
    std::fs::write(project.join("a.txt"), "edited, not committed\n").unwrap();
    std::fs::write(project.join("staged.txt"), "staged\n").unwrap();
    git(dir.path(), &["add", "proj/staged.txt"]);
    let before = user_state(dir.path(), &project);

    let repo = find_repo(&project).unwrap().unwrap();
    assert_eq!(
        repo,
        Repo {
            root: dir.path().canonicalize().unwrap(),
            subdir: PathBuf::from("proj"),
        }
    );

    // The first commit, checked out: every stage comes from the user's runs.
    let checkout = Checkout::create(&repo, &state_dir, &first).unwrap();
    assert_eq!(
        checkout.worktree,
        state_dir.join("worktrees").join(&first.sha[..12])
    );
    assert_eq!(checkout.project_root, checkout.worktree.join("proj"));
    assert_eq!(
        std::fs::read_to_string(checkout.project_root.join("c.txt")).unwrap(),
        "c 1\n"
    );
    let mut workspace = Workspace::open_for_checkout(&state_dir, &checkout.project_root).unwrap();
    let report = run_in(&mut workspace, &checkout.project_root);
    assert_eq!(
        outcomes(&report),
        vec![
            ("a".into(), Outcome::Restored),
            ("b".into(), Outcome::Restored),
            ("c".into(), Outcome::Restored),
        ]
    );
    // The committed `a.txt`, not the user's edit.
    assert_eq!(
        std::fs::read_to_string(checkout.project_root.join("a.out")).unwrap(),
        "a 1\n"
    );
    let recorded = workspace.registry.run(report.models[0].run_id).unwrap();
    assert_eq!(
        (recorded.run.commit.as_deref(), recorded.run.dirty),
        (Some(first.sha.as_str()), false)
    );
    let worktree = checkout.worktree.clone();
    drop(workspace);
    drop(checkout);
    assert!(!worktree.exists(), "the worktree outlived its checkout");
    assert_eq!(worktrees(dir.path()), 1);

    // The second commit: only `c` runs, `a` and `b` are restored.
    let checkout = Checkout::create(&repo, &state_dir, &second).unwrap();
    let mut workspace = Workspace::open_for_checkout(&state_dir, &checkout.project_root).unwrap();
    let report = run_in(&mut workspace, &checkout.project_root);
    assert_eq!(
        outcomes(&report),
        vec![
            ("a".into(), Outcome::Restored),
            ("b".into(), Outcome::Restored),
            ("c".into(), Outcome::Ran),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(checkout.project_root.join("c.out")).unwrap(),
        "c 2\n"
    );
    let recorded = workspace.registry.run(report.models[0].run_id).unwrap();
    assert_eq!(
        (recorded.run.commit.as_deref(), recorded.run.dirty),
        (Some(second.sha.as_str()), false)
    );
    // Its runs are the project's: the user's registry has them.
    let user = Workspace::open(&project).unwrap();
    assert_eq!(
        user.registry.run(report.models[0].run_id).unwrap().run.id,
        report.models[0].run_id
    );
    drop(user);
    drop(workspace);
    drop(checkout);

    // Nothing of the user's changed: HEAD, branch, index, files, stat cache.
    assert_eq!(user_state(dir.path(), &project), before);
    assert_eq!(worktrees(dir.path()), 1);
    let left: Vec<_> = std::fs::read_dir(state_dir.join("worktrees"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// What a process killed while it ran leaves: a registered worktree with outs and edits in it
/// (its lock died with it).
fn leave_stale_worktree(repo: &Path, state_dir: &Path, commit: &Commit) -> PathBuf {
    let worktree = state_dir.join("worktrees").join(&commit.sha[..12]);
    git(
        repo,
        &[
            "worktree",
            "add",
            "-q",
            "--detach",
            worktree.to_str().unwrap(),
            &commit.sha,
        ],
    );
    std::fs::write(worktree.join("proj/a.out"), "left over\n").unwrap();
    std::fs::write(worktree.join("proj/a.txt"), "edited\n").unwrap();
    std::fs::write(worktree.with_extension("lock"), "").unwrap();
    worktree
}

#[test]
fn a_stale_worktree_left_by_a_killed_process_is_replaced() {
    let (dir, project) = repository();
    let state_dir = project.join(".kiln");
    let repo = find_repo(&project).unwrap().unwrap();
    let commit = commit_of(dir.path(), "HEAD");

    let worktree = leave_stale_worktree(dir.path(), &state_dir, &commit);
    let checkout = Checkout::create(&repo, &state_dir, &commit).unwrap();
    assert_eq!(checkout.worktree, worktree);
    assert!(!checkout.project_root.join("a.out").exists());
    assert_eq!(
        std::fs::read_to_string(checkout.project_root.join("a.txt")).unwrap(),
        "a 1\n"
    );
    assert_eq!(worktrees(dir.path()), 2);
    // A live checkout of the commit is not replaced.
    let error = Checkout::create(&repo, &state_dir, &commit).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "another Kiln process is running commit `{}` in a checkout",
            &commit.sha[..12]
        )
    );
    assert!(checkout.project_root.join("kiln.yaml").exists());
    drop(checkout);
    assert_eq!(worktrees(dir.path()), 1);
    assert!(!worktree.with_extension("lock").exists());

    // A folder git does not know, and a registration whose folder was deleted.
    std::fs::create_dir_all(worktree.join("junk")).unwrap();
    let checkout = Checkout::create(&repo, &state_dir, &commit).unwrap();
    assert!(!checkout.worktree.join("junk").exists());
    assert!(checkout.project_root.join("kiln.yaml").exists());
    drop(checkout);
    let gone = leave_stale_worktree(dir.path(), &state_dir, &commit);
    std::fs::remove_dir_all(&gone).unwrap();
    let checkout = Checkout::create(&repo, &state_dir, &commit).unwrap();
    assert!(checkout.project_root.join("kiln.yaml").exists());
    drop(checkout);
    assert!(!worktree.exists());
    assert_eq!(worktrees(dir.path()), 1);
}

#[test]
fn the_worktrees_killed_processes_left_are_removed_and_live_ones_kept() {
    let (dir, project) = repository();
    let state_dir = project.join(".kiln");
    let repo = find_repo(&project).unwrap().unwrap();
    let first = commit_of(dir.path(), "HEAD");
    for name in ["second", "third"] {
        std::fs::write(project.join("c.txt"), format!("{name}\n")).unwrap();
        git(dir.path(), &["commit", "-qam", name]);
    }
    let second = commit_of(dir.path(), "HEAD~1");
    let third = commit_of(dir.path(), "HEAD");

    let stale = leave_stale_worktree(dir.path(), &state_dir, &first);
    let live = Checkout::create(&repo, &state_dir, &second).unwrap();
    assert!(!stale.exists(), "a dead process's worktree was kept");
    let other = Checkout::create(&repo, &state_dir, &third).unwrap();
    assert!(
        live.project_root.join("kiln.yaml").exists(),
        "a live checkout was removed"
    );
    assert_eq!(worktrees(dir.path()), 3);
    drop(live);
    drop(other);
    assert_eq!(worktrees(dir.path()), 1);
    let left: Vec<_> = std::fs::read_dir(state_dir.join("worktrees"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_users_other_worktrees_are_left_alone() {
    let (dir, project) = repository();
    let state_dir = project.join(".kiln");
    let repo = find_repo(&project).unwrap().unwrap();
    let commit = commit_of(dir.path(), "HEAD");
    // The user's own worktree, on a disk that is not mounted now: `git worktree prune` would
    // forget it.
    let elsewhere = tempfile::tempdir().unwrap();
    let theirs = elsewhere.path().join("theirs");
    git(
        dir.path(),
        &[
            "worktree",
            "add",
            "-q",
            "--detach",
            theirs.to_str().unwrap(),
        ],
    );
    std::fs::rename(&theirs, elsewhere.path().join("unmounted")).unwrap();
    drop(Checkout::create(&repo, &state_dir, &commit).unwrap());
    assert_eq!(worktrees(dir.path()), 2);
}

#[test]
fn a_commit_the_repository_lacks_is_an_error_and_leaves_nothing() {
    let (dir, project) = repository();
    let state_dir = project.join(".kiln");
    let repo = find_repo(&project).unwrap().unwrap();
    let missing = Commit {
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        subject: String::new(),
    };
    let error = Checkout::create(&repo, &state_dir, &missing).unwrap_err();
    assert!(
        matches!(&error, Error::GitFailed { command, .. } if command.starts_with("worktree add")),
        "{error:?}"
    );
    let not_an_id = Commit {
        sha: "../../x".into(),
        subject: String::new(),
    };
    assert!(matches!(
        Checkout::create(&repo, &state_dir, &not_an_id),
        Err(Error::NotACommitId { .. })
    ));
    let short = Commit {
        sha: missing.sha[..12].to_string(),
        subject: String::new(),
    };
    let error = Checkout::create(&repo, &state_dir, &short).unwrap_err();
    assert_eq!(error.to_string(), "`0123456789ab` is not a full commit id");
    // A commit from before the project's folder existed.
    std::fs::write(dir.path().join("README"), "moved\n").unwrap();
    git(dir.path(), &["mv", "proj", "project"]);
    git(dir.path(), &["commit", "-qam", "rename"]);
    let moved = find_repo(&dir.path().join("project")).unwrap().unwrap();
    let state_dir = dir.path().join("project/.kiln");
    let before = commit_of(dir.path(), "HEAD~1");
    let error = Checkout::create(&moved, &state_dir, &before).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "commit `{}` has no folder `project`: the project is not in it",
            &before.sha[..12]
        )
    );
    assert!(!state_dir.join("worktrees").join(&before.sha[..12]).exists());
    assert_eq!(worktrees(dir.path()), 1);
}

#[test]
fn a_project_outside_git_has_no_repository() {
    let dir = tempfile::tempdir().unwrap();
    if !kiln_pipeline::git::in_repository(dir.path()) {
        assert_eq!(find_repo(dir.path()).unwrap(), None);
    }
}

#[test]
fn checkouts_and_watches_can_move_to_another_thread() {
    fn send<T: Send>() {}
    send::<Checkout>();
    send::<kiln_pipeline::BranchWatch>();
}
