//! Notifications: tell people that a run failed, a version was registered, deployed, promoted
//! or rolled back, or a server crashed, by webhook and e-mail (`notify:` in kiln.yaml).
//!
//! [`Notifier::start`] opens one channel per webhook and one for e-mail, each with a worker
//! thread: [`Notifier::send`] only queues, so notifying never slows a pipeline down. A
//! delivery that fails for a reason that may pass (a refused connection, HTTP 5xx or 429, a
//! transient SMTP reply) is retried with exponential backoff; one that cannot succeed (HTTP
//! 4xx, a permanent SMTP reply) is reported at once. [`Notifier::finish`] gives the queues a
//! grace period and reports what is still undelivered. What happened to each delivery reaches
//! the caller as a [`Report`]; secrets (a webhook's URL, its signing secret, SMTP credentials)
//! never appear in one.

mod email;
mod webhook;

pub use webhook::{SIGNATURE_HEADER, signature};

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use kiln_spec::notify::{Event, Notify};
use serde::Serialize;

/// A channel that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} is read from `${var}`, which is not set")]
    MissingEnv { var: String, what: &'static str },
    #[error("`{address}` is not an e-mail address: {reason}")]
    Address { address: String, reason: String },
    #[error("cannot set up mail through `{server}`: {reason}")]
    Smtp { server: String, reason: String },
    #[error("cannot set up the HTTP client for webhooks: {0}")]
    Http(String),
}

impl Error {
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::MissingEnv { var, .. } => Some(format!(
                "export `{var}` before running Kiln, or remove it from `notify:` in kiln.yaml"
            )),
            Error::Address { .. } => Some("write addresses as `name@example.com`".into()),
            Error::Smtp { .. } | Error::Http(_) => None,
        }
    }
}

/// What a notification says. `text` is one line a person reads (a webhook's Slack-compatible
/// `text`, an e-mail's subject); the other fields let a receiver act on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub event: Event,
    pub model: String,
    pub version: Option<i64>,
    /// The alias or environment concerned (`production`), when there is one.
    pub environment: Option<String>,
    pub run: Option<i64>,
    pub text: String,
    /// Further lines: the failed stage's error, the gate that failed, the metrics.
    pub details: Vec<String>,
    /// When it happened (RFC 3339, UTC).
    pub at: String,
}

impl Message {
    pub fn new(event: Event, model: &str, text: impl Into<String>) -> Message {
        Message {
            event,
            model: model.to_string(),
            version: None,
            environment: None,
            run: None,
            text: text.into(),
            details: Vec::new(),
            at: {
                let now = jiff::Timestamp::now();
                now.round(jiff::Unit::Second).unwrap_or(now).to_string()
            },
        }
    }
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Delivered {
        channel: String,
        event: Event,
        attempts: u32,
    },
    /// The attempt failed and will be retried after `wait`.
    Retrying {
        channel: String,
        event: Event,
        attempt: u32,
        error: String,
        wait: Duration,
    },
    /// Given up: the error cannot pass, or every attempt failed.
    Failed {
        channel: String,
        event: Event,
        error: String,
    },
    /// Still queued or retrying when the notifier was finished.
    Undelivered { channel: String, event: Event },
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Delivered {
                channel,
                event,
                attempts,
            } => write!(f, "notified {channel} of `{event}` (attempt {attempts})"),
            Report::Retrying {
                channel,
                event,
                attempt,
                error,
                wait,
            } => write!(
                f,
                "cannot notify {channel} of `{event}` (attempt {attempt}): {error}; retrying in {:.1} s",
                wait.as_secs_f64()
            ),
            Report::Failed {
                channel,
                event,
                error,
            } => write!(f, "cannot notify {channel} of `{event}`: {error}"),
            Report::Undelivered { channel, event } => write!(
                f,
                "gave up notifying {channel} of `{event}`: Kiln stopped before it was delivered"
            ),
        }
    }
}

/// Why one delivery attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// May pass: retry.
    Transient(String),
    /// Will not pass: report.
    Permanent(String),
}

/// Where notifications go: a webhook or the mail server.
pub(crate) trait Deliver: Send {
    /// How reports name it, without secrets: `webhook https://hooks.example.com`.
    fn shown(&self) -> &str;
    fn deliver(&mut self, message: &Message, delivery_id: &str) -> Result<(), Failure>;
}

/// Delays between attempts: 6 attempts over about 15 seconds.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

type Sink = Arc<dyn Fn(Report) + Send + Sync>;

/// When the workers must stop trying, once [`Notifier::finish`] is called.
#[derive(Default)]
struct Deadline {
    at: Mutex<Option<Instant>>,
    changed: Condvar,
}

impl Deadline {
    fn passed(&self) -> bool {
        self.at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some_and(|at| Instant::now() >= at)
    }

    /// Sleeps for `wait`, or less when the deadline comes first. False when it has passed.
    fn sleep(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        let mut at = self
            .at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            let now = Instant::now();
            if at.is_some_and(|deadline| now >= deadline) {
                return false;
            }
            if now >= until {
                return true;
            }
            let end = at.map_or(until, |deadline| deadline.min(until));
            at = self
                .changed
                .wait_timeout(at, end - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

struct Channel {
    on: BTreeSet<Event>,
    queue: Sender<Message>,
    worker: JoinHandle<()>,
}

/// The running notification channels.
pub struct Notifier {
    channels: Vec<Channel>,
    deadline: Arc<Deadline>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("channels", &self.channels.len())
            .finish()
    }
}

impl Notifier {
    /// Starts a worker per channel of `notify`. A channel that cannot be set up (a variable it
    /// reads is unset, an address does not parse) is returned as an error; the others run.
    pub fn start(
        notify: &Notify,
        sink: impl Fn(Report) + Send + Sync + 'static,
    ) -> (Notifier, Vec<Error>) {
        Notifier::start_with_env(notify, &|var| std::env::var(var).ok(), sink)
    }

    /// [`Notifier::start`], reading the variables `notify` names through `env`.
    pub fn start_with_env(
        notify: &Notify,
        env: &dyn Fn(&str) -> Option<String>,
        sink: impl Fn(Report) + Send + Sync + 'static,
    ) -> (Notifier, Vec<Error>) {
        let sink: Sink = Arc::new(sink);
        let deadline = Arc::new(Deadline::default());
        let mut channels = Vec::new();
        let mut errors = Vec::new();
        let webhooks = notify.webhooks.iter().map(|hook| {
            let target = webhook::Webhook::new(hook, env).map(|w| Box::new(w) as Box<dyn Deliver>);
            (hook.on.clone(), target)
        });
        let mail = notify.email.iter().map(|mail| {
            let target = email::Mail::new(mail, env).map(|m| Box::new(m) as Box<dyn Deliver>);
            (mail.on.clone(), target)
        });
        for (on, target) in webhooks.chain(mail) {
            match target {
                Ok(target) => {
                    let (queue, received) = channel();
                    let (sink, deadline) = (sink.clone(), deadline.clone());
                    let worker = std::thread::spawn(move || work(target, received, sink, deadline));
                    channels.push(Channel { on, queue, worker });
                }
                Err(error) => errors.push(error),
            }
        }
        (Notifier { channels, deadline }, errors)
    }

    /// A notifier with no channels.
    pub fn none() -> Notifier {
        Notifier {
            channels: Vec::new(),
            deadline: Arc::new(Deadline::default()),
        }
    }

    /// Queues `message` on every channel that wants its event. Never blocks.
    pub fn send(&self, message: &Message) {
        for channel in &self.channels {
            if channel.on.contains(&message.event) {
                // A worker only stops once the queue is closed, in `finish`.
                let _ = channel.queue.send(message.clone());
            }
        }
    }

    /// Waits up to `grace` for the queues to empty, then stops the workers; what is left is
    /// reported as [`Report::Undelivered`].
    pub fn finish(self, grace: Duration) {
        *self
            .deadline
            .at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now() + grace);
        self.deadline.changed.notify_all();
        for channel in self.channels {
            drop(channel.queue);
            // A worker that panicked has reported what it could.
            let _ = channel.worker.join();
        }
    }
}

/// Ids that let a receiver recognise a retried delivery.
fn delivery_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:x}-{}-{}",
        nanos,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One channel's worker: delivers its queue in order, retrying with backoff.
fn work(
    mut target: Box<dyn Deliver>,
    queue: Receiver<Message>,
    sink: Sink,
    deadline: Arc<Deadline>,
) {
    let channel = target.shown().to_string();
    for message in queue {
        let event = message.event;
        if deadline.passed() {
            sink(Report::Undelivered {
                channel: channel.clone(),
                event,
            });
            continue;
        }
        let id = delivery_id();
        let mut attempt = 1;
        loop {
            match target.deliver(&message, &id) {
                Ok(()) => {
                    sink(Report::Delivered {
                        channel: channel.clone(),
                        event,
                        attempts: attempt,
                    });
                    break;
                }
                Err(Failure::Permanent(error)) => {
                    sink(Report::Failed {
                        channel: channel.clone(),
                        event,
                        error,
                    });
                    break;
                }
                Err(Failure::Transient(error)) => {
                    let Some(&wait) = BACKOFF.get(attempt as usize - 1) else {
                        sink(Report::Failed {
                            channel: channel.clone(),
                            event,
                            error: format!("{error} (after {attempt} attempts)"),
                        });
                        break;
                    };
                    sink(Report::Retrying {
                        channel: channel.clone(),
                        event,
                        attempt,
                        error,
                        wait,
                    });
                    if !deadline.sleep(wait) {
                        sink(Report::Undelivered {
                            channel: channel.clone(),
                            event,
                        });
                        break;
                    }
                    attempt += 1;
                }
            }
        }
    }
}

/// How a channel reads the environment variables it names.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads an environment variable a channel needs.
pub(crate) fn required_env(env: Env<'_>, var: &str, what: &'static str) -> Result<String, Error> {
    env(var).ok_or_else(|| Error::MissingEnv {
        var: var.to_string(),
        what,
    })
}
