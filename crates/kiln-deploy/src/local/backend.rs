//! One serving process of the local target: `kiln serve` for one version of one model, on a
//! loopback port of its own, behind the environment's front. Its stdin is a pipe from the
//! supervisor: when the supervisor goes away (even by SIGKILL) the pipe closes and the server
//! drains and exits, so no serving process outlives the `kiln up` that started it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::target::{Release, RolloutError};

/// How the local target starts serving processes.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The `kiln` executable to run `kiln serve` with.
    pub kiln: PathBuf,
    /// The project's state folder (`.kiln/`): logs go to `deploy/logs/`, sampled requests to
    /// `requests/<environment>/`.
    pub state_dir: PathBuf,
    /// How long a new process may take to answer its readiness check.
    pub ready_timeout: Duration,
    /// How long a request to the environment waits for a serving process (while one restarts).
    pub hold: Duration,
    /// Between health checks of a serving process.
    pub health_interval: Duration,
}

impl LocalOptions {
    pub fn new(kiln: PathBuf, state_dir: PathBuf) -> LocalOptions {
        LocalOptions {
            kiln,
            state_dir,
            ready_timeout: Duration::from_secs(60),
            hold: Duration::from_secs(10),
            health_interval: Duration::from_secs(1),
        }
    }
}

/// A running `kiln serve`.
pub(crate) struct Backend {
    child: Child,
    /// Kept open: dropping it tells the server to drain and exit.
    stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
    pub started: Instant,
    pub started_ms: i64,
    log: PathBuf,
    /// Where this process's lines start in the log.
    log_start: u64,
}

impl Backend {
    /// Starts the server for `release` on a free loopback port. It is not ready yet.
    pub fn spawn(options: &LocalOptions, release: &Release) -> Result<Backend, RolloutError> {
        let model = &release.model;
        let logs = options.state_dir.join("deploy").join("logs");
        let log = logs.join(format!("{}@{}.log", model.name, release.environment));
        let open_log = || -> std::io::Result<(File, File, u64)> {
            std::fs::create_dir_all(&logs)?;
            let out = File::options().create(true).append(true).open(&log)?;
            let start = out.metadata()?.len();
            Ok((out.try_clone()?, out, start))
        };
        let (stdout, stderr, log_start) = open_log().map_err(|error| RolloutError {
            message: format!("cannot open the serving log `{}`: {error}", log.display()),
            log_tail: None,
        })?;
        let port = free_port().map_err(|error| RolloutError {
            message: format!("no free loopback port for the serving process: {error}"),
            log_tail: None,
        })?;
        let mut command = Command::new(&options.kiln);
        command
            .arg("serve")
            .arg("--supervised")
            .arg("--model")
            .arg(format!("{}={}", model.name, model.path.display()))
            .arg("--version-file")
            .arg(format!("{}={}", model.name, model.version_file.display()))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--watch-interval-ms", "0"])
            .arg("--request-log")
            .arg(
                options
                    .state_dir
                    .join("requests")
                    .join(&release.environment),
            )
            .env("KILN_ENVIRONMENT", &release.environment)
            .env("KILN_MODEL", &model.name)
            .env("KILN_MODEL_VERSION", model.version.to_string())
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr);
        // A process group of its own: Ctrl-C in the terminal stops the supervisor, which stops
        // the server by closing its stdin, rather than reaching the server first (which would
        // look like a crash to the supervisor).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        if let Some(python) = &model.python {
            command.arg("--python").arg(python);
        }
        if let Some(library) = &model.onnx_runtime {
            command.arg("--ort-lib").arg(library);
        }
        let mut child = command.spawn().map_err(|error| RolloutError {
            message: format!("cannot start `{} serve`: {error}", options.kiln.display()),
            log_tail: None,
        })?;
        let stdin = child.stdin.take();
        Ok(Backend {
            child,
            stdin,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            started: Instant::now(),
            started_ms: now_ms(),
            log,
            log_start,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until the server answers its readiness check, the process exits, or `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, RolloutError> {
        let deadline = self.started + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Err(self.failure(format!(
                    "the serving process {} before it was ready",
                    describe_exit(status)
                )));
            }
            if kiln_serve::front::check_ready(self.addr, Duration::from_millis(250)).is_ok() {
                return Ok(self.started.elapsed());
            }
            if Instant::now() >= deadline {
                return Err(self.failure(format!(
                    "the serving process was not ready after {} s",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A rollout failure about this process, with the last lines it logged.
    pub fn failure(&self, message: String) -> RolloutError {
        RolloutError {
            message,
            log_tail: self.log_tail(),
        }
    }

    /// The last lines this process wrote to its log.
    pub fn log_tail(&self) -> Option<String> {
        log_tail(&self.log, self.log_start, 20)
    }

    /// Asks the server to drain and exit (its stdin closes); kills it after `grace`.
    pub fn stop(mut self, grace: Duration) {
        drop(self.stdin.take());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// "exited with code 1", "was killed by signal 9".
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "exited".to_string(),
    }
}

/// A loopback port nothing listens on now. Another process could take it before the server
/// binds it; the server then exits at once and the rollout or restart says so.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The last `lines` lines of `path` after byte `start` (at most 64 KiB are read).
fn log_tail(path: &Path, start: u64, lines: usize) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    let from = start.max(length.saturating_sub(64 * 1024));
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_starts_where_the_process_started_logging() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("m@staging.log");
        std::fs::write(&log, "old 1\nold 2\n").unwrap();
        let start = std::fs::metadata(&log).unwrap().len();
        std::fs::write(&log, "old 1\nold 2\nnew 1\nnew 2\nnew 3\n").unwrap();
        assert_eq!(log_tail(&log, start, 2).unwrap(), "new 2\nnew 3");
        assert_eq!(log_tail(&log, start, 10).unwrap(), "new 1\nnew 2\nnew 3");
        std::fs::write(dir.path().join("empty.log"), "").unwrap();
        assert_eq!(log_tail(&dir.path().join("empty.log"), 0, 5), None);
    }
}
