//! Managed Python virtualenvs: one per (requirements content, interpreter), built once in the user
//! cache dir and shared by every run and every project that asks for the same thing.
//!
//! Layout under the cache root (`KILN_CACHE_DIR`, else the user cache dir + `kiln`):
//!
//! ```text
//! envs/<key prefix>/              the virtualenv itself (bin/, lib/, pyvenv.cfg)
//! envs/<key prefix>/kiln-install.log   what the installer printed
//! envs/<key prefix>/.kiln-complete     written last: the environment is ready
//! envs/<key prefix>.lock          held exclusively while the environment is being built
//! ```
//!
//! A virtualenv embeds its own absolute path in its scripts, so it cannot be built elsewhere and
//! renamed into place. Instead it is built in place under the lock, and readers trust only the
//! marker: a directory without it is a build that crashed or is still running, and whoever holds the
//! lock next deletes it and starts over.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::SystemTime;

/// Overrides where Kiln keeps its caches (default: the user cache dir + `kiln`).
pub const KILN_CACHE_DIR: &str = "KILN_CACHE_DIR";
/// The Python interpreter environments are built from (default: `python3` on `PATH`).
pub const KILN_PYTHON: &str = "KILN_PYTHON";

/// Written last into a finished environment; its absence means "not ready".
pub const COMPLETE_MARKER: &str = ".kiln-complete";
/// The installer's output, kept inside the environment for post-mortems.
pub const INSTALL_LOG: &str = "kiln-install.log";

/// Bumped whenever the way an environment is built changes, so old ones are not reused.
const KEY_VERSION: &str = "kiln-python-env-v1";
/// Hex digits of the key used as the directory name: short enough for readable paths (and for
/// shebang lines, which some systems cap), long enough to never collide in one cache.
const DIR_KEY_LEN: usize = 16;
/// How much of the installer log an error shows.
const LOG_TAIL_LINES: usize = 20;

/// Asks the interpreter who it really is: `python3` is often a shim (pyenv, asdf) whose target
/// depends on the working directory, so the resolved executable is what identifies it.
const PROBE_SCRIPT: &str = "import sys; print(sys.executable); print(sys.version)";

#[cfg(windows)]
const BIN_DIR: &str = "Scripts";
#[cfg(not(windows))]
const BIN_DIR: &str = "bin";
#[cfg(windows)]
const PYTHON_EXE: &str = "python.exe";
#[cfg(not(windows))]
const PYTHON_EXE: &str = "python";

/// Which tool builds the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstallerChoice {
    /// `uv` when it is on `PATH`, else `venv` + `pip`.
    #[default]
    Auto,
    Uv,
    Pip,
}

/// The tool that built (or failed to build) an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installer {
    Uv,
    Pip,
}

impl Installer {
    pub fn name(self) -> &'static str {
        match self {
            Installer::Uv => "uv",
            Installer::Pip => "pip",
        }
    }
}

/// Settings for [`ensure_env`], resolved once from the environment (see [`EnvOptions::from_env`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOptions {
    /// Root of Kiln's caches; environments go to `<cache_root>/envs`.
    pub cache_root: PathBuf,
    /// The interpreter: a path, or a name looked up on `PATH`.
    pub python: PathBuf,
    pub installer: InstallerChoice,
}

impl EnvOptions {
    /// Reads `KILN_CACHE_DIR` and `KILN_PYTHON` from the process environment.
    pub fn from_env() -> Result<Self, PythonEnvError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// Like [`EnvOptions::from_env`], with the variables read through `lookup` (for tests and
    /// for callers that merged the environment with their own settings).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, PythonEnvError> {
        let non_empty = |name: &str| lookup(name).filter(|value| !value.is_empty());
        let cache_root = match non_empty(KILN_CACHE_DIR) {
            Some(dir) => PathBuf::from(dir),
            None => dirs::cache_dir()
                .ok_or(PythonEnvError::NoCacheDir)?
                .join("kiln"),
        };
        let python = non_empty(KILN_PYTHON)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("python3"));
        Ok(Self {
            cache_root,
            python,
            installer: InstallerChoice::Auto,
        })
    }
}

/// A ready virtualenv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonEnvironment {
    /// The virtualenv directory (absolute).
    pub root: PathBuf,
    /// Its scripts directory (`bin`), which commands get first on `PATH`.
    pub bin_dir: PathBuf,
    /// Its interpreter.
    pub python: PathBuf,
    /// The full cache key (hex): stable for the same requirements and interpreter, so it can go
    /// into stage cache keys as "the environment".
    pub key: String,
    /// True when this call built the environment, false when it was already there.
    pub built: bool,
}

impl PythonEnvironment {
    fn at(root: PathBuf, key: String, built: bool) -> Self {
        let bin_dir = root.join(BIN_DIR);
        let python = bin_dir.join(PYTHON_EXE);
        Self {
            root,
            bin_dir,
            python,
            key,
            built,
        }
    }

    /// `PATH` for a command: the environment's `bin` first, then `current` (usually the value of
    /// `PATH` in Kiln's own environment).
    pub fn path_var(&self, current: Option<&OsStr>) -> Result<OsString, PythonEnvError> {
        let mut dirs = vec![self.bin_dir.clone()];
        if let Some(current) = current {
            dirs.extend(std::env::split_paths(current));
        }
        std::env::join_paths(dirs).map_err(|_| PythonEnvError::PathSeparator {
            dir: self.bin_dir.clone(),
        })
    }

    /// The variables that activate the environment for a command: `PATH` (built on Kiln's own
    /// `PATH`) and `VIRTUAL_ENV`. `PYTHONHOME` must also be removed; [`Self::apply`] does both.
    pub fn env_vars(&self) -> Result<Vec<(OsString, OsString)>, PythonEnvError> {
        let path = self.path_var(std::env::var_os("PATH").as_deref())?;
        Ok(vec![
            (OsString::from("PATH"), path),
            (
                OsString::from("VIRTUAL_ENV"),
                self.root.clone().into_os_string(),
            ),
        ])
    }

    /// Activates the environment for `command`.
    pub fn apply(&self, command: &mut Command) -> Result<(), PythonEnvError> {
        command.envs(self.env_vars()?);
        // A PYTHONHOME inherited from the user's shell would point the venv's interpreter at
        // another installation's standard library.
        command.env_remove("PYTHONHOME");
        Ok(())
    }
}

/// Why an environment could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum PythonEnvError {
    #[error("cannot read requirements file `{}`", path.display())]
    ReadRequirements {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot find the Python interpreter `{}`", python.display())]
    InterpreterNotFound {
        python: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the Python interpreter `{}` failed to start ({status}): {stderr}", python.display())]
    InterpreterFailed {
        python: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    #[error("this system has no user cache directory")]
    NoCacheDir,
    #[error("cannot start `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{step} for `{}` with {} failed ({status}); the last lines of `{}`:\n{tail}",
        requirements.display(),
        installer.name(),
        log.display()
    )]
    InstallFailed {
        requirements: PathBuf,
        installer: Installer,
        /// What was being done: "creating the virtualenv" or "installing requirements".
        step: &'static str,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot put `{}` on `PATH`: it contains the `PATH` separator", dir.display())]
    PathSeparator { dir: PathBuf },
}

impl PythonEnvError {
    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            PythonEnvError::InterpreterNotFound { .. }
            | PythonEnvError::InterpreterFailed { .. } => Some(format!(
                "install Python 3, or set `{KILN_PYTHON}` to the interpreter to use"
            )),
            PythonEnvError::NoCacheDir | PythonEnvError::PathSeparator { .. } => Some(format!(
                "set `{KILN_CACHE_DIR}` to a writable directory whose path has no `:`"
            )),
            PythonEnvError::InstallFailed {
                requirements, log, ..
            } => Some(format!(
                "fix `{}` (a misspelt package or a version that does not exist is the usual \
                 cause) and run again; the full log is `{}`",
                requirements.display(),
                log.display()
            )),
            _ => None,
        }
    }
}

/// The exact packages installed in `environment`, as `name==version` lines sorted by name: what
/// `pip freeze` would say, read from the `*.dist-info` folders of its `site-packages` without
/// starting Python (names as the folders spell them: lowercase, `_` for `-`).
pub fn installed_packages(environment: &PythonEnvironment) -> Result<Vec<String>, PythonEnvError> {
    let mut packages = Vec::new();
    for site_packages in site_packages_dirs(&environment.root)? {
        let entries = fs::read_dir(&site_packages).map_err(io_error("read", &site_packages))?;
        for entry in entries {
            let entry = entry.map_err(io_error("read", &site_packages))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".dist-info")) else {
                continue;
            };
            if let Some((package, version)) = stem.split_once('-') {
                packages.push(format!(
                    "{}=={version}",
                    package.to_ascii_lowercase().replace('-', "_")
                ));
            }
        }
    }
    packages.sort();
    packages.dedup();
    Ok(packages)
}

/// `lib/python3.X/site-packages` (POSIX) or `Lib/site-packages` (Windows) under a virtualenv.
fn site_packages_dirs(root: &Path) -> Result<Vec<PathBuf>, PythonEnvError> {
    let windows = root.join("Lib").join("site-packages");
    if windows.is_dir() {
        return Ok(vec![windows]);
    }
    let lib = root.join("lib");
    let mut dirs = Vec::new();
    for entry in fs::read_dir(&lib).map_err(io_error("read", &lib))? {
        let entry = entry.map_err(io_error("read", &lib))?;
        let candidate = entry.path().join("site-packages");
        if candidate.is_dir() {
            dirs.push(candidate);
        }
    }
    Ok(dirs)
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PythonEnvError {
    let path = path.to_path_buf();
    move |source| PythonEnvError::Io {
        action,
        path,
        source,
    }
}

/// What a build is doing, for a progress view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildProgress<'a> {
    /// A step of the build, in a sentence (the first names the installer's log).
    Step(&'a str),
    /// The installer's latest output line (every line also goes to the log).
    Output(&'a str),
}

impl<'a> BuildProgress<'a> {
    /// As a pipeline event for `model`.
    pub fn event(self, model: &'a str) -> crate::Event<'a> {
        match self {
            BuildProgress::Step(step) => crate::Event::EnvironmentStep { model, step },
            BuildProgress::Output(line) => crate::Event::InstallerOutput { model, line },
        }
    }
}

/// Returns the environment for `requirements`, building it first when no complete one exists.
///
/// Safe to call from many threads and processes at once: one builds, the others wait for it and
/// reuse its result. `progress` receives one line per step of a build (nothing on reuse).
pub fn ensure_env(
    requirements: &Path,
    options: &EnvOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<PythonEnvironment, PythonEnvError> {
    ensure_env_with_progress(requirements, options, &mut |event| {
        if let BuildProgress::Step(step) = event {
            progress(step);
        }
    })
}

/// [`ensure_env`], telling `progress` each step and each line the installer prints.
pub fn ensure_env_with_progress(
    requirements: &Path,
    options: &EnvOptions,
    progress: &mut dyn FnMut(BuildProgress<'_>),
) -> Result<PythonEnvironment, PythonEnvError> {
    let requirements_bytes =
        fs::read(requirements).map_err(|source| PythonEnvError::ReadRequirements {
            path: requirements.to_path_buf(),
            source,
        })?;
    // Installers run in the requirements file's folder (so that `-r other.txt` and `./pkg`
    // resolve as the user expects), which needs the file's absolute path.
    let requirements =
        std::path::absolute(requirements).map_err(io_error("resolve", requirements))?;
    let interpreter = probe_interpreter(&options.python)?;
    let key = env_key(
        &interpreter.executable,
        &interpreter.version,
        &requirements_bytes,
    );
    let key = key.to_hex().to_string();
    // A relative cache root would give commands a relative `PATH` entry, which breaks as soon as
    // they run in another folder.
    let cache_root = std::path::absolute(&options.cache_root)
        .map_err(io_error("resolve", &options.cache_root))?;
    let root = cache_root.join("envs").join(&key[..DIR_KEY_LEN]);
    let built = build_once(&root, progress, |root, progress| {
        build_env(
            root,
            &requirements,
            &interpreter,
            options.installer,
            progress,
        )
    })?;
    Ok(PythonEnvironment::at(root, key, built))
}

/// The cache key of an environment: an explicit, versioned encoding of everything that decides
/// its content. Every field is length-prefixed so that no two inputs encode the same.
pub fn env_key(interpreter: &Path, interpreter_version: &str, requirements: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    for field in [
        KEY_VERSION.as_bytes(),
        interpreter.as_os_str().as_encoded_bytes(),
        interpreter_version.as_bytes(),
        requirements,
    ] {
        hasher.update(&(field.len() as u64).to_le_bytes());
        hasher.update(field);
    }
    hasher.finalize()
}

/// The interpreter as it described itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interpreter {
    /// The real executable behind what was asked for (`sys.executable`).
    executable: PathBuf,
    /// `sys.version`: the version plus build details.
    version: String,
}

/// Probes `python`, at most once per process while its executable stays the same: starting an
/// interpreter costs 25 ms, and 150 ms behind a pyenv shim, which a cached re-run cannot afford
/// for every model. Kiln never changes its working directory, so a shim resolves the same way
/// all process long; the stat of the executable notices an interpreter upgraded in place.
fn probe_interpreter(python: &Path) -> Result<Interpreter, PythonEnvError> {
    static PROBED: Mutex<BTreeMap<PathBuf, (Interpreter, Option<SystemTime>)>> =
        Mutex::new(BTreeMap::new());
    let modified = |executable: &Path| fs::metadata(executable).and_then(|m| m.modified()).ok();
    // A poisoned memo only means another thread panicked mid-insert; probing again is safe.
    let memo = PROBED
        .lock()
        .ok()
        .and_then(|memo| memo.get(python).cloned());
    if let Some((interpreter, seen)) = memo
        && seen.is_some()
        && modified(&interpreter.executable) == seen
    {
        return Ok(interpreter);
    }
    let interpreter = probe_interpreter_uncached(python)?;
    let seen = modified(&interpreter.executable);
    if let Ok(mut memo) = PROBED.lock() {
        memo.insert(python.to_path_buf(), (interpreter.clone(), seen));
    }
    Ok(interpreter)
}

fn probe_interpreter_uncached(python: &Path) -> Result<Interpreter, PythonEnvError> {
    let output = Command::new(python)
        // Isolated and without `site`: a third of the start-up time, and the answer is the same.
        .args(["-I", "-S", "-c", PROBE_SCRIPT])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| PythonEnvError::InterpreterNotFound {
            python: python.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(PythonEnvError::InterpreterFailed {
            python: python.to_path_buf(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (executable, version) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    let executable = match executable.trim() {
        // Embedded interpreters may not know their executable; what we ran is the best name.
        "" => python.to_path_buf(),
        path => PathBuf::from(path),
    };
    Ok(Interpreter {
        executable,
        version: version.trim().to_string(),
    })
}

/// `<root>.lock`, next to the environment rather than in it, so it survives the environment's
/// deletion. It is never removed: deleting a lock file while others wait on it breaks the lock.
fn lock_path(root: &Path) -> PathBuf {
    let mut name = root.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    root.with_file_name(name)
}

/// Makes sure a complete environment exists at `root`, calling `build` (with an empty `root`
/// created for it) when none does. Returns whether `build` ran. `build` returns the text of the
/// marker file.
fn build_once(
    root: &Path,
    progress: &mut dyn FnMut(BuildProgress<'_>),
    build: impl FnOnce(&Path, &mut dyn FnMut(BuildProgress<'_>)) -> Result<String, PythonEnvError>,
) -> Result<bool, PythonEnvError> {
    let marker = root.join(COMPLETE_MARKER);
    // Fast path without the lock: the marker is written last and a marked environment is never
    // modified again, so seeing it is enough.
    if marker.is_file() {
        return Ok(false);
    }
    if let Some(parent) = root.parent() {
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    }
    let lock_path = lock_path(root);
    let lock = kiln_store::lock::open(&lock_path).map_err(io_error("open", &lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            progress(BuildProgress::Step(&format!(
                "waiting for another Kiln process to finish building `{}`",
                root.display()
            )));
            lock.lock().map_err(io_error("lock", &lock_path))?;
        }
        Err(TryLockError::Error(source)) => return Err(io_error("lock", &lock_path)(source)),
    }
    // Whoever held the lock before us may have finished the job.
    if marker.is_file() {
        return Ok(false);
    }
    if root.exists() {
        progress(BuildProgress::Step(&format!(
            "removing the incomplete environment `{}`",
            root.display()
        )));
        fs::remove_dir_all(root).map_err(io_error("remove", root))?;
    }
    fs::create_dir_all(root).map_err(io_error("create", root))?;
    let description = build(root, progress)?;
    write_marker(root, &description)?;
    // The lock is released when `lock` is dropped.
    Ok(true)
}

/// Writes the marker atomically and durably (`kiln_store::atomic`), so a crash leaves either no
/// marker or a whole one.
fn write_marker(root: &Path, description: &str) -> Result<(), PythonEnvError> {
    let marker = root.join(COMPLETE_MARKER);
    kiln_store::atomic::write(&marker, description.as_bytes()).map_err(io_error("write", &marker))
}

/// True when `uv --version` runs.
fn uv_available() -> bool {
    Command::new("uv")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn uv_version() -> String {
    Command::new("uv")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Creates the virtualenv in `root` and installs `requirements` into it. Returns the marker text.
fn build_env(
    root: &Path,
    requirements: &Path,
    interpreter: &Interpreter,
    choice: InstallerChoice,
    progress: &mut dyn FnMut(BuildProgress<'_>),
) -> Result<String, PythonEnvError> {
    let installer = match choice {
        InstallerChoice::Auto if uv_available() => Installer::Uv,
        InstallerChoice::Auto | InstallerChoice::Pip => Installer::Pip,
        InstallerChoice::Uv => Installer::Uv,
    };
    let log_path = root.join(INSTALL_LOG);
    let mut log = File::create(&log_path).map_err(io_error("create", &log_path))?;
    let env_python = root.join(BIN_DIR).join(PYTHON_EXE);
    let workdir = requirements.parent().unwrap_or(Path::new("/"));
    let step = |log: &mut File,
                name: &'static str,
                mut command: Command,
                progress: &mut dyn FnMut(BuildProgress<'_>)| {
        run_logged(log, &log_path, &mut command, workdir, progress).and_then(|status| {
            if status.success() {
                Ok(())
            } else {
                Err(PythonEnvError::InstallFailed {
                    requirements: requirements.to_path_buf(),
                    installer,
                    step: name,
                    status,
                    log: log_path.clone(),
                    tail: log_tail(&log_path, LOG_TAIL_LINES),
                })
            }
        })
    };

    progress(BuildProgress::Step(&format!(
        "creating a Python environment with {} in `{}` (installer log: `{}`)",
        installer.name(),
        root.display(),
        log_path.display()
    )));
    let mut create = match installer {
        Installer::Uv => {
            let mut command = Command::new("uv");
            // The folder exists already (it holds the log), which uv refuses without this flag.
            command.args(["venv", "--allow-existing", "--python"]);
            command.arg(&interpreter.executable);
            command
        }
        Installer::Pip => {
            let mut command = Command::new(&interpreter.executable);
            command.args(["-m", "venv"]);
            command
        }
    };
    create.arg(root);
    step(&mut log, "creating the virtualenv", create, progress)?;

    progress(BuildProgress::Step(&format!(
        "installing `{}` with {}",
        requirements.display(),
        installer.name()
    )));
    let install = match installer {
        Installer::Uv => {
            let mut command = Command::new("uv");
            // Compiled once here, the packages import fast in every stage and serving process,
            // also where PYTHONDONTWRITEBYTECODE keeps Python from caching what it compiles
            // (pip compiles by default; uv does not).
            command.args(["pip", "install", "--compile-bytecode", "--python"]);
            command.arg(&env_python);
            command
        }
        Installer::Pip => {
            let mut command = Command::new(&env_python);
            command.args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
            ]);
            command
        }
    };
    let mut install = install;
    install.arg("-r").arg(requirements);
    step(&mut log, "installing requirements", install, progress)?;

    let installer_version = match installer {
        Installer::Uv => uv_version(),
        Installer::Pip => "pip".to_string(),
    };
    Ok(format!(
        "{KEY_VERSION}\nrequirements: {}\ninterpreter: {}\nversion: {}\ninstaller: {installer_version}\n",
        requirements.display(),
        interpreter.executable.display(),
        interpreter.version.replace('\n', " "),
    ))
}

/// Runs `command` in `workdir` with its output appended to `log`, after a line naming it, and
/// tells `progress` the latest line it printed as it goes.
fn run_logged(
    log: &mut File,
    log_path: &Path,
    command: &mut Command,
    workdir: &Path,
    progress: &mut dyn FnMut(BuildProgress<'_>),
) -> Result<ExitStatus, PythonEnvError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let line = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    writeln!(log, "$ {line}").map_err(io_error("write", log_path))?;
    let mut child = command
        .current_dir(workdir)
        // Whatever environment the user has activated must not receive the packages.
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONHOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| PythonEnvError::Spawn { program, source })?;
    // One thread per stream, so that neither pipe fills while the other is read; chunks reach
    // the log in the order they arrive.
    let (sender, receiver) = std::sync::mpsc::channel::<Vec<u8>>();
    let streams: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    let readers: Vec<_> = streams
        .into_iter()
        .flatten()
        .map(|mut stream| {
            let sender = sender.clone();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 8192];
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 || sender.send(buffer[..n].to_vec()).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(sender);
    let mut partial: Vec<u8> = Vec::new();
    let mut write_error = None;
    for chunk in receiver {
        if write_error.is_none()
            && let Err(error) = log.write_all(&chunk)
        {
            write_error = Some(error);
        }
        partial.extend_from_slice(&chunk);
        if let Some(end) = partial.iter().rposition(|b| matches!(b, b'\n' | b'\r')) {
            if let Some(line) = last_line(&partial[..end]) {
                progress(BuildProgress::Output(&line));
            }
            partial.drain(..=end);
        }
    }
    if let Some(line) = last_line(&partial) {
        progress(BuildProgress::Output(&line));
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait().map_err(|source| PythonEnvError::Spawn {
        program: command.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if let Some(error) = write_error {
        return Err(io_error("write", log_path)(error));
    }
    Ok(status)
}

/// The last line of `bytes` with something in it (progress bars end lines with `\r`).
fn last_line(bytes: &[u8]) -> Option<String> {
    bytes
        .split(|b| matches!(b, b'\n' | b'\r'))
        .map(|line| String::from_utf8_lossy(line).trim().to_string())
        .rfind(|line| !line.is_empty())
}

/// The last `lines` lines of the log (read from its end, so a huge log costs nothing).
fn log_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 16 * 1024;
    let read = || -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match read() {
        Ok(bytes) => tail_lines(&String::from_utf8_lossy(&bytes), lines),
        Err(error) => format!("(cannot read the log: {error})"),
    }
}

fn tail_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The cache key [`ensure_env`] would use for `requirements`, without building anything (for
/// `kiln status`).
pub fn requirements_key(
    requirements: &Path,
    options: &EnvOptions,
) -> Result<String, PythonEnvError> {
    let bytes = fs::read(requirements).map_err(|source| PythonEnvError::ReadRequirements {
        path: requirements.to_path_buf(),
        source,
    })?;
    let interpreter = probe_interpreter(&options.python)?;
    Ok(
        env_key(&interpreter.executable, &interpreter.version, &bytes)
            .to_hex()
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn installed_packages_are_read_from_the_dist_info_folders() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("lib/python3.11/site-packages");
        for folder in [
            "scikit_learn-1.5.0.dist-info",
            "numpy-2.1.3.dist-info",
            "numpy",
            "pip-24.0.dist-info",
        ] {
            fs::create_dir_all(site.join(folder)).unwrap();
        }
        let environment = PythonEnvironment::at(dir.path().to_path_buf(), "k".into(), false);
        assert_eq!(
            installed_packages(&environment).unwrap(),
            ["numpy==2.1.3", "pip==24.0", "scikit_learn==1.5.0"]
        );
        // The test environment, a real virtualenv, when there is one.
        if let Some(venv) = std::env::var_os("KILN_TEST_VENV").filter(|v| !v.is_empty()) {
            let real = PythonEnvironment::at(PathBuf::from(venv), "k".into(), false);
            let packages = installed_packages(&real).unwrap();
            assert!(
                packages.iter().any(|p| p.starts_with("scikit_learn==")),
                "{packages:?}"
            );
        }
        let missing = PythonEnvironment::at(dir.path().join("nope"), "k".into(), false);
        assert!(matches!(
            installed_packages(&missing),
            Err(PythonEnvError::Io { .. })
        ));
    }

    #[test]
    fn key_is_stable_across_releases() {
        // Changing this value orphans every environment users have built: bump KEY_VERSION
        // deliberately instead.
        let key = env_key(
            Path::new("/usr/bin/python3.11"),
            "3.11.7 (main) [GCC 12.2.0]",
            b"six==1.17.0\n",
        );
        assert_eq!(
            key.to_hex().as_str(),
            "42c67a317c59e325064fadcefb1320776f0b3fa2d989cc5bcc791cca34eb843f"
        );
    }

    #[test]
    fn key_changes_with_every_input() {
        let base = env_key(Path::new("/usr/bin/python3"), "3.11.7", b"six\n");
        assert_ne!(base, env_key(Path::new("/opt/python3"), "3.11.7", b"six\n"));
        assert_ne!(
            base,
            env_key(Path::new("/usr/bin/python3"), "3.11.8", b"six\n")
        );
        assert_ne!(
            base,
            env_key(Path::new("/usr/bin/python3"), "3.11.7", b"six==1.16\n")
        );
    }

    #[test]
    fn key_fields_cannot_run_into_each_other() {
        assert_ne!(
            env_key(Path::new("/usr/bin/python3"), "3.11", b""),
            env_key(Path::new("/usr/bin/python"), "33.11", b"")
        );
    }

    #[test]
    fn options_come_from_env_vars_first() {
        let options = EnvOptions::from_lookup(|name| match name {
            KILN_CACHE_DIR => Some("/tmp/kiln-cache".into()),
            KILN_PYTHON => Some("/opt/py/bin/python3.12".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(options.cache_root, Path::new("/tmp/kiln-cache"));
        assert_eq!(options.python, Path::new("/opt/py/bin/python3.12"));
        assert_eq!(options.installer, InstallerChoice::Auto);
    }

    #[test]
    fn options_default_to_user_cache_and_python3() {
        // Empty variables count as unset, as shells make them easily.
        let options = EnvOptions::from_lookup(|_| Some(OsString::new()));
        match dirs::cache_dir() {
            Some(cache) => {
                let options = options.unwrap();
                assert_eq!(options.cache_root, cache.join("kiln"));
                assert_eq!(options.python, Path::new("python3"));
            }
            None => assert!(matches!(options, Err(PythonEnvError::NoCacheDir))),
        }
    }

    #[test]
    fn path_var_puts_the_env_first() {
        let env = PythonEnvironment::at(PathBuf::from("/cache/envs/0123"), "0123".into(), false);
        let path = env
            .path_var(Some(OsStr::new("/usr/local/bin:/usr/bin")))
            .unwrap();
        let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        assert_eq!(
            dirs,
            [
                env.bin_dir.clone(),
                PathBuf::from("/usr/local/bin"),
                PathBuf::from("/usr/bin")
            ]
        );
        assert_eq!(env.python, env.bin_dir.join(PYTHON_EXE));
    }

    #[test]
    fn path_var_refuses_a_bin_dir_with_the_separator() {
        let env = PythonEnvironment::at(PathBuf::from("/cache:x/envs/0123"), "0123".into(), false);
        let error = env.path_var(None).unwrap_err();
        assert!(matches!(error, PythonEnvError::PathSeparator { .. }));
        assert!(error.hint().unwrap().contains(KILN_CACHE_DIR));
    }

    #[test]
    fn lock_sits_next_to_the_env() {
        assert_eq!(
            lock_path(Path::new("/cache/envs/0123abcd")),
            Path::new("/cache/envs/0123abcd.lock")
        );
    }

    /// A build that only writes one file, counting how often it runs.
    fn fake_build(root: &Path, calls: &AtomicUsize) -> Result<String, PythonEnvError> {
        calls.fetch_add(1, Ordering::SeqCst);
        fs::write(root.join("built"), "yes").unwrap();
        Ok("fake".to_string())
    }

    #[test]
    fn marked_env_is_reused_without_building() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path().join("envs/abc");
        let calls = AtomicUsize::new(0);
        assert!(build_once(&root, &mut |_| {}, |root, _| fake_build(root, &calls)).unwrap());
        assert!(!build_once(&root, &mut |_| {}, |root, _| fake_build(root, &calls)).unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            fs::read_to_string(root.join(COMPLETE_MARKER)).unwrap(),
            "fake"
        );
        assert!(!root.join(format!("{COMPLETE_MARKER}.tmp")).exists());
    }

    #[test]
    fn unmarked_env_is_deleted_and_rebuilt() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path().join("envs/abc");
        // What a build killed half-way leaves behind.
        fs::create_dir_all(root.join("lib")).unwrap();
        fs::write(root.join("lib/half-written.py"), "x = ").unwrap();
        let calls = AtomicUsize::new(0);
        let mut messages = Vec::new();
        let built = build_once(
            &root,
            &mut |progress| {
                if let BuildProgress::Step(step) = progress {
                    messages.push(step.to_string());
                }
            },
            |root, _| fake_build(root, &calls),
        )
        .unwrap();
        assert!(built);
        assert!(!root.join("lib").exists(), "stale content survived");
        assert!(root.join("built").exists());
        assert!(root.join(COMPLETE_MARKER).exists());
        assert!(messages[0].starts_with("removing the incomplete environment"));
    }

    #[test]
    fn failed_build_leaves_no_marker_and_the_next_call_retries() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path().join("envs/abc");
        let failing =
            |_: &Path, _: &mut dyn FnMut(BuildProgress<'_>)| -> Result<String, PythonEnvError> {
                Err(PythonEnvError::NoCacheDir)
            };
        assert!(build_once(&root, &mut |_| {}, failing).is_err());
        assert!(!root.join(COMPLETE_MARKER).exists());
        let calls = AtomicUsize::new(0);
        assert!(build_once(&root, &mut |_| {}, |root, _| fake_build(root, &calls)).unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn concurrent_callers_build_once() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path().join("envs/abc");
        let calls = AtomicUsize::new(0);
        let slow_build = |root: &Path, _: &mut dyn FnMut(BuildProgress<'_>)| {
            calls.fetch_add(1, Ordering::SeqCst);
            // Long enough for the other threads to find the lock taken.
            std::thread::sleep(Duration::from_millis(300));
            fs::write(root.join("built"), "yes").unwrap();
            Ok("slow".to_string())
        };
        let results: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| build_once(&root, &mut |_| {}, slow_build).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(results.iter().filter(|built| **built).count(), 1);
        assert!(root.join(COMPLETE_MARKER).exists());
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let text = (1..=30).map(|n| format!("line {n}\n")).collect::<String>();
        let tail = tail_lines(&text, 3);
        assert_eq!(tail, "line 28\nline 29\nline 30");
        assert_eq!(tail_lines("only\n", 5), "only");
    }

    #[test]
    fn log_tail_of_a_missing_log_says_so() {
        let dir = tempfile::tempdir().unwrap();
        assert!(log_tail(&dir.path().join("nope.log"), 5).starts_with("(cannot read the log"));
    }

    #[test]
    fn missing_requirements_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let options = EnvOptions {
            cache_root: dir.path().to_path_buf(),
            python: PathBuf::from("python3"),
            installer: InstallerChoice::Auto,
        };
        let requirements = dir.path().join("requirements.txt");
        let error = ensure_env(&requirements, &options, &mut |_| {}).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("cannot read requirements file `{}`", requirements.display())
        );
    }

    #[test]
    fn missing_interpreter_has_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let requirements = dir.path().join("requirements.txt");
        fs::write(&requirements, "six\n").unwrap();
        let options = EnvOptions {
            cache_root: dir.path().to_path_buf(),
            python: dir.path().join("no-such-python"),
            installer: InstallerChoice::Auto,
        };
        let error = ensure_env(&requirements, &options, &mut |_| {}).unwrap_err();
        assert!(matches!(error, PythonEnvError::InterpreterNotFound { .. }));
        assert!(
            error
                .to_string()
                .starts_with("cannot find the Python interpreter `")
        );
        assert!(error.hint().unwrap().contains(KILN_PYTHON));
    }
}
