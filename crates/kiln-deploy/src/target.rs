//! A deployment target: where an environment's versions run. The [`crate::Controller`] decides
//! what should run (the environments' aliases in the registry) and asks the target to make it so;
//! the target owns how. [`crate::LocalTarget`] runs supervised serving processes on this machine;
//! a Kubernetes target (Deployment, Service, HPA) implements the same trait, so that `kiln up`,
//! `kiln deploy|promote|rollback|ps`, the alias history and the rollback rules are the same on
//! both.

use std::time::Duration;

use serde::Serialize;

use crate::ServedModel;

/// One version of one model, to be served in one environment.
#[derive(Debug, Clone)]
pub struct Release {
    pub environment: String,
    pub model: ServedModel,
    /// The request body the version answered when it was registered: the smoke test sends it to
    /// the new version before it takes any traffic. `None`: only readiness is checked.
    pub example: Option<serde_json::Value>,
    /// The git commit the version was trained from (a label of its Kubernetes objects).
    pub commit: Option<String>,
}

impl Release {
    pub fn model_name(&self) -> &str {
        &self.model.name
    }
}

/// How a deployment is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Answering its health checks.
    Ready,
    /// Missed its latest health checks; restarted if it keeps missing them.
    Unhealthy,
    /// Died or was killed; being restarted (with backoff when it keeps dying).
    Restarting,
    /// Nothing serves it (the supervisor is not running, or the environment was stopped).
    Stopped,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::Unhealthy => "unhealthy",
            Health::Restarting => "restarting",
            Health::Stopped => "stopped",
        }
    }
}

/// What runs in one environment now, as `kiln ps` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DeploymentStatus {
    pub model: String,
    pub environment: String,
    pub version: i64,
    /// `local` or `kubernetes`.
    pub target: String,
    /// Where clients send requests (the environment's stable address).
    pub url: String,
    pub port: u16,
    /// The serving process (local target).
    pub pid: Option<u32>,
    /// When the version started serving here (Unix milliseconds); a restart does not reset it.
    pub since_ms: i64,
    /// When the current process started (Unix milliseconds).
    pub started_ms: i64,
    pub restarts: u32,
    pub health: Health,
    /// Replicas ready and wanted (Kubernetes target; `None` on the local one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
}

/// How many replicas of a deployment are ready, of how many it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Replicas {
    pub ready: i32,
    pub desired: i32,
}

/// Something that happened to a deployment on its own (not asked for by the controller).
#[derive(Debug, Clone)]
pub enum TargetEvent {
    /// The serving process died or stopped answering; it is restarted after `restart_in`.
    Crashed {
        model: String,
        environment: String,
        version: i64,
        /// Exit status or missed health checks, and the last lines of its log.
        detail: String,
        restart_in: Duration,
    },
    /// Back after a crash: `down` is how long the environment had no process to serve it.
    Restarted {
        model: String,
        environment: String,
        version: i64,
        down: Duration,
    },
    /// The version keeps dying soon after it was rolled out: the controller rolls it back.
    CrashLoop {
        model: String,
        environment: String,
        version: i64,
        crashes: u32,
    },
}

/// Why a rollout did not happen. The version that served before still serves.
#[derive(Debug, Clone)]
pub struct RolloutError {
    /// One line: what failed (start, readiness, smoke test).
    pub message: String,
    /// The last lines of the new process's log, when it has one.
    pub log_tail: Option<String>,
}

impl std::fmt::Display for RolloutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Where versions run. Every method is blocking; implementations are shared between threads.
pub trait Target: Send + Sync {
    /// `local` or `kubernetes`.
    fn kind(&self) -> &'static str;

    /// Rolls `release` out: the new version starts beside the one serving, is probed with its
    /// example, and only then takes the environment's traffic; the old one is drained and
    /// stopped. `port` is the environment's port on its first rollout (`None` or 0: any free
    /// one); later rollouts keep the port the environment has. On `Err` nothing changed.
    fn roll_out(
        &self,
        release: &Release,
        port: Option<u16>,
    ) -> Result<DeploymentStatus, RolloutError>;

    /// What runs now, one entry per environment of each model.
    fn status(&self) -> Vec<DeploymentStatus>;

    /// Stops every environment (drains, then stops the serving processes).
    fn stop_all(&self);
}
