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
