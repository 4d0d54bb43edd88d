//! The local target: Kiln supervises the serving processes itself. Each environment of a model
//! has a front on its stable port (`kiln_serve::front`, the local analogue of a Kubernetes
//! Service) and one `kiln serve` process behind it. A rollout starts the new version beside the
//! old, smoke-tests it, switches the front, drains and stops the old. A monitor thread per
//! environment restarts a process that dies or stops answering its health checks, from the same
//! version, with backoff when it keeps dying, and reports a version that crash-loops soon after
//! its rollout so that the controller rolls it back.

mod backend;
pub mod state;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln_serve::front::Front;

pub use backend::LocalOptions;
use backend::{Backend, describe_exit};

use crate::target::{DeploymentStatus, Health, Release, RolloutError, Target, TargetEvent};

/// Consecutive missed health checks after which a process is restarted.
const MISSED_CHECKS: u32 = 3;
/// Crashes within this long after a rollout that make a crash loop (with [`CRASH_LOOP`]).
const CRASH_WINDOW: Duration = Duration::from_secs(60);
const CRASH_LOOP: usize = 3;
/// How long a switched-out process may take to finish its requests before it is stopped.
const DRAIN: Duration = Duration::from_secs(30);
/// How long a process may take to exit after being asked to.
const STOP_GRACE: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(20);

/// Serving processes on this machine, supervised.
pub struct LocalTarget {
    inner: Arc<Inner>,
}

struct Inner {
    options: LocalOptions,
    slots: Mutex<BTreeMap<(String, String), Arc<Slot>>>,
    events: Sender<TargetEvent>,
    state: state::StateWriter,
}

/// One environment of one model.
struct Slot {
    model: String,
    environment: String,
    front: Front,
    serving: Mutex<Option<Serving>>,
    /// Held for the whole of a rollout: one at a time per environment.
    rollout: Mutex<()>,
    stop: AtomicBool,
    monitor: Mutex<Option<JoinHandle<()>>>,
}

/// The version an environment serves, and its process.
struct Serving {
    release: Release,
    /// `None` while the process is being restarted.
    backend: Option<Backend>,
    since_ms: i64,
    rolled_out: Instant,
    restarts: u32,
    health: Health,
    missed_checks: u32,
    crashes: Vec<Instant>,
    restart_at: Option<Instant>,
    down_since: Option<Instant>,
    next_check: Instant,
    crash_loop_reported: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalTarget {
    /// A target with no environment yet; `events` receives crashes, restarts and crash loops.
    /// The deployments are written to `<state_dir>/deploy/state.json` as they change.
    pub fn new(options: LocalOptions, events: Sender<TargetEvent>) -> LocalTarget {
        let state = state::StateWriter::new(&options.state_dir);
        LocalTarget {
            inner: Arc::new(Inner {
                options,
                slots: Mutex::new(BTreeMap::new()),
                events,
                state,
            }),
        }
    }

    fn slot(
        &self,
        model: &str,
        environment: &str,
        port: Option<u16>,
    ) -> Result<Arc<Slot>, RolloutError> {
        let key = (model.to_string(), environment.to_string());
        let mut slots = lock(&self.inner.slots);
        if let Some(slot) = slots.get(&key) {
            return Ok(Arc::clone(slot));
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port.unwrap_or(0)));
        let front = Front::bind(addr, self.inner.options.hold).map_err(|error| RolloutError {
            message: format!("cannot serve `{environment}` of `{model}`: {error}"),
            log_tail: None,
        })?;
        let slot = Arc::new(Slot {
            model: model.to_string(),
            environment: environment.to_string(),
            front,
            serving: Mutex::new(None),
            rollout: Mutex::new(()),
            stop: AtomicBool::new(false),
            monitor: Mutex::new(None),
        });
        let monitor = {
            let slot = Arc::clone(&slot);
            let inner = Arc::clone(&self.inner);
            std::thread::Builder::new()
                .name(format!("kiln-supervise-{model}@{environment}"))
                .spawn(move || supervise(&inner, &slot))
                .map_err(|error| RolloutError {
                    message: format!("cannot start the supervisor thread: {error}"),
                    log_tail: None,
                })?
        };
        *lock(&slot.monitor) = Some(monitor);
        slots.insert(key, Arc::clone(&slot));
        Ok(slot)
    }
}

impl Target for LocalTarget {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn roll_out(
        &self,
        release: &Release,
        port: Option<u16>,
    ) -> Result<DeploymentStatus, RolloutError> {
        let slot = self.slot(release.model_name(), &release.environment, port)?;
        let _one_at_a_time = lock(&slot.rollout);
        let mut backend = Backend::spawn(&self.inner.options, release)?;
        backend.wait_ready(self.inner.options.ready_timeout)?;
        if let Some(example) = &release.example {
            kiln_serve::front::predict_example(
                backend.addr,
                release.model_name(),
                example,
                Duration::from_secs(30),
            )
            .map_err(|error| {
                backend.failure(format!(
                    "the smoke test on the version's example failed: {error}"
                ))
            })?;
        }
        let (previous, drain) = {
            let mut serving = lock(&slot.serving);
            let drain = slot.front.set_backend(Some(backend.addr));
            let previous = serving.replace(Serving::new(release.clone(), backend));
            (previous, drain)
        };
        drain.wait(DRAIN);
        if let Some(Serving {
            backend: Some(old), ..
        }) = previous
        {
            old.stop(STOP_GRACE);
        }
        self.inner.write_state();
        // `None` only when the target was stopped meanwhile (Ctrl-C during the rollout).
        slot.status(self.kind()).ok_or_else(|| RolloutError {
            message: "the environment was stopped during its rollout".into(),
            log_tail: None,
        })
    }

    fn status(&self) -> Vec<DeploymentStatus> {
        self.inner.status()
    }

    fn stop_all(&self) {
        let slots: Vec<Arc<Slot>> = std::mem::take(&mut *lock(&self.inner.slots))
            .into_values()
            .collect();
        for slot in &slots {
            slot.stop.store(true, Ordering::SeqCst);
            if let Some(monitor) = lock(&slot.monitor).take() {
                let _ = monitor.join();
            }
            let serving = lock(&slot.serving).take();
            let drain = slot.front.set_backend(None);
            drain.wait(DRAIN);
            if let Some(Serving {
                backend: Some(backend),
                ..
            }) = serving
            {
                backend.stop(STOP_GRACE);
            }
        }
        for slot in slots {
            if let Ok(slot) = Arc::try_unwrap(slot) {
                slot.front.shutdown(STOP_GRACE);
            }
        }
        self.inner.write_state();
    }
}

impl Drop for LocalTarget {
    fn drop(&mut self) {
        if !lock(&self.inner.slots).is_empty() {
            self.stop_all();
        }
    }
}

impl Inner {
    fn status(&self) -> Vec<DeploymentStatus> {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .filter_map(|slot| slot.status("local"))
            .collect()
    }

    fn write_state(&self) {
        self.state.write(&self.status());
    }

    fn send(&self, event: TargetEvent) {
        // Nobody listening (the controller is shutting down): nothing to tell.
        let _ = self.events.send(event);
    }
}

impl Slot {
    fn status(&self, target: &str) -> Option<DeploymentStatus> {
        let serving = lock(&self.serving);
        let serving = serving.as_ref()?;
        let port = self.front.local_addr().port();
        Some(DeploymentStatus {
            model: self.model.clone(),
            environment: self.environment.clone(),
            version: serving.release.model.version,
            target: target.to_string(),
            url: format!("http://127.0.0.1:{port}"),
            port,
            pid: serving.backend.as_ref().map(Backend::pid),
            since_ms: serving.since_ms,
            started_ms: serving
                .backend
                .as_ref()
                .map_or(serving.since_ms, |b| b.started_ms),
            restarts: serving.restarts,
            health: serving.health,
            replicas: None,
        })
    }
}

impl Serving {
    fn new(release: Release, backend: Backend) -> Serving {
        Serving {
            release,
            since_ms: backend.started_ms,
            backend: Some(backend),
            rolled_out: Instant::now(),
            restarts: 0,
            health: Health::Ready,
            missed_checks: 0,
            crashes: Vec::new(),
            restart_at: None,
            down_since: None,
            next_check: Instant::now(),
            crash_loop_reported: false,
        }
    }

    /// Records a crash and plans the restart: at once after the first crash in a while, then
    /// with a delay that doubles (0.25 s ... 10 s) while it keeps crashing. Returns what to
    /// report, once the state file says so.
    fn crashed(&mut self, slot: &Slot, detail: String) -> Vec<TargetEvent> {
        let now = Instant::now();
        self.backend = None;
        self.health = Health::Restarting;
        self.down_since.get_or_insert(now);
        self.crashes
            .retain(|at| now.duration_since(*at) < CRASH_WINDOW);
        self.crashes.push(now);
        let recent = self.crashes.len() as u32;
        let delay = match recent {
            0 | 1 => Duration::ZERO,
            n => Duration::from_millis(250 * 2u64.pow((n - 2).min(6))).min(Duration::from_secs(10)),
        };
        self.restart_at = Some(now + delay);
        let version = self.release.model.version;
        let mut events = vec![TargetEvent::Crashed {
            model: slot.model.clone(),
            environment: slot.environment.clone(),
            version,
            detail,
            restart_in: delay,
        }];
        if !self.crash_loop_reported
            && now.duration_since(self.rolled_out) < CRASH_WINDOW
            && self.crashes.len() >= CRASH_LOOP
        {
            self.crash_loop_reported = true;
            events.push(TargetEvent::CrashLoop {
                model: slot.model.clone(),
                environment: slot.environment.clone(),
                version,
                crashes: recent,
            });
        }
        events
    }
}

/// The monitor of one environment: restarts its process when it dies or stops answering.
fn supervise(inner: &Inner, slot: &Slot) {
    while !slot.stop.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        let mut changed = false;
        let mut events = Vec::new();
        let mut restart: Option<Release> = None;
        let mut check: Option<SocketAddr> = None;
        {
            let mut guard = lock(&slot.serving);
            let Some(serving) = guard.as_mut() else {
                continue;
            };
            let now = Instant::now();
            match serving.backend.as_mut() {
                Some(backend) => {
                    if let Some(status) = backend.exited() {
                        let tail = backend.log_tail();
                        let detail = with_tail(
                            format!(
                                "the serving process (pid {}) {}",
                                backend.pid(),
                                describe_exit(status)
                            ),
                            tail,
                        );
                        let _ = slot.front.set_backend(None);
                        events = serving.crashed(slot, detail);
                        changed = true;
                    } else if now >= serving.next_check {
                        serving.next_check = now + inner.options.health_interval;
                        check = Some(backend.addr);
                    }
                }
                None => {
                    if serving.restart_at.is_some_and(|at| now >= at) {
                        serving.restart_at = None;
                        restart = Some(serving.release.clone());
                    }
                }
            }
        }
        if let Some(addr) = check {
            let (health_changed, health_events) = health_check(inner, slot, addr);
            changed |= health_changed;
            events.extend(health_events);
        }
        if let Some(release) = restart {
            events.extend(restart_process(inner, slot, &release));
            changed = true;
        }
        // The state file first: whoever hears of an event and runs `kiln ps` sees it there.
        if changed {
            inner.write_state();
        }
        for event in events {
            inner.send(event);
        }
    }
}

/// Checks that the process at `addr` answers; after [`MISSED_CHECKS`] misses in a row it is
/// killed and restarted. True when the deployment's health changed, and what to report.
fn health_check(inner: &Inner, slot: &Slot, addr: SocketAddr) -> (bool, Vec<TargetEvent>) {
    let timeout = inner
        .options
        .health_interval
        .min(Duration::from_millis(500));
    let answer = kiln_serve::front::check_live(addr, timeout);
    let mut guard = lock(&slot.serving);
    let Some(serving) = guard.as_mut() else {
        return (false, Vec::new());
    };
    // Checked outside the lock: the process may have been replaced meanwhile.
    if serving.backend.as_ref().map(|b| b.addr) != Some(addr) {
        return (false, Vec::new());
    }
    match answer {
        Ok(()) => {
            serving.missed_checks = 0;
            let changed = serving.health != Health::Ready;
            serving.health = Health::Ready;
            (changed, Vec::new())
        }
        Err(error) => {
            serving.missed_checks += 1;
            serving.health = Health::Unhealthy;
            let mut events = Vec::new();
            if serving.missed_checks >= MISSED_CHECKS {
                if let Some(mut backend) = serving.backend.take() {
                    backend.kill();
                }
                let _ = slot.front.set_backend(None);
                serving.missed_checks = 0;
                let detail = format!(
                    "the serving process missed {MISSED_CHECKS} health checks in a row ({error}) and was killed"
                );
                events = serving.crashed(slot, detail);
            }
            (true, events)
        }
    }
}

/// Starts `release` again after a crash; the front holds requests meanwhile. Returns what to
/// report.
fn restart_process(inner: &Inner, slot: &Slot, release: &Release) -> Vec<TargetEvent> {
    let started = Backend::spawn(&inner.options, release).and_then(|mut backend| {
        backend.wait_ready(inner.options.ready_timeout)?;
        Ok(backend)
    });
    let mut guard = lock(&slot.serving);
    let Some(serving) = guard.as_mut() else {
        return Vec::new();
    };
    // A rollout replaced the version while this one restarted: it is not needed any more.
    if serving.release.model.version != release.model.version || serving.backend.is_some() {
        return Vec::new();
    }
    match started {
        Ok(backend) => {
            let _ = slot.front.set_backend(Some(backend.addr));
            serving.backend = Some(backend);
            serving.restarts += 1;
            serving.health = Health::Ready;
            serving.next_check = Instant::now() + inner.options.health_interval;
            let down = serving
                .down_since
                .take()
                .map_or(Duration::ZERO, |at| at.elapsed());
            vec![TargetEvent::Restarted {
                model: slot.model.clone(),
                environment: slot.environment.clone(),
                version: release.model.version,
                down,
            }]
        }
        Err(error) => {
            let detail = with_tail(error.message, error.log_tail);
            serving.crashed(slot, detail)
        }
    }
}

fn with_tail(message: String, tail: Option<String>) -> String {
    match tail {
        Some(tail) => format!("{message}\n--- last lines of its log ---\n{tail}"),
        None => message,
    }
}
