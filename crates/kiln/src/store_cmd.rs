//! `kiln store`: the content-addressed store's upkeep. `fsck` re-hashes every blob (and, with a
//! remote store configured, every blob there) and reports each corrupt or missing one with what
//! names it; `gc` removes what no registered version, stage-cache entry or recent run names.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use kiln_pipeline::Workspace;
use kiln_pipeline::store_roots::{Retention, store_roots};
use kiln_store::maintenance::{FsckReport, GcReport, ProblemKind, Root, fsck, gc};
use serde::Serialize;

use crate::error::{CliError, Result};
use crate::exit;
use crate::printer::{errln, outln};

/// Blobs and trees younger than this are never collected: a run stores its outs before it
/// records them, and makes a reused blob young again, so the grace covers a run in progress.
const GRACE: Duration = Duration::from_secs(3600);

pub const FSCK_HELP: &str =
    "Re-hashes every blob of `.kiln/store` and reads every tree (a folder's file list); with
`KILN_STORE_URL` set, re-hashes every blob of the remote store too and checks that every
registered version's blobs are there. Each corrupt or missing blob is reported with its
digest and what references it (versions, stage-cache entries, runs).

Exit codes: 0 the store is sound, 1 a blob is corrupt or missing (or the store cannot be
read), 2 invalid command line or no `.kiln/` here.

Examples:
  kiln store fsck
  kiln store fsck --json";

pub const GC_HELP: &str =
    "Removes the blobs and trees of `.kiln/store` that nothing references: not a registered
version of any model, not a stage-cache entry, not a recent run (the newest --keep-runs runs
of each model, and every run of the last --keep-days days). A tree that is kept keeps its
files. Nothing younger than an hour is removed, and gc holds the project's run lock, so a run
writing at the same time loses nothing. The remote store is left alone.

Examples:
  kiln store gc --dry-run
  kiln store gc --keep-runs 5 --keep-days 7";

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Re-hash every blob and report the corrupt or missing ones, with what references them.
    #[command(after_help = FSCK_HELP)]
    Fsck {
        #[arg(long)]
        json: bool,
    },
    /// Remove blobs that no version, stage-cache entry or recent run references.
    #[command(after_help = GC_HELP)]
    Gc {
        /// Print what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep the outs of the newest N runs of each model.
        #[arg(long, value_name = "N", default_value_t = 20)]
        keep_runs: usize,
        /// Keep the outs of every run started in the last D days.
        #[arg(long, value_name = "D", default_value_t = 14)]
        keep_days: u64,
        #[arg(long)]
        json: bool,
    },
}

pub fn store(root: &Path, command: StoreCommand) -> Result<ExitCode> {
    let root = std::path::absolute(root)?;
    let state = root.join(kiln_pipeline::workspace::STATE_DIR);
    if !state.is_dir() {
        return Err(CliError::usage(format!(
            "`{}` holds no Kiln store (no `.kiln/` folder): run `kiln run` there first, or pass the project with `-C DIR`",
            root.display()
        )));
    }
    let workspace = Workspace::open(&root)?;
    match command {
        StoreCommand::Fsck { json } => run_fsck(&workspace, json),
        StoreCommand::Gc {
            dry_run,
            keep_runs,
            keep_days,
            json,
        } => {
            let retention = Retention {
                runs_per_model: keep_runs,
                max_age: Duration::from_secs(keep_days.saturating_mul(24 * 3600)),
            };
            run_gc(&workspace, &retention, dry_run, json)
        }
    }
}

#[derive(Serialize)]
struct CheckedStore {
    store: String,
    #[serde(flatten)]
    report: FsckReport,
}

fn run_fsck(workspace: &Workspace, json: bool) -> Result<ExitCode> {
    let roots = store_roots(workspace, &Retention::default())?;
    let store_error = kiln_pipeline::Error::from;
    let trees: Vec<_> = workspace
        .store
        .list_trees()
        .map_err(store_error)?
        .into_iter()
        .map(|(digest, _)| digest)
        .collect();
    let mut checked = vec![CheckedStore {
        store: workspace.store.root().display().to_string(),
        report: fsck(&workspace.store, &trees, &roots.all()).map_err(store_error)?,
    }];
    if let Some(remote) = &workspace.remote {
        // The remote holds registered versions: each must be there, whole.
        let versions: Vec<Root> = roots
            .versions
            .iter()
            .map(|root| Root {
                required: true,
                ..root.clone()
            })
            .collect();
        checked.push(CheckedStore {
            store: remote.location(),
            report: fsck(remote.as_ref(), &[], &versions).map_err(store_error)?,
        });
    }
    let problems: usize = checked.iter().map(|c| c.report.problems.len()).sum();
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "stores": checked,
                "problems": problems,
            }))?
        );
    } else {
        for store in &checked {
            let report = &store.report;
            outln!(
                "checked {} ({}) and {} in `{}`",
                count(report.blobs_checked, "blob"),
                size(report.bytes_checked),
                count(report.trees_checked, "tree"),
                store.store
            );
            for problem in &report.problems {
                match &problem.kind {
                    ProblemKind::Corrupt { actual } => {
                        outln!("corrupt: blob `{}` hashes to `{actual}`", problem.digest)
                    }
                    ProblemKind::Missing => outln!("missing: blob `{}`", problem.digest),
                    ProblemKind::CorruptTree { reason } => {
                        outln!("corrupt: tree `{}`: {reason}", problem.digest)
                    }
                }
                if problem.referenced_by.is_empty() {
                    outln!("  referenced by nothing");
                }
                for referrer in &problem.referenced_by {
                    outln!("  referenced by {referrer}");
                }
            }
        }
    }
    if problems == 0 {
        if !json {
            errln!("the store is sound");
        }
        return Ok(exit::code(exit::SUCCESS));
    }
    errln!(
        "error: {} corrupt or missing",
        if problems == 1 {
            "1 blob or tree is".to_string()
        } else {
            format!("{problems} blobs or trees are")
        }
    );
    errln!(
        "hint: rerun the stages that made them (`kiln run --force`); a corrupt blob nothing references can be removed by `kiln store gc`"
    );
    Ok(exit::code(exit::STAGE_FAILED))
}

fn run_gc(
    workspace: &Workspace,
    retention: &Retention,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode> {
    // No run of this project writes while the roots are read and the store is swept.
    let _lock = workspace.lock_for_run()?;
    let roots = store_roots(workspace, retention)?;
    let report: GcReport =
        gc(&workspace.store, &roots.all(), GRACE, dry_run).map_err(kiln_pipeline::Error::from)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(exit::code(exit::SUCCESS));
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for blob in &report.removed {
        outln!("{verb} blob `{}` ({})", blob.digest, size(blob.size));
    }
    for tree in &report.removed_trees {
        outln!("{verb} tree `{tree}`");
    }
    errln!(
        "{verb} {} and {}, {} {}; kept {} referenced and {} younger than an hour",
        count(report.removed.len(), "blob"),
        count(report.removed_trees.len(), "tree"),
        size(report.bytes_freed),
        if dry_run { "to free" } else { "freed" },
        count(report.kept_referenced, "blob"),
        report.kept_young,
    );
    Ok(exit::code(exit::SUCCESS))
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Bytes for people: exact below 1 KiB, else one decimal in binary units.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
