//! What references content in a project's store, for `kiln store fsck` and `kiln store gc`:
//! every registered version (of any model), every stage-cache entry, and the outs of recent
//! runs. Only the registry's public queries are used (a run's outs cost one query per run).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_store::Digest;
use kiln_store::maintenance::Root;

use crate::Error;
use crate::stage::{CacheEntry, RUN_CACHE};
use crate::workspace::Workspace;

/// Which runs count as recent: the newest `runs_per_model` of each model, and every run
/// started within `max_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub runs_per_model: usize,
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            runs_per_model: 20,
            max_age: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// The roots of a project's store, grouped by what they come from.
#[derive(Debug, Clone, Default)]
pub struct StoreRoots {
    /// Registered versions' artifacts (`iris@v3`).
    pub versions: Vec<Root>,
    /// Stage-cache entries' outs.
    pub stage_cache: Vec<Root>,
    /// Recent runs' outs.
    pub runs: Vec<Root>,
}

impl StoreRoots {
    pub fn all(&self) -> Vec<Root> {
        [&self.versions, &self.stage_cache, &self.runs]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// Collects the roots of `workspace`'s store. A version's content must be in the local store
/// only when no remote store is configured (with one, it is fetched when needed); a
/// stage-cache entry's always must; a run's never must (a `gc` with a shorter retention may
/// have collected it), but a run still names what it references.
pub fn store_roots(workspace: &Workspace, retention: &Retention) -> Result<StoreRoots, Error> {
    let local_only = workspace.remote.is_none();
    let mut roots = StoreRoots::default();
    let registry = &workspace.registry;
    for model in registry.models()? {
        for version in registry.model_versions(&model.model)? {
            let Some(digest) = Digest::from_hex(&version.artifact_digest) else {
                return Err(Error::BadDigest {
                    run: version.lineage.run_id,
                    path: format!("{}@v{}", version.model, version.version),
                    digest: version.artifact_digest,
                });
            };
            roots.versions.push(Root {
                digest,
                referrer: format!("{}@v{}", version.model, version.version),
                path: None,
                required: local_only,
            });
        }
    }
    for key in workspace.store.list_refs(RUN_CACHE)? {
        // An entry that does not parse is no entry (see `cache_state`): it keeps nothing.
        let Some(entry) = workspace
            .store
            .read_ref(RUN_CACHE, &key)?
            .and_then(|bytes| serde_json::from_slice::<CacheEntry>(&bytes).ok())
        else {
            continue;
        };
        let short = key.get(..12).unwrap_or(&key);
        for out in entry.outs {
            roots.stage_cache.push(Root {
                digest: out.digest,
                referrer: format!("stage-cache `{short}`"),
                path: Some(out.path),
                required: true,
            });
        }
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let cutoff_ms = now_ms.saturating_sub(retention.max_age.as_millis() as i64);
    let mut seen_per_model: std::collections::HashMap<String, usize> = Default::default();
    // Newest first, every model at once.
    for run in registry.runs(None, i64::MAX as usize)? {
        let seen = seen_per_model.entry(run.model.clone()).or_default();
        *seen += 1;
        if *seen > retention.runs_per_model && run.started_at_ms < cutoff_ms {
            continue;
        }
        for stage in registry.run(run.id)?.stages {
            for out in stage.outs {
                let Some(digest) = Digest::from_hex(&out.digest) else {
                    return Err(Error::BadDigest {
                        run: run.id,
                        path: out.path,
                        digest: out.digest,
                    });
                };
                roots.runs.push(Root {
                    digest,
                    referrer: format!("run {}", run.id),
                    path: Some(out.path),
                    // Runs beyond another retention may have been collected: not damage.
                    required: false,
                });
            }
        }
    }
    Ok(roots)
}
