//! Deliveries to real receivers on loopback: an HTTP server that records what it is sent and
//! answers with the statuses a test scripts, and a real SMTP server (`aiosmtpd` from the test
//! virtualenv) writing what it receives to a maildir.

use std::collections::{BTreeSet, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use kiln_notify::{Event, Message, Notifier, Notify, Report};
use kiln_spec::notify::{Email, Security, UrlSource, Webhook};
use sha2::Sha256;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Default)]
struct Script {
    statuses: VecDeque<u16>,
    received: Vec<Received>,
}

/// An HTTP receiver on 127.0.0.1 that answers with scripted statuses, then 200.
struct Receiver {
    address: SocketAddr,
    script: Arc<Mutex<Script>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(statuses: &[u16]) -> Receiver {
        let script = Arc::new(Mutex::new(Script {
            statuses: statuses.iter().copied().collect(),
            received: Vec::new(),
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_io()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(receive))
            .with_state(script.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            address,
            script,
            _runtime: runtime,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }
}

async fn receive(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut script = script.lock().unwrap();
    script.received.push(Received {
        headers,
        body: body.to_vec(),
    });
    StatusCode::from_u16(script.statuses.pop_front().unwrap_or(200)).unwrap()
}

fn all_events() -> BTreeSet<Event> {
    Event::ALL.into_iter().collect()
}

fn webhook(url: UrlSource, secret_env: Option<&str>) -> Webhook {
    Webhook {
        url,
        secret_env: secret_env.map(str::to_string),
        on: all_events(),
    }
}

/// Starts a notifier whose reports are collected, with `vars` as its environment.
fn start(notify: &Notify, vars: &[(&str, &str)]) -> (Notifier, Arc<Mutex<Vec<Report>>>) {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let collected = reports.clone();
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (notifier, errors) = Notifier::start_with_env(notify, &env, move |report| {
        collected.lock().unwrap().push(report)
    });
    assert!(errors.is_empty(), "{errors:?}");
    (notifier, reports)
}

fn registered() -> Message {
    let mut message = Message::new(Event::Registered, "iris", "iris v3 registered (run 12)");
    message.version = Some(3);
    message.run = Some(12);
    message.details = vec!["accuracy 0.97".into()];
    message
}

#[test]
fn a_signed_webhook_is_retried_until_delivered_with_one_delivery_id() {
    let receiver = Receiver::start(&[500, 503]);
    let notify = Notify {
        webhooks: vec![webhook(
            UrlSource::Literal(receiver.url("/hook")),
            Some("HOOK_SECRET"),
        )],
        email: None,
    };
    let (notifier, reports) = start(&notify, &[("HOOK_SECRET", "s3cret")]);
    notifier.send(&registered());
    notifier.finish(Duration::from_secs(20));

    let received = receiver.received();
    assert_eq!(received.len(), 3, "two 5xx answers, then 200");
    let ids: BTreeSet<_> = received
        .iter()
        .map(|r| r.headers["x-kiln-delivery"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "a retry keeps its delivery id");
    let last = &received[2];
    assert_eq!(last.headers["x-kiln-event"], "registered");
    assert_eq!(last.headers["content-type"], "application/json");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(&last.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        last.headers["x-kiln-signature-256"].to_str().unwrap(),
        format!("sha256={expected}")
    );
    let body: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(body["text"], "iris v3 registered (run 12)");
    assert_eq!(body["event"], "registered");
    assert_eq!(body["model"], "iris");
    assert_eq!(body["version"], 3);
    assert_eq!(body["run"], 12);
    assert_eq!(body["details"][0], "accuracy 0.97");

    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 3, "{reports:?}");
    assert!(matches!(reports[0], Report::Retrying { attempt: 1, .. }));
    assert!(reports[0].to_string().contains("500 Internal Server Error"));
    assert!(matches!(reports[1], Report::Retrying { attempt: 2, .. }));
    assert!(matches!(reports[2], Report::Delivered { attempts: 3, .. }));
}

#[test]
fn a_rejected_webhook_is_reported_at_once_and_an_unwanted_event_is_not_sent() {
    let receiver = Receiver::start(&[404]);
    let mut hook = webhook(UrlSource::Literal(receiver.url("/hook")), None);
    hook.on = BTreeSet::from([Event::Registered]);
    let notify = Notify {
        webhooks: vec![hook],
        email: None,
    };
    let (notifier, reports) = start(&notify, &[]);
    notifier.send(&Message::new(Event::Crashed, "iris", "not wanted"));
    notifier.send(&registered());
    notifier.finish(Duration::from_secs(20));

    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert!(!received[0].headers.contains_key("x-kiln-signature-256"));
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(
        reports[0].to_string(),
        format!(
            "cannot notify webhook http://{} of `registered`: the receiver answered 404 Not Found",
            receiver.address
        )
    );
}

#[test]
fn an_unreachable_webhook_never_blocks_the_sender_nor_shows_its_secret_url() {
    // Nothing listens on a port just released.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let notify = Notify {
        webhooks: vec![webhook(UrlSource::Env("HOOK_URL".into()), None)],
        email: None,
    };
    let url = format!("http://127.0.0.1:{port}/services/T0/B0/SECRET-TOKEN");
    let (notifier, reports) = start(&notify, &[("HOOK_URL", &url)]);
    let sent = Instant::now();
    notifier.send(&registered());
    notifier.send(&registered());
    assert!(
        sent.elapsed() < Duration::from_millis(200),
        "send only queues"
    );
    notifier.finish(Duration::from_millis(800));

    let reports = reports.lock().unwrap();
    assert!(
        matches!(reports.first(), Some(Report::Retrying { .. })),
        "{reports:?}"
    );
    let undelivered = reports
        .iter()
        .filter(|r| matches!(r, Report::Undelivered { .. }))
        .count();
    assert_eq!(undelivered, 2, "{reports:?}");
    for report in reports.iter() {
        let shown = report.to_string();
        assert!(!shown.contains("SECRET-TOKEN"), "{shown}");
        assert!(!shown.contains("/services"), "{shown}");
    }
}

#[test]
fn a_channel_whose_variable_is_unset_is_reported_and_the_others_run() {
    let receiver = Receiver::start(&[]);
    let notify = Notify {
        webhooks: vec![
            webhook(UrlSource::Env("KILN_TEST_UNSET_HOOK_URL".into()), None),
            webhook(UrlSource::Literal(receiver.url("/ok")), None),
        ],
        email: None,
    };
    let (notifier, errors) = Notifier::start_with_env(&notify, &|_| None, |_| {});
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "a webhook's URL is read from `$KILN_TEST_UNSET_HOOK_URL`, which is not set"
    );
    assert!(errors[0].hint().unwrap().contains("export"));
    notifier.send(&registered());
    notifier.finish(Duration::from_secs(20));
    assert_eq!(receiver.received().len(), 1);
}

/// A real SMTP server on loopback writing each message it accepts into a maildir.
struct SmtpSink {
    child: Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        let python = std::env::var("KILN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let maildir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("box"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start aiosmtpd with `{python}` ({e}): set KILN_TEST_PYTHON to the test virtualenv's python")
            });
        let sink = SmtpSink {
            child,
            port,
            maildir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        sink
    }

    fn messages(&self) -> Vec<String> {
        let new = self.maildir.path().join("box").join("new");
        let mut files: Vec<_> = std::fs::read_dir(&new)
            .map(|entries| entries.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|path| std::fs::read_to_string(Path::new(path)).unwrap())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mail_reaches_a_real_smtp_server() {
    let sink = SmtpSink::start();
    let notify = Notify {
        webhooks: Vec::new(),
        email: Some(Email {
            host: "127.0.0.1".into(),
            port: sink.port,
            security: Security::None,
            from: "Kiln <kiln@example.com>".into(),
            to: vec!["ml-team@example.com".into(), "oncall@example.com".into()],
            username_env: "KILN_SMTP_USERNAME".into(),
            password_env: "KILN_SMTP_PASSWORD".into(),
            on: all_events(),
        }),
    };
    let (notifier, reports) = start(&notify, &[]);
    notifier.send(&registered());
    notifier.finish(Duration::from_secs(20));

    let reports = reports.lock().unwrap();
    assert!(
        matches!(reports.as_slice(), [Report::Delivered { attempts: 1, .. }]),
        "{reports:?}"
    );
    assert_eq!(
        reports[0].to_string(),
        format!(
            "notified mail via 127.0.0.1:{} of `registered` (attempt 1)",
            sink.port
        )
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let mail = &messages[0];
    assert!(
        mail.contains("Subject: [kiln] iris v3 registered (run 12)"),
        "{mail}"
    );
    assert!(mail.contains("From: Kiln <kiln@example.com>"), "{mail}");
    assert!(mail.contains("ml-team@example.com"), "{mail}");
    assert!(mail.contains("oncall@example.com"), "{mail}");
    assert!(mail.contains("accuracy 0.97"), "{mail}");
    assert!(mail.contains("version: 3"), "{mail}");
}
