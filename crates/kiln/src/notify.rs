//! The CLI's side of notifications: start the project's channels (`notify:` in kiln.yaml),
//! turn what a command did into messages, and print what became of each delivery on stderr.

use std::time::Duration;

use kiln_notify::{Event, Message, Notifier, Report};
use kiln_pipeline::run::{ModelReport, RunReport};
use kiln_registry::{Registered, Status};
use kiln_spec::Project;

use crate::printer::errln;

/// How long a command waits at its end for deliveries still queued or retrying.
const GRACE: Duration = Duration::from_secs(10);

/// Starts the project's notification channels; one that cannot be set up is a warning, as a
/// notification must never stop the work it reports on.
pub fn start(project: &Project) -> Notifier {
    let Some(notify) = &project.notify else {
        return Notifier::none();
    };
    let (notifier, errors) = Notifier::start(notify, |report| match report {
        Report::Delivered { .. } => errln!("{report}"),
        _ => errln!("warning: {report}"),
    });
    for error in errors {
        errln!("warning: notifications: {error}");
        if let Some(hint) = error.hint() {
            errln!("hint: {hint}");
        }
    }
    notifier
}

/// Lets queued deliveries finish (for a while), then stops the channels.
pub fn finish(notifier: Notifier) {
    notifier.finish(GRACE);
}

/// What a run says: a failure (its gates, or anything else), or a new version.
pub fn run_messages(report: &RunReport) -> Vec<Message> {
    report.models.iter().filter_map(model_message).collect()
}

fn model_message(model: &ModelReport) -> Option<Message> {
    let name = &model.model;
    let mut message = match (model.status, model.failure, model.version) {
        (Status::Failed, Some(kiln_registry::FailureKind::Gate), _) => {
            let mut message = Message::new(
                Event::GateFailed,
                name,
                format!("`{name}` run {} failed its gates", model.run_id),
            );
            message.details = model
                .gates
                .iter()
                .filter(|gate| gate.recorded_verdict() == kiln_registry::GateVerdict::Fail)
                .map(|gate| format!("{}: {}", gate.text, gate.detail()))
                .collect();
            message
        }
        (Status::Failed, failure, _) => {
            let why = failure.map_or("failed", |kind| kind.as_str());
            let mut message = Message::new(
                Event::RunFailed,
                name,
                format!("`{name}` run {} failed ({why})", model.run_id),
            );
            message.details = model.message.iter().cloned().collect();
            message
        }
        (Status::Succeeded, _, Some(Registered::New(version))) => {
            let mut message = Message::new(
                Event::Registered,
                name,
                format!("`{name}` v{version} registered from run {}", model.run_id),
            );
            message.version = Some(version);
            message.details = model
                .metrics
                .iter()
                .map(|(key, value)| format!("{key} = {value}"))
                .collect();
            message
        }
        _ => return None,
    };
    message.run = Some(model.run_id);
    Some(message)
}

/// A run Kiln could not carry out for `model` (its environment did not build).
pub fn failed_message(model: &str, error: &str) -> Message {
    let mut message = Message::new(Event::RunFailed, model, format!("`{model}` could not run"));
    message.details = vec![error.to_string()];
    message
}

/// An alias moved by a command: `promoted` (or `rolled_back`) to `to`, from `from`.
pub fn alias_message(
    event: Event,
    model: &str,
    alias: &str,
    from: Option<i64>,
    to: i64,
    reason: Option<&str>,
) -> Message {
    let verb = match event {
        Event::RolledBack => "rolled back to",
        _ => "now serves",
    };
    let was = from.map_or(String::new(), |from| format!(" (was v{from})"));
    let mut message = Message::new(
        event,
        model,
        format!("`{model}` `{alias}` {verb} v{to}{was}"),
    );
    message.version = Some(to);
    message.environment = Some(alias.to_string());
    message.details = reason.map(|r| format!("reason: {r}")).into_iter().collect();
    message
}

/// What the deployment controller did that people hear of: deployed, promoted, rolled back,
/// crashed (a failed rollout with nothing to fall back to counts as a crash).
pub fn deployment_message(change: &kiln_deploy::Change) -> Option<Message> {
    use kiln_deploy::Change;
    let message = match change {
        Change::Deployed { status, from, took } => {
            let was = from.map_or(String::new(), |from| format!(" (was v{from})"));
            let mut message = Message::new(
                Event::Deployed,
                &status.model,
                format!(
                    "`{}` v{} serves `{}` at {}{was}",
                    status.model, status.version, status.environment, status.url
                ),
            );
            message.version = Some(status.version);
            message.environment = Some(status.environment.clone());
            message.details = vec![format!("rolled out in {:.1} s", took.as_secs_f64())];
            message
        }
        Change::Promoted {
            model,
            from_environment,
            environment,
            version,
        } => alias_message(
            Event::Promoted,
            model,
            environment,
            None,
            *version,
            Some(&format!(
                "`approve: auto` after `{from_environment}` served it"
            )),
        ),
        Change::RolloutFailed {
            model,
            environment,
            version,
            error,
            rolled_back_to,
        } => {
            let (event, text) = match rolled_back_to {
                Some(to) => (
                    Event::RolledBack,
                    format!(
                        "`{model}` v{version} failed its rollout to `{environment}`: rolled back to v{to}"
                    ),
                ),
                None => (
                    Event::Crashed,
                    format!("`{model}` v{version} failed its rollout to `{environment}`"),
                ),
            };
            let mut message = Message::new(event, model, text);
            message.version = Some(rolled_back_to.unwrap_or(*version));
            message.environment = Some(environment.clone());
            message.details = std::iter::once(error.message.clone())
                .chain(error.log_tail.clone())
                .collect();
            message
        }
        Change::RolledBack {
            model,
            environment,
            from,
            to,
            reason,
        } => alias_message(
            Event::RolledBack,
            model,
            environment,
            Some(*from),
            *to,
            Some(reason),
        ),
        Change::Crashed {
            model,
            environment,
            version,
            detail,
            restart_in,
        } => {
            let mut message = Message::new(
                Event::Crashed,
                model,
                format!(
                    "`{model}` v{version} crashed in `{environment}`: restarting in {:.1} s",
                    restart_in.as_secs_f64()
                ),
            );
            message.version = Some(*version);
            message.environment = Some(environment.clone());
            message.details = vec![detail.clone()];
            message
        }
        _ => return None,
    };
    Some(message)
}
