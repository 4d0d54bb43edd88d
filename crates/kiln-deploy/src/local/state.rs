//! What the local supervisor serves, for the other processes of the project: it writes
//! `.kiln/deploy/state.json` whenever a deployment changes (`kiln ps` reads it, and `kiln deploy`
//! waits on it), and holds `.kiln/deploy/up.lock` for as long as it runs (the operating system
//! releases it when the process dies, so a stale state file is never taken for a live one).

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::target::DeploymentStatus;

/// The contents of `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub supervisor_pid: u32,
    /// When it was written (Unix milliseconds).
    pub written_ms: i64,
    pub deployments: Vec<DeploymentStatus>,
}

fn deploy_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("deploy")
}

/// Writes the state file; a write that fails leaves the previous one whole.
#[derive(Debug)]
pub(crate) struct StateWriter {
    path: PathBuf,
}

impl StateWriter {
    pub fn new(state_dir: &Path) -> StateWriter {
        StateWriter {
            path: deploy_dir(state_dir).join("state.json"),
        }
    }

    pub fn write(&self, deployments: &[DeploymentStatus]) {
        let state = State {
            supervisor_pid: std::process::id(),
            written_ms: super::backend::now_ms(),
            deployments: deployments.to_vec(),
        };
        if let Ok(text) = serde_json::to_vec_pretty(&state) {
            // `kiln ps` is the only reader, and the next change writes it again.
            let _ = std::fs::create_dir_all(self.path.parent().unwrap_or(Path::new(".")))
                .and_then(|()| kiln_store::atomic::write(&self.path, &text));
        }
    }
}

/// The state the running supervisor wrote; `None` when no supervisor runs for the project.
pub fn read(state_dir: &Path) -> Option<State> {
    if !supervisor_running(state_dir) {
        return None;
    }
    let text = std::fs::read(deploy_dir(state_dir).join("state.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Held by the one supervisor of a project while it runs.
#[derive(Debug)]
pub struct SupervisorLock {
    _file: File,
}

/// Takes the project's supervisor lock, or says which process holds it.
pub fn lock_supervisor(state_dir: &Path) -> Result<SupervisorLock, Error> {
    let dir = deploy_dir(state_dir);
    let path = dir.join("up.lock");
    let io = |action, source| Error::Io {
        action,
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(|source| io("create", source))?;
    match kiln_store::lock::try_lock(&path).map_err(|source| io("lock", source))? {
        Some(file) => {
            // The holder's pid, for the message another `kiln up` prints.
            let _ = std::fs::write(&path, std::process::id().to_string());
            Ok(SupervisorLock { _file: file })
        }
        None => Err(Error::SupervisorRunning {
            pid: std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse().ok()),
        }),
    }
}

/// True while a supervisor (`kiln up`) runs for the project.
pub fn supervisor_running(state_dir: &Path) -> bool {
    // Only looked at where a supervisor ran once: `kiln ps` creates nothing.
    let path = deploy_dir(state_dir).join("up.lock");
    path.is_file() && matches!(kiln_store::lock::try_lock(&path), Ok(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_supervisor_per_project_and_its_state_only_while_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!supervisor_running(dir.path()));
        let held = lock_supervisor(dir.path()).unwrap();
        assert!(supervisor_running(dir.path()));
        match lock_supervisor(dir.path()) {
            Err(Error::SupervisorRunning { pid }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a second supervisor was let in: {other:?}"),
        }
        StateWriter::new(dir.path()).write(&[]);
        assert_eq!(read(dir.path()).unwrap().supervisor_pid, std::process::id());
        drop(held);
        assert!(!supervisor_running(dir.path()));
        assert!(
            read(dir.path()).is_none(),
            "a stale state file read as live"
        );
    }
}
