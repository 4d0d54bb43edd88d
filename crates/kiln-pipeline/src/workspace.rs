//! A project's state folder `.kiln/`: the run database, the object store, the stat cache and
//! the logs.

use std::path::{Path, PathBuf};

use kiln_registry::{Location, Registry, RunId};
use kiln_store::{BlobStore, Store};

use crate::Error;
use crate::hashing::StatCache;

/// Name of the state folder at the project root.
pub const STATE_DIR: &str = ".kiln";

/// Opens only the registry of the project at `root`, for readers that need nothing else of
/// `.kiln/` (the registry's HTTP API).
pub fn open_registry(root: &Path) -> Result<Registry, Error> {
    registry_in(&root.join(STATE_DIR))
}

fn registry_in(state_dir: &Path) -> Result<Registry, Error> {
    let sqlite = state_dir.join("kiln.db");
    Ok(Registry::connect(&Location::from_env(&sqlite))?)
}

/// Creates a state folder, ignored by git as a whole.
pub(crate) fn create_state_dir(state_dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(state_dir).map_err(|source| Error::io("create", state_dir, source))?;
    let ignore = state_dir.join(".gitignore");
    if !ignore.exists() {
        kiln_store::atomic::write(&ignore, b"# Kiln's local state: runs, cache, logs.\n*\n")
            .map_err(|source| Error::io("write", &ignore, source))?;
    }
    Ok(())
}

/// The open state of one project.
#[derive(Debug)]
pub struct Workspace {
    pub state_dir: PathBuf,
    pub registry: Registry,
    /// The working cache stages read and write: every out is here, on disk.
    pub store: Store,
    /// The remote blob store (`KILN_STORE_URL`), when one is configured: registered versions'
    /// artifacts are uploaded to it before they are registered, and fetched from it when a
    /// version is served on a machine that lacks them.
    pub remote: Option<Box<dyn BlobStore>>,
    pub stat_cache: StatCache,
}

impl Workspace {
    /// Opens `.kiln/` under `root`, creating it on first use. Recovers from a crashed run: runs
    /// left `running` are marked interrupted and half-written store files are removed.
    pub fn open(root: &Path) -> Result<Workspace, Error> {
        Workspace::open_state_dir(&root.join(STATE_DIR))
    }

    fn open_state_dir(state_dir: &Path) -> Result<Workspace, Error> {
        create_state_dir(state_dir)?;
        let state_dir = state_dir.to_path_buf();
        Ok(Workspace {
            registry: registry_in(&state_dir)?,
            store: Store::open(state_dir.join("store"))?,
            remote: kiln_store::remote_from_env()?
                .map(|remote| Box::new(remote) as Box<dyn BlobStore>),
            stat_cache: StatCache::load(&state_dir.join("stat-cache")),
            state_dir,
        })
    }

    /// The workspace of a clean checkout of the project (see [`crate::Checkout`]) at
    /// `checkout_root`: the registry, store, stage cache, logs and run lock of the project's
    /// state folder `state_dir`, so that stages cached by the user's runs are restored here and
    /// what runs here is the project's history; but a stat cache of its own, in
    /// `<checkout_root>/.kiln/` (removed with the checkout), as the checkout's files are other
    /// files than the user's.
    pub fn open_for_checkout(state_dir: &Path, checkout_root: &Path) -> Result<Workspace, Error> {
        let mut workspace = Workspace::open_state_dir(state_dir)?;
        let own = checkout_root.join(STATE_DIR);
        create_state_dir(&own)?;
        workspace.stat_cache = StatCache::load(&own.join("stat-cache"));
        Ok(workspace)
    }

    /// Takes the project's run lock, so that two runs never write the same outs at once. The
    /// lock is released when the returned file is dropped, or when the process dies.
    pub fn lock_for_run(&self) -> Result<std::fs::File, Error> {
        let path = self.state_dir.join("run.lock");
        kiln_store::lock::try_lock(&path)
            .map_err(|source| Error::io("lock", &path, source))?
            .ok_or(Error::Busy)
    }

    /// Where the logs of a run go.
    pub fn log_dir(&self, run: RunId) -> PathBuf {
        self.state_dir.join("logs").join(run.to_string())
    }
}
