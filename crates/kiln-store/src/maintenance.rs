//! `fsck` and `gc` over a blob store, given what references its content (the roots: registered
//! versions, stage-cache entries, recent runs, which the caller collects).
//!
//! `fsck` re-hashes every blob, reads every tree, and reports each corrupt or missing one with
//! what names it. `gc` removes what no root reaches, except what is younger than a grace
//! period: a run writing at the same time stores its blobs before it records them, and a blob
//! it finds already stored is made young again ([`crate::Store::put_file`]), so a grace longer
//! than any run keeps them until the record that names them exists.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use rayon::prelude::*;
use serde::Serialize;

use crate::blobs::{BlobInfo, BlobStore};
use crate::{Digest, Error, Store, Tree};

/// Something that names content: a registered version, a stage-cache entry, a run's out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub digest: Digest,
    /// Who names it, for people: `iris@v3`, ``stage-cache `1f2e…` ``, `run 12`.
    pub referrer: String,
    /// The path the referrer gives it (a run's out), if any.
    pub path: Option<String>,
    /// Whether the content must be in this store; `false` for content that may live only in
    /// a remote store (a registered version, fetched when needed).
    pub required: bool,
}

/// What is wrong with one blob or tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ProblemKind {
    /// The blob's content hashes to something else.
    Corrupt { actual: Digest },
    /// A tree or a root names a blob the store lacks.
    Missing,
    /// A tree that does not read, or does not hash to its name.
    CorruptTree { reason: String },
}

/// One damaged or missing blob or tree, with what names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The store it was found in (a folder or `s3://…`).
    pub store: String,
    pub digest: Digest,
    #[serde(flatten)]
    pub kind: ProblemKind,
    pub referenced_by: Vec<String>,
}

/// What `fsck` checked and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    pub trees_checked: usize,
    pub problems: Vec<Problem>,
}

/// Checks `store`: every blob it lists is re-hashed, every tree in `trees` and every root that
/// is a tree is read and its files looked up, and every required root must be there.
pub fn fsck(store: &dyn BlobStore, trees: &[Digest], roots: &[Root]) -> Result<FsckReport, Error> {
    let location = store.location();
    let blobs = store.list()?;
    let present: HashSet<Digest> = blobs.iter().map(|b| b.digest).collect();
    let mut report = FsckReport {
        blobs_checked: blobs.len(),
        bytes_checked: blobs.iter().map(|b| b.size).sum(),
        ..FsckReport::default()
    };
    let mut referrers: HashMap<Digest, Vec<String>> = HashMap::new();
    let mut found: BTreeMap<Digest, ProblemKind> = BTreeMap::new();

    // Trees: those stored, and the roots that are trees.
    let mut tree_digests: Vec<Digest> = trees.to_vec();
    tree_digests.extend(
        roots
            .iter()
            .map(|r| r.digest)
            .filter(|d| !present.contains(d)),
    );
    tree_digests.sort();
    tree_digests.dedup();
    let mut read_trees: HashMap<Digest, Tree> = HashMap::new();
    for digest in tree_digests {
        match store.get_tree(&digest) {
            Ok(Some(tree)) => {
                report.trees_checked += 1;
                read_trees.insert(digest, tree);
            }
            Ok(None) => {}
            Err(Error::CorruptTree { reason, .. }) => {
                report.trees_checked += 1;
                found.insert(digest, ProblemKind::CorruptTree { reason });
            }
            Err(error) => return Err(error),
        }
    }
    for root in roots {
        let name = |inner: Option<&str>| {
            let path = match (&root.path, inner) {
                (Some(path), Some(inner)) => Some(format!("{path}/{inner}")),
                (Some(path), None) => Some(path.clone()),
                (None, inner) => inner.map(str::to_string),
            };
            match path {
                Some(path) => format!("{}: `{path}`", root.referrer),
                None => root.referrer.clone(),
            }
        };
        referrers.entry(root.digest).or_default().push(name(None));
        if let Some(tree) = read_trees.get(&root.digest) {
            for entry in &tree.entries {
                referrers
                    .entry(entry.digest)
                    .or_default()
                    .push(name(Some(&entry.path)));
            }
        } else if root.required
            && !present.contains(&root.digest)
            && !found.contains_key(&root.digest)
        {
            found.insert(root.digest, ProblemKind::Missing);
        }
    }
    for (digest, tree) in &read_trees {
        for entry in &tree.entries {
            if !present.contains(&entry.digest) {
                found.entry(entry.digest).or_insert(ProblemKind::Missing);
                let by_tree = format!("tree `{}`: `{}`", digest.short(), entry.path);
                let names = referrers.entry(entry.digest).or_default();
                if !names.contains(&by_tree) {
                    names.push(by_tree);
                }
            }
        }
    }

    // Every blob, re-hashed on every core.
    let corrupt: Vec<(Digest, Result<Digest, Error>)> = blobs
        .par_iter()
        .map(|blob| (blob.digest, store.rehash(&blob.digest)))
        .collect();
    for (digest, rehashed) in corrupt {
        match rehashed {
            Ok(actual) if actual == digest => {}
            Ok(actual) => {
                found.insert(digest, ProblemKind::Corrupt { actual });
            }
            // Removed since it was listed (a concurrent gc): not damage.
            Err(Error::MissingObject { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    report.problems = found
        .into_iter()
        .map(|(digest, kind)| {
            let mut referenced_by = referrers.remove(&digest).unwrap_or_default();
            referenced_by.sort();
            referenced_by.dedup();
            Problem {
                store: location.clone(),
                digest,
                kind,
                referenced_by,
            }
        })
        .collect();
    Ok(report)
}

/// What `gc` removed, or would remove.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Blobs removed (or that would be), with their sizes.
    pub removed: Vec<RemovedBlob>,
    /// Trees (file lists) removed.
    pub removed_trees: Vec<Digest>,
    pub bytes_freed: u64,
    /// Blobs kept because something references them.
    pub kept_referenced: usize,
    /// Blobs kept only because they are younger than the grace period.
    pub kept_young: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedBlob {
    pub digest: Digest,
    pub size: u64,
}

/// Removes (or with `dry_run`, lists) the blobs and trees of `store` that no root reaches and
/// that are older than `grace`. A tree kept (a root, or young) keeps its files; a kept tree
/// that does not read stops the collection, since its files cannot be told apart.
pub fn gc(
    store: &Store,
    roots: &[Root],
    grace: Duration,
    dry_run: bool,
) -> Result<GcReport, Error> {
    let now = SystemTime::now();
    let young = |modified: SystemTime| now.duration_since(modified).unwrap_or_default() < grace;
    let root_digests: HashSet<Digest> = roots.iter().map(|r| r.digest).collect();
    let mut keep: HashSet<Digest> = root_digests.clone();
    let mut removed_trees = Vec::new();
    for (digest, modified) in store.list_trees()? {
        if root_digests.contains(&digest) || young(modified) {
            let tree = store.get_tree(&digest)?.ok_or_else(|| Error::CorruptTree {
                digest,
                location: store.root().display().to_string(),
                reason: "it vanished while it was read".to_string(),
            })?;
            keep.extend(tree.entries.iter().map(|e| e.digest));
        } else {
            removed_trees.push(digest);
        }
    }
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    let mut doomed: Vec<BlobInfo> = Vec::new();
    for blob in BlobStore::list(store)? {
        if keep.contains(&blob.digest) {
            report.kept_referenced += 1;
        } else if young(blob.modified) {
            report.kept_young += 1;
        } else {
            doomed.push(blob);
        }
    }
    doomed.sort_by_key(|b| b.digest);
    removed_trees.sort();
    if !dry_run {
        // Trees first: no tree is ever left naming a removed blob.
        for digest in &removed_trees {
            store.delete_tree(digest)?;
        }
        for blob in &doomed {
            BlobStore::delete(store, &blob.digest)?;
        }
    }
    report.bytes_freed = doomed.iter().map(|b| b.size).sum();
    report.removed = doomed
        .into_iter()
        .map(|b| RemovedBlob {
            digest: b.digest,
            size: b.size,
        })
        .collect();
    report.removed_trees = removed_trees;
    Ok(report)
}
