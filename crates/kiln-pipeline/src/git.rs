//! The git state a run records: the commit checked out and whether tracked files changed.
//!
//! Read in process, without a `git` process on the common path: `gix` reads HEAD, its commit's
//! tree and the index in a background thread while the stages are checked; then each tracked
//! file's stat is compared with the one the index recorded, taken from the stat cache when the
//! run already looked at the file (deps usually are most of a repository), else stat-ed then.
//! A clean answer needs certainty: the index's cached tree equals HEAD's tree (nothing staged)
//! and every tracked file's stat matches exactly and is not racily clean. Anything less (a
//! changed stat, a submodule, a sparse or split index, an error) is decided by `git status`,
//! as before; only a deleted tracked file is dirty without asking.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::hashing::{Stat, StatCache};

fn git(root: &Path, args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .current_dir(root)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Whether `root` is inside a git work tree (a `.git` folder or file above it).
pub fn in_repository(root: &Path) -> bool {
    root.ancestors().any(|dir| dir.join(".git").exists())
}

/// The commit checked out in the project's git repository, asked of `git` (`None` outside one).
pub fn git_commit(root: &Path) -> Option<String> {
    if !in_repository(root) {
        return None;
    }
    git(root, &["rev-parse", "HEAD"])
}

/// Whether tracked files have uncommitted changes, asked of `git status`.
pub fn git_dirty(root: &Path) -> bool {
    git_dirty_except(root, &[])
}

/// Whether tracked files other than `ours` (absolute paths) have uncommitted changes.
fn git_dirty_except(root: &Path, ours: &[PathBuf]) -> bool {
    let Some(status) = git(
        root,
        &["status", "--porcelain", "-z", "--untracked-files=no"],
    ) else {
        return false;
    };
    if status.is_empty() || ours.is_empty() {
        return !status.is_empty();
    }
    let Some(toplevel) = git(root, &["rev-parse", "--show-toplevel"]) else {
        return true;
    };
    let ours: Vec<PathBuf> = ours.iter().filter_map(|p| p.canonicalize().ok()).collect();
    let mut records = status.split('\0').filter(|r| !r.is_empty());
    while let Some(record) = records.next() {
        let (state, path) = record.split_at(record.len().min(3));
        if state.starts_with('R') || state.starts_with('C') {
            records.next(); // the rename's source
        }
        let changed = Path::new(&toplevel).join(path);
        let is_ours = changed
            .canonicalize()
            .is_ok_and(|changed| ours.contains(&changed));
        if !is_ours {
            return true;
        }
    }
    false
}

/// The git state being read in the background; [`GitCheck::finish`] gives the answer.
#[derive(Debug)]
pub struct GitCheck {
    root: PathBuf,
    reading: Option<JoinHandle<Read>>,
}

/// Starts reading the git state of the repository holding `root`. Outside a repository nothing
/// is started.
pub fn start_check(root: &Path) -> GitCheck {
    let reading = in_repository(root).then(|| {
        let root = root.to_path_buf();
        std::thread::spawn(move || read_repository(&root))
    });
    GitCheck {
        root: root.to_path_buf(),
        reading,
    }
}

impl GitCheck {
    /// The commit and whether tracked files differ from it; `stat_cache` holds the stats the
    /// run already took.
    pub fn finish(self, stat_cache: &StatCache) -> (Option<String>, bool) {
        let Some(reading) = self.reading else {
            return (None, false);
        };
        // The run's own `.gitignore` edits are not changes to the tree it ran on.
        let ours = crate::gitignore::written();
        match reading.join() {
            Ok(Read::Snapshot(snapshot)) => {
                let dirty = match snapshot.worktree_state(stat_cache, &ours) {
                    Certainty::Clean => false,
                    Certainty::Dirty => true,
                    Certainty::AskGit => git_dirty_except(&self.root, &ours),
                };
                (Some(snapshot.commit), dirty)
            }
            Ok(Read::NoCommit) => (None, false),
            Ok(Read::AskGit) | Err(_) => {
                let commit = git_commit(&self.root);
                let dirty = commit.is_some() && git_dirty_except(&self.root, &ours);
                (commit, dirty)
            }
        }
    }
}

enum Read {
    Snapshot(Snapshot),
    /// A repository without a commit yet: nothing to record.
    NoCommit,
    /// Something gix could not read: ask the `git` command.
    AskGit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Certainty {
    Clean,
    Dirty,
    AskGit,
}

/// What the index says of one tracked file.
struct Tracked {
    /// Absolute path, spelt as the stat cache spells it when the file is inside the project.
    path: String,
    in_project: bool,
    symlink: bool,
    size: u32,
    mtime: (u32, u32),
    ctime: (u32, u32),
    inode: u32,
}

struct Snapshot {
    commit: String,
    /// Something only `git status` can settle (staged changes, submodules, conflicts...).
    ask_git: bool,
    /// When the index was written: a file changed in the same instant may look unchanged.
    index_time: (u32, u32),
    tracked: Vec<Tracked>,
}

fn read_repository(root: &Path) -> Read {
    let Ok(repo) = gix::discover(root) else {
        return Read::AskGit;
    };
    let Some(workdir) = repo.workdir().map(Path::to_path_buf) else {
        return Read::AskGit;
    };
    let commit = match repo.head_id() {
        Ok(id) => id.detach(),
        // An unborn branch has no commit; anything else is for git to judge.
        Err(_) if repo.head().is_ok_and(|head| head.is_unborn()) => return Read::NoCommit,
        Err(_) => return Read::AskGit,
    };
    let Ok(head_tree) = repo.head_tree_id() else {
        return Read::AskGit;
    };
    // The trailing checksum is not verified, as git itself does not when it reads the index:
    // hashing the whole file would cost more than the rest of the check.
    let Ok(index) = gix::index::File::at(
        repo.index_path(),
        repo.object_hash(),
        true,
        gix::index::decode::Options::default(),
    ) else {
        return Read::AskGit;
    };
    // The index's cached tree is what `git commit` would write: equal to HEAD's tree, nothing
    // is staged. Missing or invalidated (after `git add`), only git can tell.
    let staged_clean = index
        .tree()
        .is_some_and(|tree| tree.num_entries.is_some() && tree.id == head_tree.detach());
    let mut ask_git = !staged_clean || index.is_sparse() || index.link().is_some();
    let (Ok(workdir_real), Ok(root_real)) = (workdir.canonicalize(), root.canonicalize()) else {
        return Read::AskGit;
    };
    // Where the project sits in the repository, as a `/`-separated prefix of index paths.
    let prefix = match root_real.strip_prefix(&workdir_real) {
        Ok(prefix) => prefix.to_string_lossy().replace('\\', "/"),
        Err(_) => return Read::AskGit,
    };
    let index_time = index.timestamp();
    let index_time = (
        u32::try_from(index_time.unix_seconds()).unwrap_or(u32::MAX),
        index_time.nanoseconds(),
    );
    let mut tracked = Vec::with_capacity(index.entries().len());
    for entry in index.entries() {
        use gix::index::entry::{Flags, Mode};
        if entry
            .flags
            .intersects(Flags::ASSUME_VALID | Flags::SKIP_WORKTREE)
        {
            continue;
        }
        if entry.mode == Mode::COMMIT
            || entry.mode == Mode::DIR
            || entry.flags.contains(Flags::INTENT_TO_ADD)
            || entry.stage_raw() != 0
        {
            ask_git = true;
            break;
        }
        let Ok(relative) = std::str::from_utf8(entry.path(&index)) else {
            ask_git = true;
            break;
        };
        let inside = if prefix.is_empty() {
            Some(relative)
        } else {
            relative
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
        };
        let (path, in_project) = match inside {
            Some(rest) => (root.join(rest), true),
            None => (workdir.join(relative), false),
        };
        tracked.push(Tracked {
            path: path.to_string_lossy().into_owned(),
            in_project,
            symlink: entry.mode == Mode::SYMLINK,
            size: entry.stat.size,
            mtime: (entry.stat.mtime.secs, entry.stat.mtime.nsecs),
            ctime: (entry.stat.ctime.secs, entry.stat.ctime.nsecs),
            inode: entry.stat.ino,
        });
    }
    Read::Snapshot(Snapshot {
        commit: commit.to_string(),
        ask_git,
        index_time,
        tracked,
    })
}

impl Snapshot {
    fn worktree_state(&self, stat_cache: &StatCache, ours: &[PathBuf]) -> Certainty {
        if self.ask_git {
            return Certainty::AskGit;
        }
        // One look into the stat cache for all files, then the rest stat-ed on every core.
        let known = stat_cache.stats_seen(
            self.tracked
                .iter()
                .map(|file| (file.in_project && !file.symlink).then_some(file.path.as_str())),
        );
        self.tracked
            .par_iter()
            .zip(known)
            .filter(|(file, _)| !ours.iter().any(|p| p.as_os_str() == file.path.as_str()))
            .map(|(file, known)| self.file_state(file, known))
            .reduce(
                || Certainty::Clean,
                // One deleted file settles it; otherwise one doubt sends it to git.
                |a, b| match (a, b) {
                    (Certainty::Dirty, _) | (_, Certainty::Dirty) => Certainty::Dirty,
                    (Certainty::AskGit, _) | (_, Certainty::AskGit) => Certainty::AskGit,
                    _ => Certainty::Clean,
                },
            )
    }

    fn file_state(&self, file: &Tracked, known: Option<Stat>) -> Certainty {
        let stat = match known {
            Some(stat) => stat,
            None => match std::fs::symlink_metadata(&file.path) {
                Ok(metadata) => Stat::of(&metadata),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Certainty::Dirty;
                }
                Err(_) => return Certainty::AskGit,
            },
        };
        let split = |ns: i128| {
            (
                (ns.div_euclid(1_000_000_000)) as u32,
                (ns.rem_euclid(1_000_000_000)) as u32,
            )
        };
        let same = stat.size as u32 == file.size
            && split(stat.mtime_ns) == file.mtime
            && split(stat.ctime_ns) == file.ctime
            && stat.inode as u32 == file.inode;
        // Racily clean: written in the same instant as the index, it may have changed since.
        let racy = file.mtime >= self.index_time;
        if same && !racy {
            Certainty::Clean
        } else {
            Certainty::AskGit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_in(dir: &Path, args: &[&str]) -> String {
        let output = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(["-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// A repository whose project (`sub/`) is a folder of it, with files inside and outside.
    fn repository() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sub");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(dir.path().join("README"), "outside the project\n").unwrap();
        for i in 0..20 {
            std::fs::write(root.join(format!("data/f{i}.txt")), format!("{i}\n")).unwrap();
        }
        // Files written in the same clock tick as the index would be racily clean.
        std::thread::sleep(std::time::Duration::from_millis(50));
        git_in(dir.path(), &["init", "-q"]);
        git_in(dir.path(), &["add", "."]);
        git_in(dir.path(), &["commit", "-qm", "first"]);
        (dir, root)
    }

    fn certainty(root: &Path, cache: &StatCache) -> Certainty {
        match read_repository(root) {
            Read::Snapshot(snapshot) => snapshot.worktree_state(cache, &[]),
            Read::NoCommit => panic!("no commit"),
            Read::AskGit => Certainty::AskGit,
        }
    }

    #[test]
    fn a_clean_checkout_is_settled_without_git() {
        let (dir, root) = repository();
        let cache = StatCache::load(&dir.path().join("stat-cache"));
        assert_eq!(certainty(&root, &cache), Certainty::Clean);
        // With the stats the run took (hashing the deps), the answer is the same.
        let data = kiln_spec::RelPath::resolve(&kiln_spec::RelPath::root(), "data").unwrap();
        crate::hashing::hash_path(&root, &data, &cache).unwrap();
        let f3 = root.join("data/f3.txt").to_string_lossy().into_owned();
        assert!(cache.stats_seen([Some(f3.as_str())].into_iter())[0].is_some());
        assert_eq!(certainty(&root, &cache), Certainty::Clean);
        let (commit, dirty) = start_check(&root).finish(&cache);
        assert_eq!(commit, Some(git_in(dir.path(), &["rev-parse", "HEAD"])));
        assert!(!dirty);
    }

    #[test]
    fn changes_are_dirty_and_doubts_go_to_git() {
        let (dir, root) = repository();
        let cache = StatCache::load(&dir.path().join("stat-cache"));
        // A rewritten file: its stat changed, git decides (and sees the change).
        std::fs::write(root.join("data/f1.txt"), "changed\n").unwrap();
        assert_eq!(certainty(&root, &cache), Certainty::AskGit);
        assert!(start_check(&root).finish(&cache).1);
        // Rewritten with its old content: git decides, and finds it clean.
        std::fs::write(root.join("data/f1.txt"), "1\n").unwrap();
        assert!(!start_check(&root).finish(&cache).1);
        // A deleted tracked file, outside the project: dirty without asking.
        std::fs::remove_file(dir.path().join("README")).unwrap();
        assert_eq!(certainty(&root, &cache), Certainty::Dirty);
        git_in(dir.path(), &["checkout", "--", "README"]);
        // A staged change: the index no longer matches HEAD.
        std::fs::write(root.join("data/f2.txt"), "staged\n").unwrap();
        git_in(dir.path(), &["add", "sub/data/f2.txt"]);
        assert_eq!(certainty(&root, &cache), Certainty::AskGit);
        assert!(start_check(&root).finish(&cache).1);
    }

    #[test]
    fn no_repository_and_no_commit_record_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StatCache::load(&dir.path().join("stat-cache"));
        if !in_repository(dir.path()) {
            assert_eq!(start_check(dir.path()).finish(&cache), (None, false));
        }
        git_in(dir.path(), &["init", "-q"]);
        assert_eq!(start_check(dir.path()).finish(&cache), (None, false));
    }

    #[test]
    fn a_linked_worktree_reads_its_own_commit_and_index() {
        let (dir, root) = repository();
        let first = git_in(dir.path(), &["rev-parse", "HEAD"]);
        std::fs::write(root.join("data/f1.txt"), "second\n").unwrap();
        git_in(dir.path(), &["commit", "-qam", "second"]);
        let worktree = dir.path().join("linked");
        git_in(
            dir.path(),
            &["worktree", "add", "-q", "--detach", "linked", &first],
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        let linked_root = worktree.join("sub");
        let cache = StatCache::load(&dir.path().join("stat-cache"));
        assert_eq!(
            start_check(&linked_root).finish(&cache),
            (Some(first.clone()), false)
        );
        // The main tree is on the second commit; the linked one's change is its own.
        std::fs::write(linked_root.join("data/f2.txt"), "changed\n").unwrap();
        assert_eq!(
            start_check(&linked_root).finish(&cache),
            (Some(first), true)
        );
        let second = git_in(dir.path(), &["rev-parse", "HEAD"]);
        assert_eq!(start_check(&root).finish(&cache), (Some(second), false));
    }
}
