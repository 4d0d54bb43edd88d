//! One stage: its inputs and cache key, and then skip (outs intact), restore (outs from the
//! store) or run (the command, in its own process group), store the outs, check the data, and
//! write the stage-cache entry last.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kiln_registry::{CheckResult, CheckRule, OutKind, StageOut};
use kiln_spec::values::FlatValues;
use kiln_spec::{Project, RelPath, Stage, StageId};
use kiln_store::{Digest, EntryKind, Store, Tree};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::checks;
use crate::hashing::{PathDigest, StatCache, hash_path};
use crate::inputs::StageInputs;
use crate::python_env::PythonEnvironment;
use crate::run::{Failure, Outcome, StageReport, signal_group};

/// What every stage of a run shares.
pub(crate) struct StageContext<'a> {
    pub(crate) root: &'a Path,
    pub(crate) store: &'a Store,
    pub(crate) stat_cache: &'a StatCache,
    pub(crate) source_digests: DepDigests,
    pub(crate) environments: &'a HashMap<String, PythonEnvironment>,
    pub(crate) params: &'a HashMap<String, FlatValues>,
    pub(crate) params_files: &'a HashMap<String, PathBuf>,
    pub(crate) force: bool,
    pub(crate) cancel: &'a AtomicBool,
    /// Process groups of running commands, to stop them on cancel.
    pub(crate) running: Mutex<HashMap<StageId, u32>>,
    pub(crate) log_dirs: HashMap<String, PathBuf>,
}

/// Computes a stage's inputs and key, then skips, restores or runs it.
pub(crate) fn run_stage(
    stage: &Stage,
    context: &StageContext<'_>,
) -> (StageReport, Option<StageInputs>) {
    let started = Instant::now();
    let mut report = StageReport::not_run(&stage.id);
    let inputs = match stage_inputs(stage, context) {
        Ok(inputs) => inputs,
        Err(error) => {
            report.outcome = Outcome::Failed(Failure::internal(error));
            report.duration = started.elapsed();
            return (report, None);
        }
    };
    let key = inputs.key();
    report.key = Some(key);
    report.outcome = match execute(stage, &key, context, &mut report) {
        Ok(outcome) => outcome,
        Err(error) => Outcome::Failed(Failure::internal(error)),
    };
    report.duration = started.elapsed();
    (report, Some(inputs))
}

/// Where the cache of stage outputs keeps one entry: what each out held after the stage ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CacheEntry {
    pub(crate) outs: Vec<CachedOut>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CachedOut {
    pub(crate) path: String,
    pub(crate) kind: EntryKind,
    pub(crate) digest: Digest,
    /// For a file: whether it is executable (entries written before this was kept say no).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) executable: bool,
}

impl CachedOut {
    /// The out as a run records it.
    pub(crate) fn record(&self) -> StageOut {
        StageOut {
            path: self.path.clone(),
            kind: match self.kind {
                EntryKind::File => OutKind::File,
                EntryKind::Dir => OutKind::Dir,
            },
            digest: self.digest.to_hex(),
            executable: self.executable,
        }
    }
}

/// The project path a cache entry names.
fn entry_path(key: &Digest, out: &CachedOut) -> Result<RelPath, Error> {
    RelPath::resolve(&RelPath::root(), &out.path).ok_or_else(|| Error::CacheEntryPath {
        key: key.to_hex(),
        path: out.path.clone(),
    })
}

pub(crate) const RUN_CACHE: &str = "stage-cache";
/// Where folder outs keep their list of files.
pub(crate) const TREES: &str = kiln_store::TREES;

/// What the stage cache holds for a key, against the outs in the workspace.
pub(crate) enum CacheState {
    /// No entry: the command must run.
    Miss,
    /// An entry, and the outs hold what it names: nothing to do.
    Intact(CacheEntry),
    /// An entry, but outs are missing or modified: restore them from the store.
    Changed(CacheEntry),
}

/// The one place that decides between skipping, restoring and running (`kiln run` and
/// `kiln status` both ask it).
pub(crate) fn cache_state(
    store: &Store,
    root: &Path,
    stat_cache: &StatCache,
    key: &Digest,
) -> Result<CacheState, Error> {
    // An entry that does not parse (written by a newer Kiln, say) is no entry: the stage runs.
    let entry: Option<CacheEntry> = store
        .read_ref(RUN_CACHE, &key.to_hex())?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let Some(entry) = entry else {
        return Ok(CacheState::Miss);
    };
    for out in &entry.outs {
        let path = entry_path(key, out)?;
        let current = hash_path(root, &path, stat_cache).map_err(|source| Error::Hash {
            path: path.clone(),
            source,
        })?;
        if current.is_none_or(|c| c.digest != out.digest) {
            return Ok(CacheState::Changed(entry));
        }
    }
    Ok(CacheState::Intact(entry))
}

/// Digests of deps, by path (`None`: the dep does not exist).
pub(crate) type DepDigests = HashMap<RelPath, Option<Digest>>;

/// Hashes, all at once and on every core, the deps that no stage writes: they cannot change
/// during the run, and hashing them together keeps both cores busy even when the stages form a
/// chain (each stage would otherwise wait for the one before to hash its own deps).
pub(crate) fn hash_source_deps(
    project: &Project,
    stages: &[StageId],
    stat_cache: &StatCache,
) -> DepDigests {
    let produced: Vec<&RelPath> = project.stages().flat_map(|s| &s.outs).collect();
    let mut sources: Vec<&RelPath> = stages
        .iter()
        .filter_map(|id| project.stage(id))
        .flat_map(|s| &s.deps)
        .filter(|dep| !produced.iter().any(|out| dep.overlaps(out)))
        .collect();
    sources.sort();
    sources.dedup();
    sources
        .par_iter()
        .filter_map(|dep| {
            // An unreadable dep is left out, so that the stage reports the error itself.
            let digest = hash_path(&project.root, dep, stat_cache).ok()?;
            Some(((*dep).clone(), digest.map(|d| d.digest)))
        })
        .collect()
}

/// The inputs of a stage as they are now in the workspace; deps in `known` are not hashed again.
pub(crate) fn stage_inputs_now(
    stage: &Stage,
    root: &Path,
    stat_cache: &StatCache,
    known: &DepDigests,
    python: Option<String>,
    params: &FlatValues,
) -> Result<StageInputs, Error> {
    let mut deps = Vec::new();
    for dep in &stage.deps {
        let digest = match known.get(dep) {
            Some(digest) => *digest,
            None => hash_path(root, dep, stat_cache)
                .map_err(|source| Error::Hash {
                    path: dep.clone(),
                    source,
                })?
                .map(|d| d.digest),
        };
        deps.push((dep.clone(), digest));
    }
    Ok(StageInputs::new(stage, python, deps, params))
}

fn stage_inputs(stage: &Stage, context: &StageContext<'_>) -> Result<StageInputs, Error> {
    let python = context
        .environments
        .get(&stage.id.model)
        .map(|env| env.key.clone());
    let empty = FlatValues::new();
    let params = context.params.get(&stage.id.model).unwrap_or(&empty);
    stage_inputs_now(
        stage,
        context.root,
        context.stat_cache,
        &context.source_digests,
        python,
        params,
    )
}

fn execute(
    stage: &Stage,
    key: &Digest,
    context: &StageContext<'_>,
    report: &mut StageReport,
) -> Result<Outcome, Error> {
    let store = context.store;
    let state = if context.force {
        CacheState::Miss
    } else {
        cache_state(store, context.root, context.stat_cache, key)?
    };
    let (entry, intact) = match state {
        CacheState::Intact(entry) => (Some(entry), true),
        CacheState::Changed(entry) => (Some(entry), false),
        CacheState::Miss => (None, false),
    };
    if let Some(entry) = entry {
        // Checks are not part of the cache key (they may have been tightened since): run them.
        let checked = |report: &mut StageReport, outcome: Outcome| {
            report.checks = run_checks(stage, context.root);
            if report.checks.iter().any(|c| !c.passed) {
                Outcome::Failed(Failure::Checks)
            } else {
                outcome
            }
        };
        if intact {
            report.outs = entry.outs.iter().map(CachedOut::record).collect();
            return Ok(checked(report, Outcome::Cached));
        }
        match restore(key, &entry, context) {
            Ok(()) => {
                report.outs = entry.outs.iter().map(CachedOut::record).collect();
                return Ok(checked(report, Outcome::Restored));
            }
            // Objects missing from the store, say: run the command instead, and say so.
            Err(error) => {
                report.warnings.push(format!(
                    "could not restore the outs of `{}` from the cache ({}): ran its command instead",
                    stage.id,
                    error_chain(&error)
                ));
            }
        }
    }

    // Outs are removed first, so that nothing stale survives and a missing out is noticed.
    for out in &stage.outs {
        let absolute = out.to_path(context.root);
        remove_path(&absolute).map_err(|source| Error::io("remove", &absolute, source))?;
        if let Some(parent) = absolute.parent() {
            fs::create_dir_all(parent).map_err(|source| Error::io("create", parent, source))?;
        }
    }
    let log_dir = &context.log_dirs[&stage.id.model];
    fs::create_dir_all(log_dir).map_err(|source| Error::io("create", log_dir, source))?;
    let log_path = log_dir.join(format!("{}.log", stage.id.stage));
    report.log = Some(log_path.clone());
    let code = run_command(stage, context, &log_path)?;
    if context.cancel.load(Ordering::SeqCst) {
        return Ok(Outcome::Cancelled);
    }
    if code != Some(0) {
        return Ok(Outcome::Failed(Failure::Exit {
            code,
            log_tail: log_tail(&log_path, 20),
        }));
    }
    let mut outs = Vec::new();
    for out in &stage.outs {
        let Some(digest) =
            hash_path(context.root, out, context.stat_cache).map_err(|source| Error::Hash {
                path: out.clone(),
                source,
            })?
        else {
            return Ok(Outcome::Failed(Failure::MissingOut(out.clone())));
        };
        save_out(out, &digest, context)?;
        outs.push(CachedOut {
            path: out.to_string(),
            kind: digest.kind,
            digest: digest.digest,
            executable: digest.kind == EntryKind::File && is_executable(&out.to_path(context.root)),
        });
    }
    crate::gitignore::ignore_outs(context.root, &stage.outs, &mut report.warnings);
    report.checks = run_checks(stage, context.root);
    if report.checks.iter().any(|c| !c.passed) {
        return Ok(Outcome::Failed(Failure::Checks));
    }
    // The cache entry is written last: it only ever names outs that are wholly in the store.
    let entry = serde_json::to_vec(&CacheEntry { outs: outs.clone() })
        .expect("a cache entry serialises to JSON");
    store.write_ref(RUN_CACHE, &key.to_hex(), &entry)?;
    report.outs = outs.iter().map(CachedOut::record).collect();
    Ok(Outcome::Ran)
}

fn run_command(
    stage: &Stage,
    context: &StageContext<'_>,
    log_path: &Path,
) -> Result<Option<i32>, Error> {
    use std::os::unix::process::CommandExt;
    let log = File::create(log_path).map_err(|source| Error::io("create", log_path, source))?;
    let log_err = log
        .try_clone()
        .map_err(|source| Error::io("open", log_path, source))?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&stage.cmd)
        .current_dir(stage.workdir.to_path(context.root))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .envs(&stage.env)
        .env("KILN_STAGE", &stage.id.stage)
        .env("KILN_MODEL", &stage.id.model)
        .env("KILN_PROJECT_ROOT", context.root);
    if let Some(params) = context.params_files.get(&stage.id.model) {
        command.env("KILN_PARAMS", params);
    }
    if let Some(environment) = context.environments.get(&stage.id.model) {
        environment.apply(&mut command)?;
    }
    let spawn_error = |source| Error::Spawn {
        command: stage.cmd.clone(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    context
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(stage.id.clone(), child.id());
    let status = child.wait();
    // Whatever the command left behind in its group (`train.py &`, a subshell ignoring SIGTERM)
    // must not outlive it: it could still be writing the outs Kiln is about to store.
    signal_group(child.id(), libc::SIGKILL);
    context
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&stage.id);
    Ok(status.map_err(spawn_error)?.code())
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn save_out(out: &RelPath, digest: &PathDigest, context: &StageContext<'_>) -> Result<(), Error> {
    let absolute = out.to_path(context.root);
    match &digest.tree {
        None => context.store.put_file(&absolute, &digest.digest)?,
        Some(tree) => {
            for entry in &tree.entries {
                context
                    .store
                    .put_file(&absolute.join(&entry.path), &entry.digest)?;
            }
            let bytes = serde_json::to_vec(tree).expect("a tree serialises to JSON");
            context
                .store
                .write_ref(TREES, &digest.digest.to_hex(), &bytes)?;
        }
    }
    Ok(())
}

/// Whether a file has an execute bit (kept with the out, so that a restored or served copy
/// keeps it).
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// An error and its causes, in one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// A folder out's file list, from the store, checked against its digest and for paths that
/// would climb out of the folder.
pub(crate) fn read_tree(store: &Store, out: &RelPath, digest: &Digest) -> Result<Tree, Error> {
    store.get_tree(digest)?.ok_or_else(|| Error::TreeMissing {
        out: out.clone(),
        digest: digest.to_hex(),
    })
}

fn restore(key: &Digest, entry: &CacheEntry, context: &StageContext<'_>) -> Result<(), Error> {
    // Check that everything is in the store before touching the workspace.
    let mut plan = Vec::new();
    for out in &entry.outs {
        let path = entry_path(key, out)?;
        match out.kind {
            EntryKind::File => {
                if !context.store.contains(&out.digest) {
                    return Err(Error::ObjectMissing { path });
                }
                plan.push((path, None));
            }
            EntryKind::Dir => {
                let tree = read_tree(context.store, &path, &out.digest)?;
                if tree
                    .entries
                    .iter()
                    .any(|e| !context.store.contains(&e.digest))
                {
                    return Err(Error::ObjectMissing { path });
                }
                plan.push((path, Some(tree)));
            }
        }
    }
    for ((path, tree), out) in plan.into_iter().zip(&entry.outs) {
        let absolute = path.to_path(context.root);
        let remove = |path: &Path| remove_path(path).map_err(|e| Error::io("remove", path, e));
        match tree {
            None => {
                if absolute.is_dir() {
                    remove(&absolute)?;
                }
                context
                    .store
                    .restore_file(&out.digest, &absolute, out.executable)?;
            }
            Some(tree) => {
                remove(&absolute)?;
                for file in &tree.entries {
                    // Never through a link, never outside the out's folder.
                    let target = kiln_store::paths::join_inside(&absolute, &file.path)?;
                    context
                        .store
                        .restore_file(&file.digest, &target, file.executable)?;
                }
                fs::create_dir_all(&absolute)
                    .map_err(|source| Error::io("create", &absolute, source))?;
            }
        }
    }
    Ok(())
}

fn remove_path(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn run_checks(stage: &Stage, root: &Path) -> Vec<CheckResult> {
    let mut results = Vec::new();
    for check in &stage.checks {
        let result = |column: Option<String>, rule, passed, message| CheckResult {
            stage: stage.id.stage.clone(),
            file: check.file.to_string(),
            column,
            rule,
            passed,
            message,
        };
        match checks::run_check(root, check) {
            Ok(report) => results.extend(report.outcomes.into_iter().map(|outcome| {
                result(
                    outcome.column,
                    outcome.rule,
                    outcome.passed,
                    outcome.message,
                )
            })),
            Err(error) => results.push(result(None, CheckRule::Readable, false, error.to_string())),
        }
    }
    results
}
