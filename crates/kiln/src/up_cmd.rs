//! `kiln up`: all of delivery for one repository on this machine. It runs the pipeline at the
//! watched branch's head in a clean checkout (a worktree under `.kiln/worktrees/`, with the
//! project's caches and registry), deploys each new version to the first environment, promotes
//! where `approve: auto` says so, serves every environment on its port through the local
//! supervisor, and then runs every new commit the same way until Ctrl-C. `--once` does one pass,
//! proves the endpoint answers, and stops.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use kiln_deploy::{Change, Controller, DeploymentStatus, LocalOptions, LocalTarget, TargetEvent};
use kiln_notify::Notifier;
use kiln_pipeline::{BranchWatch, Checkout, Commit, Repo, RunOptions, WatchSource, Workspace};
use kiln_registry::Status;
use kiln_spec::Project;

use crate::commands::load;
use crate::error::{CliError, Result};
use crate::exit;
use crate::notify;
use crate::printer::errln;
use crate::report;
use crate::ui::{self, Progress};

/// Run, register, deploy and serve this repository, and keep doing it for every new commit.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// The project (a folder with `kiln.yaml`, in a git repository); default: `-C`, else here.
    #[arg(value_name = "REPO")]
    repo: Option<PathBuf>,

    /// One pass: run the head commit, register, deploy, send one prediction through the
    /// served endpoint, print the `curl` line, stop what was started.
    #[arg(long)]
    once: bool,

    /// Watch a branch of this remote, polled with `git fetch`, instead of a local branch.
    #[arg(long, value_name = "REMOTE")]
    remote: Option<String>,

    /// The branch to watch (default: the checked-out branch; with `--remote`: `main`).
    #[arg(long, value_name = "BRANCH")]
    branch: Option<String>,

    /// How often to look for new commits: `500ms`, `30s`, `5m` (default: 1s, or 30s with
    /// `--remote`).
    #[arg(long, value_name = "DURATION", value_parser = kiln_spec::parse_duration)]
    poll: Option<Duration>,

    /// Port of the first environment without `port:` in kiln.yaml; the next ones follow
    /// (0: free ports).
    #[arg(
        long,
        env = "KILN_PORT_BASE",
        default_value_t = 8100,
        value_name = "PORT"
    )]
    port_base: u16,

    /// Stages run at once (default: the number of CPUs).
    #[arg(short, long)]
    jobs: Option<usize>,
}

/// Everything one `kiln up` holds.
struct Up {
    root: PathBuf,
    state_dir: PathBuf,
    /// The user's tree: its registry serves the controller between runs.
    workspace: Workspace,
    /// The project as of the newest commit run (its checkout is kept until the next one).
    project: Project,
    checkout: Option<Checkout>,
    controller: Controller,
    target_events: mpsc::Receiver<TargetEvent>,
    notifier: Notifier,
    cancel: Arc<AtomicBool>,
    jobs: usize,
}

pub fn up(global_root: &Path, args: UpArgs) -> Result<ExitCode> {
    if args.jobs == Some(0) {
        return Err(CliError::usage("`--jobs` must be at least 1"));
    }
    let root = std::path::absolute(args.repo.as_deref().unwrap_or(global_root))?;
    let project = load(&root)?;
    let workspace = Workspace::open(&project.root)?;
    let state_dir = workspace.state_dir.clone();
    let _supervisor = kiln_deploy::local::state::lock_supervisor(&state_dir)?;
    let repo = kiln_pipeline::find_repo(&project.root)?;
    let watch = match &repo {
        Some(repo) => Some(BranchWatch::new(repo, watch_source(&args), poll(&args))?),
        None if args.remote.is_some() || args.branch.is_some() => {
            return Err(CliError::usage(format!(
                "`{}` is not in a git repository: there is no branch to watch",
                root.display()
            )));
        }
        None => None,
    };

    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        let _ = ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst));
    }
    let (events, target_events) = mpsc::channel();
    let kiln = std::env::current_exe()?;
    let target = LocalTarget::new(LocalOptions::new(kiln, state_dir.clone()), events);
    let mut controller = Controller::new(Box::new(target), &project, args.port_base);
    if crate::kubernetes::in_use(&project) {
        controller = match crate::kubernetes::target(&project, true) {
            Ok(kubernetes) => controller.with_target(Box::new(kubernetes)),
            Err(error) => controller.with_unavailable(
                kiln_spec::TargetKind::Kubernetes,
                format!(
                    "cannot reach the Kubernetes cluster, the environment is not served: {error}"
                ),
            ),
        };
    }
    let notifier = notify::start(&project);
    let mut up = Up {
        root: project.root.clone(),
        state_dir,
        workspace,
        project,
        checkout: None,
        controller,
        target_events,
        notifier,
        cancel,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
    };

    // What the aliases say should run, from before this `kiln up` (a restart of Kiln).
    up.reconcile();
    let code = up.first_pass(repo.as_ref(), watch, args.once);
    up.stop();
    code
}

fn watch_source(args: &UpArgs) -> WatchSource {
    match &args.remote {
        Some(remote) => WatchSource::Remote {
            remote: remote.clone(),
            branch: args.branch.clone().unwrap_or_else(|| "main".into()),
        },
        None => WatchSource::Local {
            branch: args.branch.clone(),
        },
    }
}

fn poll(args: &UpArgs) -> Duration {
    args.poll.unwrap_or(if args.remote.is_some() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(1)
    })
}

impl Up {
    /// Runs the head (or the tree as it is, outside git), then `--once`'s check or the watch.
    fn first_pass(
        &mut self,
        repo: Option<&Repo>,
        watch: Option<BranchWatch>,
        once: bool,
    ) -> Result<ExitCode> {
        let mut watch = watch;
        let mut seen = None;
        match (repo, watch.as_mut()) {
            (Some(repo), Some(watch)) => {
                let head = watch.current()?;
                seen = Some(head.sha.clone());
                self.run_commit(repo, head);
            }
            _ => {
                errln!(
                    "`{}` is not in a git repository: running it as it is (no commits to watch)",
                    self.root.display()
                );
                self.run_in_place();
            }
        }
        self.print_served();
        if once {
            return Ok(self.check_endpoints());
        }
        match (repo, watch, seen) {
            (Some(repo), Some(watch), Some(seen)) => self.watch(repo, watch, seen),
            _ => self.serve_until_stopped(),
        }
        // Both loops end only on Ctrl-C (or SIGTERM): a requested stop.
        Ok(exit::code(exit::SUCCESS))
    }

    /// Runs `commit` in a checkout of its own, then deploys what it registered.
    fn run_commit(&mut self, repo: &Repo, commit: Commit) {
        let short = &commit.sha[..commit.sha.len().min(12)];
        errln!("commit {short}: {}", commit.subject);
        let checkout = match Checkout::create(repo, &self.state_dir, &commit) {
            Ok(checkout) => checkout,
            Err(error) => return self.report_error(&format!("cannot check out {short}"), &error),
        };
        let project = match load(&checkout.project_root) {
            Ok(project) => project,
            Err(error) => {
                errln!("error: the project at {short} is not valid; nothing runs for this commit");
                error.print();
                return;
            }
        };
        let mut workspace =
            match Workspace::open_for_checkout(&self.state_dir, &checkout.project_root) {
                Ok(workspace) => workspace,
                Err(error) => {
                    return self.report_error("cannot open the project's state", &error);
                }
            };
        errln!(
            "run of {short} started in `{}`",
            checkout.worktree.display()
        );
        self.run_and_deploy(&mut workspace, &project);
        // The newest commit's checkout stays: its project (and Python requirements) serve
        // the deployments until the next commit replaces it.
        self.project = project;
        self.checkout = Some(checkout);
    }

    /// Outside git: the project's own tree is run.
    fn run_in_place(&mut self) {
        let project = self.project.clone();
        let mut workspace = match Workspace::open(&self.root) {
            Ok(workspace) => workspace,
            Err(error) => return self.report_error("cannot open the project's state", &error),
        };
        self.run_and_deploy(&mut workspace, &project);
    }

    fn run_and_deploy(&mut self, workspace: &mut Workspace, project: &Project) {
        let options = RunOptions {
            models: Vec::new(),
            overrides: Vec::new(),
            jobs: self.jobs,
            force: false,
            cancel: self.cancel.clone(),
            artifact_check: Some(Arc::new(kiln_deploy::ServableCheck::new())),
        };
        let progress = Progress::new(false);
        let mut said_busy = false;
        let report = loop {
            match kiln_pipeline::run(workspace, project, &options, &progress) {
                // Another run of the project (`kiln run` in the working tree) holds the lock:
                // this one waits its turn.
                Err(kiln_pipeline::Error::Busy) if !self.cancel.load(Ordering::SeqCst) => {
                    if !said_busy {
                        errln!("another run of this project is under way: waiting for it to end");
                        said_busy = true;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                result => break result,
            }
        };
        let report = match report {
            Ok(report) => report,
            Err(error) => {
                for model in &project.models {
                    self.notifier
                        .send(&notify::failed_message(&model.name, &error.to_string()));
                }
                return self.report_error("the run could not be carried out", &error);
            }
        };
        for message in notify::run_messages(&report) {
            self.notifier.send(&message);
        }
        for model in &report.models {
            if !model.gates.is_empty() {
                errln!("{}", report::gate_table(model));
            }
            match (model.status, model.version) {
                (Status::Succeeded, Some(registered)) => {
                    let version = registered.version();
                    match registered {
                        kiln_registry::Registered::New(_) => {
                            errln!("registered `{}` v{version}", model.model)
                        }
                        kiln_registry::Registered::Existing(_) => {
                            errln!("`{}` v{version} already holds this artifact", model.model)
                        }
                    }
                    let (controller, notifier) = (&mut self.controller, &self.notifier);
                    let deployed = controller.deploy_new_version(
                        workspace,
                        project,
                        &model.model,
                        version,
                        Some(model.run_id),
                        &mut |change| say(notifier, change),
                    );
                    if let Err(error) = deployed {
                        self.report_error(&format!("cannot deploy `{}`", model.model), &error);
                    }
                }
                (Status::Succeeded, None) => {}
                (status, _) => errln!(
                    "run {} of `{}` {}: {}; nothing is deployed",
                    model.run_id,
                    model.model,
                    status.as_str(),
                    model.message.as_deref().unwrap_or("see above")
                ),
            }
        }
        errln!("run finished in {}", ui::duration(report.duration));
    }

    /// Brings the target in line with the aliases (moved by `kiln deploy|promote|rollback`).
    fn reconcile(&mut self) {
        let (controller, notifier) = (&mut self.controller, &self.notifier);
        if let Err(error) =
            controller.reconcile(&mut self.workspace, &self.project, &mut |change| {
                say(notifier, change)
            })
        {
            errln!("error: cannot roll out what the registry names: {error}");
        }
    }

    /// Passes on what the supervisor saw (crashes, restarts) and rolls back crash loops.
    fn handle_target_events(&mut self) {
        while let Ok(event) = self.target_events.try_recv() {
            let (controller, notifier) = (&mut self.controller, &self.notifier);
            if let Err(error) =
                controller.handle(&mut self.workspace, &self.project, event, &mut |change| {
                    say(notifier, change)
                })
            {
                errln!("error: {error}");
            }
        }
    }

    /// Until Ctrl-C: each new commit is run (the newest wins: commits that arrive during a run
    /// are skipped but the last), the aliases are followed, crashes are handled.
    fn watch(&mut self, repo: &Repo, mut watch: BranchWatch, seen: String) {
        let (commits, new_commits) = mpsc::channel::<Commit>();
        let cancel = self.cancel.clone();
        let watcher = std::thread::Builder::new()
            .name("kiln-watch".into())
            .spawn(move || {
                let mut seen = seen;
                loop {
                    let mut warn = |line: &str| errln!("warning: {line}");
                    match watch.wait_for_change(&seen, &cancel, &mut warn) {
                        Ok(Some(commit)) => {
                            seen = commit.sha.clone();
                            if commits.send(commit).is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(error) => {
                            errln!("warning: cannot read the watched branch: {error}");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            });
        errln!("watching for new commits (Ctrl-C stops)");
        let mut last_reconcile = Instant::now();
        while !self.cancel.load(Ordering::SeqCst) {
            self.handle_target_events();
            let newest = new_commits.try_iter().last();
            if let Some(commit) = newest {
                self.run_commit(repo, commit);
                self.print_served();
            }
            if last_reconcile.elapsed() >= Duration::from_secs(1) {
                self.reconcile();
                last_reconcile = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(watcher) = watcher {
            let _ = watcher.join();
        }
    }

    /// Outside git: follows the aliases and handles crashes until Ctrl-C.
    fn serve_until_stopped(&mut self) {
        errln!("serving (Ctrl-C stops)");
        let mut last_reconcile = Instant::now();
        while !self.cancel.load(Ordering::SeqCst) {
            self.handle_target_events();
            if last_reconcile.elapsed() >= Duration::from_secs(1) {
                self.reconcile();
                last_reconcile = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `--once`: one prediction through each model's first environment, and its `curl` line.
    fn check_endpoints(&mut self) -> ExitCode {
        let served = self.controller.status();
        let mut failed = false;
        for model in self.project.models.iter().filter(|m| m.artifact.is_some()) {
            let Some(first) = model.deploy.environments.first() else {
                continue;
            };
            let Some(status) = served
                .iter()
                .find(|s| s.model == model.name && s.environment == first.name)
            else {
                errln!("error: `{}` is not served in `{}`", model.name, first.name);
                failed = true;
                continue;
            };
            let example = self
                .workspace
                .registry
                .model_version(&model.name, status.version)
                .ok()
                .and_then(|v| v.lineage.example);
            let Some(example) = example else {
                errln!(
                    "`{}` v{} serves `{}` at {} (it has no example input to try)",
                    model.name,
                    status.version,
                    status.environment,
                    status.url
                );
                continue;
            };
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], status.port));
            match kiln_serve::front::predict_example(
                address,
                &model.name,
                &example,
                Duration::from_secs(30),
            ) {
                Ok(took) => {
                    errln!(
                        "`{}` v{} answered a prediction at {} in {}; try it:",
                        model.name,
                        status.version,
                        status.url,
                        ui::duration(took)
                    );
                    errln!("  {}", curl_line(status, &model.name, &example));
                }
                Err(error) => {
                    errln!(
                        "error: `{}` at {} did not answer a prediction: {error}",
                        model.name,
                        status.url
                    );
                    failed = true;
                }
            }
        }
        exit::code(if failed {
            exit::NOT_DEPLOYED
        } else {
            exit::SUCCESS
        })
    }

    /// What is served where.
    fn print_served(&self) {
        let mut served = self.controller.status();
        if served.is_empty() {
            errln!("nothing is served yet");
            return;
        }
        served.sort_by(|a, b| (&a.model, a.port).cmp(&(&b.model, b.port)));
        errln!("served:");
        for status in served {
            errln!(
                "  {:<12} {:<12} v{:<4} {}",
                status.model,
                status.environment,
                status.version,
                status.url
            );
        }
    }

    fn report_error(&self, what: &str, error: &dyn std::error::Error) {
        errln!("error: {what}: {}", kiln_serve::error_chain(error));
    }

    fn stop(self) {
        errln!("stopping the served environments...");
        self.controller.stop();
        drop(self.checkout);
        notify::finish(self.notifier);
        errln!("stopped");
    }
}

/// The `curl` command that sends `example` to the environment.
fn curl_line(status: &DeploymentStatus, model: &str, example: &serde_json::Value) -> String {
    let path = kiln_serve::front::example_path(model, example);
    let body = example.to_string().replace('\'', "'\\''");
    format!(
        "curl -s {}{path} -H 'Content-Type: application/json' -d '{body}'",
        status.url
    )
}

/// Prints what the controller did and tells whoever `notify:` names.
pub(crate) fn say(notifier: &Notifier, change: Change) {
    if let Some(message) = notify::deployment_message(&change) {
        notifier.send(&message);
    }
    match change {
        Change::Step(line) => errln!("  {line}"),
        Change::RollingOut {
            model,
            environment,
            version,
            from,
        } => match from {
            Some(from) => errln!(
                "rolling out `{model}` v{version} to `{environment}` (v{from} serves until v{version} passes its smoke test)"
            ),
            None => errln!("rolling out `{model}` v{version} to `{environment}`"),
        },
        Change::Deployed { status, took, .. } => errln!(
            "`{}` v{} serves `{}` at {} (rolled out in {})",
            status.model,
            status.version,
            status.environment,
            status.url,
            ui::duration(took)
        ),
        Change::RolloutFailed {
            model,
            environment,
            version,
            error,
            rolled_back_to,
        } => {
            errln!("error: `{model}` v{version} was not rolled out to `{environment}`: {error}");
            if let Some(tail) = &error.log_tail {
                errln!("--- last lines of its log ---\n{tail}\n---");
            }
            match rolled_back_to {
                Some(to) => errln!("`{model}@{environment}` is back on v{to}, which kept serving"),
                None => errln!(
                    "`{environment}` has no earlier version to serve; fix the model and deploy again"
                ),
            }
        }
        Change::Promoted {
            model,
            from_environment,
            environment,
            version,
        } => errln!(
            "promoted `{model}` v{version} from `{from_environment}` to `{environment}` (`approve: auto`)"
        ),
        Change::AwaitingApproval {
            model,
            from_environment,
            environment,
            version,
        } => errln!(
            "`{model}` v{version} serves `{from_environment}`; `{environment}` waits for approval: kiln promote {model} --to {environment}"
        ),
        Change::RolledBack {
            model,
            environment,
            from,
            to,
            reason,
        } => errln!("rolled `{model}@{environment}` back from v{from} to v{to}: {reason}"),
        Change::Crashed {
            model,
            environment,
            version,
            detail,
            restart_in,
        } => errln!(
            "warning: `{model}` v{version} in `{environment}` crashed, restarting it in {}: {detail}",
            ui::duration(restart_in)
        ),
        Change::Restarted {
            model,
            environment,
            version,
            down,
        } => errln!(
            "`{model}` v{version} in `{environment}` is back ({} without a process; requests waited)",
            ui::duration(down)
        ),
        Change::Unsupported {
            model,
            environment,
            reason,
        } => errln!("warning: `{model}@{environment}`: {reason}"),
    }
}
