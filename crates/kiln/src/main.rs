//! The `kiln` command line: parses arguments, runs one command, maps the result to an exit code.

// Only the binary prints: stdout for data (`--json`), stderr for progress and messages.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod commands;
mod deploy_cmd;
mod error;
mod exit;
mod files;
mod image_cmd;
mod image_push_cmd;
mod init_cmd;
mod kubernetes;
mod models_cmd;
mod notify;
mod printer;
mod registry_cmd;
mod report;
mod serve_cmd;
mod store_cmd;
mod ui;
mod up_cmd;
mod version_data;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The server allocates per request on many threads; mimalloc handles that better than glibc's
// malloc (see BENCHMARKS.md, serving).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ABOUT: &str =
    "Kiln: a git commit goes in; a trained, tested, gated, versioned model comes out.";

#[derive(Debug, Parser)]
#[command(name = "kiln", version, about = ABOUT, after_help = exit::HELP)]
struct Cli {
    /// Project root (the folder holding `kiln.yaml` or `dvc.yaml`).
    #[arg(
        short = 'C',
        long = "project",
        global = true,
        default_value = ".",
        value_name = "DIR"
    )]
    project: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate `kiln.yaml` (or `dvc.yaml`): every problem with file:line:column and a hint.
    #[command(after_help = "Examples:\n  kiln check\n  kiln check -C examples/iris")]
    Check,
    /// Run the pipeline: stages as a DAG, in parallel, skipping what is unchanged.
    #[command(
        after_help = "Examples:\n  kiln run\n  kiln run iris --set train.C=0.5\n  kiln run --jobs 4 --junit report.xml --report summary.md\n\nExit codes: 0 success, 1 a stage failed, 2 invalid project or arguments,\n3 a data check failed, 4 a gate failed, 130 cancelled (Ctrl-C or SIGTERM)."
    )]
    Run(commands::RunArgs),
    /// Show which stages would run, and why (which dep, param or command changed).
    #[command(after_help = "Examples:\n  kiln status\n  kiln status iris --json")]
    Status(commands::StatusArgs),
    /// List runs, or show one (`kiln runs show ID`).
    #[command(
        after_help = "Examples:\n  kiln runs\n  kiln runs --model iris --limit 5\n  kiln runs show 3 --json"
    )]
    Runs(commands::RunsArgs),
    /// Print the log of a run's stage (all stages when none is named).
    #[command(after_help = "Examples:\n  kiln logs 3\n  kiln logs 3 train")]
    Logs(commands::LogsArgs),
    /// Compare metrics between runs.
    #[command(subcommand)]
    Metrics(commands::MetricsCommand),
    /// The model registry: versions with their lineage, aliases, and the history of alias moves.
    #[command(
        subcommand,
        after_help = "Examples:\n  kiln models list\n  kiln models show iris@production --json\n  kiln models diff iris@v2 iris@v3\n  kiln models alias iris@v3 staging --reason \"beats v2 on the holdout\"\n  kiln models promote iris --from staging --to production\n  kiln models rollback iris production\n  kiln models history iris\n  kiln models export iris@production iris.tar\n  kiln -C ../other models import iris.tar"
    )]
    Models(models_cmd::ModelsCommand),
    /// The model registry over HTTP: `kiln registry serve`.
    #[command(subcommand)]
    Registry(registry_cmd::RegistryCommand),
    /// Serve models over HTTP: Open Inference Protocol v2 and MLflow scoring, metrics, hot swap.
    #[command(
        after_help = "MODEL is a model of this project as registered (`iris` is `iris@latest`;
`iris@production` follows the alias, `iris@v3` is one version), an `.onnx` file, a folder with
`predict.py`, or an MLflow model folder (with `MLmodel`).

Examples:
  kiln serve iris
  kiln serve iris@production
  kiln serve models/iris/model.onnx --port 8080
  kiln serve --model iris=model.onnx --model churn=models/churn/model
  curl -s localhost:8080/v2/models/iris/infer -d '{\"inputs\": [...]}'"
    )]
    Serve(serve_cmd::ServeArgs),
    /// Run, register, deploy and serve this repository on this machine, and every new commit.
    #[command(
        after_help = "Each new commit of the watched branch is run in a clean checkout (a worktree under
`.kiln/worktrees/`, sharing the project's caches and registry). Each green version goes to the
model's first environment (`staging`), then to the next ones as `deploy:` in kiln.yaml allows
(`approve: auto`, or `kiln promote`). Every environment is served on its own port by supervised
processes: a new version is smoke-tested beside the old one before it takes the port; a
process that dies is restarted within a second; a version that fails its rollout or
crash-loops is rolled back. Ctrl-C stops the watcher and the servers.

Examples:
  kiln up --once                 # one pass: run, register, deploy, one prediction, stop
  kiln up examples/iris
  kiln up --remote origin --branch main --poll 30s
  kiln up --port-base 9000"
    )]
    Up(up_cmd::UpArgs),
    /// Deploy a version to an environment (a local one is rolled out by the running `kiln up`,
    /// a Kubernetes one by this command).
    #[command(
        after_help = "A Kubernetes environment (`target: kubernetes` in kiln.yaml, or `--target k8s`) is rolled
out here: the image is built and pushed to the model's `image.repository`, the Deployment,
Service, autoscaler and disruption budget are applied (cluster from $KUBECONFIG), and the
rollout is watched; a failed rollout puts the version before back and exits 6.

Examples:
  kiln deploy iris@v3 --env staging
  kiln deploy iris@latest --env staging --reason \"hotfix\" --json
  kiln deploy iris@v3 --env production --dry-run -o yaml > iris-production.yaml
  kiln deploy iris@v3 --env staging --target k8s"
    )]
    Deploy(deploy_cmd::DeployArgs),
    /// Promote the version an environment serves to the next one (`approve: manual` waits for this).
    #[command(
        after_help = "Examples:\n  kiln promote iris --to production\n  kiln promote iris --from staging --to production --reason \"A/B won\""
    )]
    Promote(deploy_cmd::PromoteArgs),
    /// Put an environment back on the version it served before its last change.
    #[command(after_help = "Examples:\n  kiln rollback iris --env production --reason \"latency\"")]
    Rollback(deploy_cmd::RollbackArgs),
    /// What is deployed where: environment, version, URL, pid, uptime, restarts, health.
    #[command(after_help = "Examples:\n  kiln ps\n  kiln ps --json")]
    Ps(deploy_cmd::PsArgs),
    /// OCI images of model versions, without a container engine: `kiln image build|push`.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// The content-addressed store: check every blob (`fsck`), remove unreferenced ones (`gc`).
    #[command(
        subcommand,
        after_help = "Examples:\n  kiln store fsck\n  kiln store gc --dry-run"
    )]
    Store(store_cmd::StoreCommand),
    /// Write a commented `kiln.yaml` from the repository layout.
    #[command(
        after_help = "Recognises models/<name>/src/{train.py,predict.py,requirements.txt}, data/raw,\ndata/processed, scripts/ (preprocessing) and tests/ (pytest).\n\nExamples:\n  kiln init\n  kiln init --force"
    )]
    Init {
        /// Overwrite an existing `kiln.yaml`.
        #[arg(long)]
        force: bool,
    },
}

/// The server logs through `tracing` (one line per event on stderr; `RUST_LOG` filters).
fn init_server_logs() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ui::color())
        .init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return exit::code(if error.use_stderr() {
                exit::INVALID
            } else {
                exit::SUCCESS
            });
        }
    };
    let result = match cli.command {
        Command::Check => commands::check(&cli.project),
        Command::Run(args) => commands::run(&cli.project, args),
        Command::Status(args) => commands::status(&cli.project, args),
        Command::Runs(args) => commands::runs(&cli.project, args),
        Command::Logs(args) => commands::logs(&cli.project, args),
        Command::Metrics(command) => commands::metrics(&cli.project, command),
        Command::Models(command) => models_cmd::models(&cli.project, command),
        Command::Registry(command) => {
            init_server_logs();
            registry_cmd::registry(&cli.project, command)
        }
        Command::Up(args) => up_cmd::up(&cli.project, args),
        Command::Deploy(args) => deploy_cmd::deploy(&cli.project, args),
        Command::Promote(args) => deploy_cmd::promote(&cli.project, args),
        Command::Rollback(args) => deploy_cmd::rollback(&cli.project, args),
        Command::Ps(args) => deploy_cmd::ps(&cli.project, args),
        Command::Store(command) => store_cmd::store(&cli.project, command),
        Command::Image(command) => image_cmd::image(&cli.project, command),
        Command::Serve(args) => {
            init_server_logs();
            serve_cmd::serve(&cli.project, args)
        }
        Command::Init { force } => init_cmd::run(&cli.project, force).map(|path| {
            printer::errln!("wrote `{path}`: review it, then run `kiln check`");
            exit::code(exit::SUCCESS)
        }),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            error.print();
            exit::code(error.exit_code())
        }
    }
}
