//! Notifications from `kiln run` and `kiln models`: a real HTTP receiver (Python's
//! `http.server`, checking each delivery's HMAC signature with Python's own `hmac`) and a real
//! SMTP server (`aiosmtpd`), both on loopback.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{TestProject, stderr};
use crate::models::project;
use crate::serve::{free_port, test_python};

pub(crate) const SECRET: &str = "hook-secret-value";

/// Records each POST as a JSON line: its path, event header, body, and whether the signature
/// header is the HMAC-SHA256 of the body under the secret.
const RECEIVER: &str = r#"
import hashlib, hmac, json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

secret = os.environ["HOOK_SECRET"].encode()
log = sys.argv[1]

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(self.headers.get("X-Kiln-Signature-256", ""), expected)
        with open(log, "a") as out:
            out.write(json.dumps({"path": self.path, "event": self.headers["X-Kiln-Event"],
                                  "signed": signed, "body": json.loads(body)}) + "\n")
        self.send_response(200 if signed else 401)
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A child process killed (by its PID) when the test ends, however it ends.
pub(crate) struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start_receiver(dir: &Path) -> (Server, u16) {
    std::fs::write(dir.join("receiver.py"), RECEIVER).unwrap();
    let mut child = Command::new(test_python())
        .arg(dir.join("receiver.py"))
        .arg(dir.join("hooks.jsonl"))
        .env("HOOK_SECRET", SECRET)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Server(child), line.trim().parse().unwrap())
}

pub(crate) fn start_smtp(maildir: &Path) -> (Server, u16) {
    let port = free_port();
    let child = Command::new(test_python())
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "aiosmtpd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

/// `kiln ARGS` with the webhook's secret in its environment; its stderr.
fn kiln(project: &TestProject, args: &[&str]) -> String {
    let output = crate::common::kiln_command(project.root())
        .env("KILN_PYTHON", test_python())
        .env("KILN_TEST_HOOK_SECRET", SECRET)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    stderr(&output)
}

/// `kiln run` with the model scoring `accuracy`, expecting exit `code`; its stderr.
fn run(project: &TestProject, accuracy: f64, code: i32) -> String {
    project.write("score.json", &format!("{{\"accuracy\": {accuracy}}}"));
    let output = crate::common::kiln_command(project.root())
        .env("KILN_PYTHON", test_python())
        .env("KILN_TEST_HOOK_SECRET", SECRET)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(code), "{}", stderr(&output));
    stderr(&output)
}

#[test]
fn runs_and_alias_moves_notify_a_signed_webhook_and_mail() {
    let project = project();
    let tools = tempfile::tempdir().unwrap();
    let (_receiver, hook_port) = start_receiver(tools.path());
    let maildir = tools.path().join("mail");
    let (_smtp, smtp_port) = start_smtp(&maildir);
    let kiln_yaml = project.read("kiln.yaml");
    project.write(
        "kiln.yaml",
        &format!(
            "{kiln_yaml}notify:\n  webhooks:\n    - url: http://127.0.0.1:{hook_port}/services/T0/B0/TOKEN\n      secret_env: KILN_TEST_HOOK_SECRET\n  email:\n    server: 127.0.0.1:{smtp_port}\n    security: none\n    from: kiln@example.com\n    to: [ml-team@example.com]\n    on: [gate_failed, rolled_back]\n"
        ),
    );

    // Each command's stderr, in order.
    let shown = [
        run(&project, 0.9, 0),
        kiln(&project, &["models", "alias", "m@v1", "production"]),
        run(&project, 0.5, 4),
        run(&project, 0.95, 0),
        kiln(&project, &["models", "alias", "m@v2", "production"]),
        kiln(
            &project,
            &[
                "models",
                "rollback",
                "m",
                "production",
                "--reason",
                "canary errors",
            ],
        ),
    ];

    let hooks: Vec<Value> = std::fs::read_to_string(tools.path().join("hooks.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let events: Vec<&str> = hooks.iter().map(|h| h["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "registered",
            "promoted",
            "gate_failed",
            "registered",
            "promoted",
            "rolled_back"
        ]
    );
    assert!(hooks.iter().all(|h| h["signed"] == true), "{hooks:?}");
    assert_eq!(hooks[0]["body"]["text"], "`m` v1 registered from run 1");
    assert_eq!(hooks[0]["body"]["version"], 1);
    assert_eq!(hooks[1]["body"]["text"], "`m` `production` now serves v1");
    assert_eq!(hooks[1]["body"]["environment"], "production");
    assert_eq!(hooks[2]["body"]["text"], "`m` run 2 failed its gates");
    assert!(
        hooks[2]["body"]["details"][0]
            .as_str()
            .unwrap()
            .starts_with("accuracy >= production.accuracy - 0.01: "),
        "{}",
        hooks[2]["body"]
    );
    assert_eq!(
        hooks[5]["body"]["text"],
        "`m` `production` rolled back to v1 (was v2)"
    );
    assert_eq!(hooks[5]["body"]["details"][0], "reason: canary errors");

    let mut mails: Vec<String> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    mails.sort_by_key(|mail| mail.contains("rolled back"));
    assert_eq!(mails.len(), 2, "only the events e-mail asked for");
    assert!(
        mails[0].contains("Subject: [kiln] `m` run 2 failed its gates"),
        "{}",
        mails[0]
    );
    assert!(mails[1].contains("rolled back to v1"), "{}", mails[1]);

    for text in &shown {
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains("TOKEN"), "{text}");
    }
    assert!(
        shown[0].contains(&format!(
            "notified webhook http://127.0.0.1:{hook_port} of `registered`"
        )),
        "{}",
        shown[0]
    );
}
