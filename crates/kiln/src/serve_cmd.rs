//! `kiln serve`: serve ONNX and `predict.py` models over HTTP (Open Inference Protocol v2 and MLflow scoring).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use kiln_pipeline::Workspace;

use crate::commands::load;
use crate::error::{CliError, Result};
use crate::printer::errln;

/// Serve models over HTTP.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Model to serve: a model of this project as registered (`iris` = `iris@latest`, `iris@production`, `iris@v3`; swapped when the alias moves), or an `.onnx` file, a directory with `predict.py`, or an MLflow model directory (with `MLmodel`), served under its file or directory name.
    #[arg(value_name = "MODEL|PATH")]
    pub path: Option<PathBuf>,

    /// Another model, addressed by NAME (repeatable): `--model iris=models/iris.onnx`.
    #[arg(long = "model", value_name = "NAME=PATH")]
    pub models: Vec<String>,

    /// Port to listen on (0 picks a free one).
    #[arg(long, short, default_value_t = 8080)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Most rows run as one batch.
    #[arg(long, default_value_t = 64, value_name = "ROWS")]
    pub max_batch_size: usize,

    /// How long a request may wait for others to join its batch, in milliseconds (0: only coalesce requests already queued).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub max_batch_delay_ms: u64,

    /// Requests a model may have waiting; past it, 503 with `Retry-After`.
    #[arg(long, default_value_t = 1024, value_name = "REQUESTS")]
    pub max_queue: usize,

    /// `libonnxruntime.so` to use (default: the `onnxruntime` package of the model's python).
    #[arg(long, env = "ORT_DYLIB_PATH", value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,

    /// Python interpreter for `predict.py` models and for finding `onnxruntime`.
    #[arg(long, env = "KILN_PYTHON", value_name = "FILE")]
    pub python: Option<PathBuf>,

    /// Worker processes per `predict.py` model (default: cores, at most 4).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// ONNX Runtime sessions per ONNX model (default: cores, at most 4).
    #[arg(long, value_name = "N")]
    pub sessions: Option<usize>,

    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024, value_name = "BYTES")]
    pub max_body_bytes: usize,

    /// Accept NaN (JSON `null`) in float inputs.
    #[arg(long)]
    pub allow_nan: bool,

    /// How often to check served files for changes and hot-swap them, in milliseconds (0: never).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub watch_interval_ms: u64,

    /// Directory for the sampled request log (e.g. `.kiln/requests`).
    #[arg(long, value_name = "DIR")]
    pub request_log: Option<PathBuf>,

    /// Fraction of requests written to the request log.
    #[arg(long, default_value_t = 0.01, value_name = "RATE")]
    pub request_log_sample: f64,

    /// Size at which a request log file is rotated, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_name = "BYTES")]
    pub request_log_max_bytes: u64,

    /// Rotated request log files kept.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub request_log_files: usize,

    /// For a project's model: the file holding the registry version served, as `NAME=FILE`
    /// (set by `serve MODEL@ALIAS` and by the supervisor).
    #[arg(long, hide = true, value_name = "NAME=FILE", value_parser = parse_version_file)]
    pub version_file: Option<(String, PathBuf)>,

    /// Run under Kiln's supervisor (`kiln up`): stop, draining, when stdin closes.
    #[arg(long, hide = true)]
    pub supervised: bool,
}

fn parse_version_file(text: &str) -> std::result::Result<(String, PathBuf), String> {
    text.split_once('=')
        .map(|(name, file)| (name.to_string(), PathBuf::from(file)))
        .ok_or_else(|| format!("expected NAME=FILE, got `{text}`"))
}

impl ServeArgs {
    /// The immutable server settings these arguments describe; relative paths are taken from `project_root`.
    pub fn to_config(&self, project_root: &Path) -> Result<kiln_serve::ServerConfig> {
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                project_root.join(p)
            }
        };
        let mut models = Vec::new();
        if let Some(path) = &self.path {
            models.push(kiln_serve::ModelConfig::from_path(&resolve(path)));
        }
        for spec in &self.models {
            let mut model = kiln_serve::ModelConfig::parse_spec(spec)?;
            model.path = resolve(&model.path);
            if let Some((name, file)) = &self.version_file
                && *name == model.name
            {
                model.version_file = Some(file.clone());
            }
            models.push(model);
        }
        if models.is_empty() {
            return Err(CliError::usage(
                "no model to serve: give a path (`kiln serve model.onnx`) or `--model NAME=PATH`",
            ));
        }
        let mut config =
            kiln_serve::ServerConfig::new(SocketAddr::new(self.host, self.port), models);
        config.batch = kiln_serve::BatchConfig {
            max_batch_size: self.max_batch_size.max(1),
            max_batch_delay: Duration::from_millis(self.max_batch_delay_ms),
            max_queue: self.max_queue.max(1),
        };
        config.ort_library = self.ort_lib.clone();
        config.python = self.python.clone();
        if let Some(workers) = self.workers {
            config.python_workers = workers.max(1);
        }
        if let Some(sessions) = self.sessions {
            config.onnx_sessions = sessions.max(1);
        }
        config.max_body_bytes = self.max_body_bytes;
        config.allow_nan = self.allow_nan;
        config.watch_interval =
            (self.watch_interval_ms > 0).then(|| Duration::from_millis(self.watch_interval_ms));
        config.request_log = self
            .request_log
            .as_ref()
            .map(|dir| kiln_serve::RequestLogConfig {
                dir: resolve(dir),
                sample_rate: self.request_log_sample,
                max_file_bytes: self.request_log_max_bytes,
                max_files: self.request_log_files,
            });
        Ok(config)
    }
}

/// `kiln serve`: a model name (`iris`, `iris@production`, `iris@v3`) is this project's model,
/// served as the registered version it names and swapped when the alias moves
/// (`kiln_deploy::prepare` finds its artifact, environment and ONNX Runtime); anything else is
/// a path for the server to load.
pub fn serve(root: &Path, mut args: ServeArgs) -> Result<ExitCode> {
    let root = std::path::absolute(root)?;
    if let Some(name) = args.path.clone()
        && !root.join(&name).exists()
    {
        let name = name.to_string_lossy().into_owned();
        if name.contains('/') {
            return Err(CliError::usage(format!("`{name}` does not exist")));
        }
        let project = load(&root).map_err(|error| match error {
            CliError::Spec(kiln_spec::Error::NotFound { .. }) => CliError::usage(format!(
                "`{name}` is neither a file nor a folder here, and there is no project to find a model `{name}` in"
            )),
            error => error,
        })?;
        let reference = kiln_registry::ModelRef::parse(&name)?;
        let workspace = Workspace::open(&project.root)?;
        let served = kiln_deploy::prepare(&workspace, &project, &reference, &mut |line| {
            errln!("  {line}")
        })?;
        let follows = match &reference.selector {
            kiln_registry::Selector::Alias(alias) => {
                format!("; when `{alias}` moves, its new version is swapped in")
            }
            kiln_registry::Selector::Version(_) => String::new(),
        };
        errln!(
            "serving `{reference}`: version {} of `{}` (run {}, artifact {}){follows}",
            served.version,
            served.name,
            served.artifact.run,
            served.artifact.digest.short()
        );
        args.path = None;
        args.models
            .insert(0, format!("{}={}", served.name, served.path.display()));
        args.version_file = Some((served.name.clone(), served.version_file.clone()));
        if args.request_log.is_none() {
            args.request_log = Some(workspace.state_dir.join("requests"));
        }
        args.python = args.python.or(served.python);
        args.ort_lib = args.ort_lib.or(served.onnx_runtime);
    }
    let serves_onnx = args
        .path
        .iter()
        .map(|p| root.join(p))
        .chain(
            args.models
                .iter()
                .filter_map(|m| m.split_once('=').map(|(_, p)| root.join(p))),
        )
        .any(|p| kiln_deploy::needs_onnx_runtime(&p));
    // Found once here and handed to the server, which would otherwise ask python again.
    if serves_onnx && args.ort_lib.is_none() {
        args.ort_lib =
            kiln_deploy::find_onnx_runtime(args.python.as_deref(), &mut |line| errln!("  {line}"))
                .inspect_err(|error| errln!("warning: {error}"))
                .ok();
    }
    run(args, &root)
}

/// Runs the server until SIGTERM or Ctrl-C, then drains in-flight requests and exits 0.
fn run(args: ServeArgs, project_root: &Path) -> Result<ExitCode> {
    let config = args.to_config(project_root)?;
    if args.supervised {
        kiln_serve::run_blocking_until(config, kiln_serve::supervised_shutdown())?;
    } else {
        kiln_serve::run_blocking(config)?;
    }
    Ok(ExitCode::SUCCESS)
}
