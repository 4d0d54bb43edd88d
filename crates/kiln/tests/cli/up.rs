//! `kiln up` end to end, on a temporary git repository: staging serves the head commit; a commit
//! changing a param brings v2 to staging while a client keeps sending requests (none fails);
//! `kiln promote` takes it to production; a SIGKILLed serving process is back on the same
//! version; a version whose `predict.py` crashes on load is rolled back; and people hear of it
//! through a real webhook receiver (checking signatures) and a real SMTP server (aiosmtpd).
//! Also `kiln up --once`, `kiln deploy|ps` without a running `kiln up`, and bad input.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{TestProject, kiln_process, stderr, stdout};
use crate::notify::{SECRET, start_receiver, start_smtp};
use crate::serve::{free_port, test_python};

/// Writes `model/predict.py` (an adder with the params' offset) and `metrics.json`. With
/// `crash: true` in the params, the model refuses to load in a served environment (it passes
/// the pipeline's servable check, and fails in `kiln up`'s rollout); with `die_after: N`, it
/// kills its server N seconds after loading, when served.
const BUILD: &str = r#"import json, os, re
params = open("params.yaml").read()
offset = int(re.search(r"offset:\s*(-?\d+)", params).group(1))
guard = ""
if "crash: true" in params:
    guard = ('import os\nif os.environ.get("KILN_ENVIRONMENT"):\n'
             '    raise RuntimeError("cannot load: the feature store is unreachable")\n')
dies = re.search(r"die_after:\s*(\d+)", params)
if dies:
    # Served, it takes its server down a few seconds after loading: a crash loop.
    guard = ('import os, threading, time\nif os.environ.get("KILN_ENVIRONMENT"):\n'
             f'    threading.Thread(target=lambda: (time.sleep({dies.group(1)}), '
             'os.kill(os.getppid(), 9)), daemon=True).start()\n')
os.makedirs("model", exist_ok=True)
with open("model/predict.py", "w") as out:
    out.write(guard + f'''SIGNATURE = {{
    "inputs": [{{"name": "a", "datatype": "FP64", "shape": [-1]}},
               {{"name": "b", "datatype": "FP64", "shape": [-1]}}],
    "outputs": [{{"name": "sum", "datatype": "FP64", "shape": [-1]}}],
}}

def predict(inputs):
    return {{"sum": inputs["a"] + inputs["b"] + {offset}}}
''')
with open("metrics.json", "w") as out:
    json.dump({"accuracy": 0.9}, out)
"#;

fn kiln_yaml(staging: u16, production: u16, notify: &str) -> String {
    format!(
        "models:\n  m:\n    params: params.yaml\n    stages:\n      package: {{cmd: python build.py, deps: [build.py], params: [train], outs: [model], metrics: [metrics.json]}}\n    artifact: model\n    example: example.csv\n    deploy:\n      staging: {{port: {staging}}}\n      production: {{approve: manual, port: {production}}}\n{notify}"
    )
}

fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Kiln Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Kiln Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {}", stderr(&output));
}

/// A git repository holding the project, first commit made.
fn repository(kiln_yaml: &str) -> TestProject {
    let project = TestProject::new(kiln_yaml);
    project.write("build.py", BUILD);
    project.write("params.yaml", "train:\n  offset: 0\n");
    project.write("example.csv", "a,b\n1,2\n");
    project.write(".gitignore", "model/\nmetrics.json\n");
    git(project.root(), &["init", "-q", "-b", "main"]);
    commit(&project, "first model");
    project
}

fn commit(project: &TestProject, message: &str) {
    git(project.root(), &["add", "-A"]);
    git(project.root(), &["commit", "-q", "-m", message]);
}

/// `kill -SIGNAL PID`: true when the signal was delivered (`-0`: the process exists).
fn signal(signal: &str, pid: &str) -> bool {
    Command::new("kill")
        .args([signal, pid])
        .status()
        .unwrap()
        .success()
}

/// A running `kiln up`: its stderr lines, collected as they come; killed when dropped.
struct Up {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Up {
    fn start(project: &TestProject, args: &[&str]) -> Up {
        let mut child = kiln_process(project.root())
            .arg("up")
            .args(args)
            .env("KILN_PYTHON", test_python())
            .env("KILN_TEST_HOOK_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = BufReader::new(child.stderr.take().unwrap());
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in reader.lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Up { child, lines }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a line containing `text` after the first `after` lines; returns its index.
    fn wait_for(&mut self, text: &str, after: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(index) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .skip(after)
                .position(|line| line.contains(text))
            {
                return after + index;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "kiln up exited ({status}) before `{text}`:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no `{text}` within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn interrupt(&mut self) -> std::process::ExitStatus {
        assert!(signal("-INT", &self.child.id().to_string()));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kiln up did not stop:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum the environment on `port` answers for a=1, b=2.
fn predict(client: &reqwest::blocking::Client, port: u16) -> Result<f64, String> {
    let body = json!({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}});
    let response = client
        .post(format!("http://127.0.0.1:{port}/invocations"))
        .json(&body)
        .send()
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.text().map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {text}"));
    }
    let value: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    value["predictions"][0]["sum"]
        .as_f64()
        .or_else(|| value["predictions"][0].as_f64())
        .ok_or_else(|| format!("unexpected answer {text}"))
}

fn ps(project: &TestProject) -> Value {
    let output = project.kiln(&["ps", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

fn deployment<'a>(ps: &'a Value, environment: &str) -> &'a Value {
    ps["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["environment"] == environment)
        .unwrap_or_else(|| panic!("no `{environment}` in {ps}"))
}

#[test]
fn kiln_up_delivers_commits_supervises_and_rolls_back() {
    let tools = tempfile::tempdir().unwrap();
    let (_receiver, hook_port) = start_receiver(tools.path());
    let maildir = tools.path().join("mail");
    let (_smtp, smtp_port) = start_smtp(&maildir);
    let (staging, production) = (free_port(), free_port());
    let notify = format!(
        "notify:\n  webhooks:\n    - url: http://127.0.0.1:{hook_port}/hook\n      secret_env: KILN_TEST_HOOK_SECRET\n  email:\n    server: 127.0.0.1:{smtp_port}\n    security: none\n    from: kiln@example.com\n    to: [ml-team@example.com]\n    on: [crashed, rolled_back]\n"
    );
    let project = repository(&kiln_yaml(staging, production, &notify));
    let mut up = Up::start(&project, &["--poll", "200ms"]);
    let minute = Duration::from_secs(60);

    // The head commit: run, registered, on staging; production waits for approval.
    up.wait_for("`m` v1 serves `staging`", 0, minute);
    up.wait_for(
        "waits for approval: kiln promote m --to production",
        0,
        minute,
    );
    let client = reqwest::blocking::Client::new();
    assert_eq!(predict(&client, staging), Ok(3.0));
    assert_eq!(
        std::process::Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=all"])
            .current_dir(project.root())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap(),
        "",
        "the run must not touch the user's working tree"
    );

    // A commit changing a param: v2 replaces v1 on staging under load, and no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failures) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let seen = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, answered, failures, seen) = (
                stop.clone(),
                answered.clone(),
                failures.clone(),
                seen.clone(),
            );
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                while !stop.load(Ordering::SeqCst) {
                    match predict(&client, staging) {
                        Ok(sum) => {
                            answered.fetch_add(1, Ordering::SeqCst);
                            seen.lock().unwrap().insert(sum as i64);
                        }
                        Err(error) => failures.lock().unwrap().push(error),
                    }
                }
            })
        })
        .collect();
    let mark = up.line_count();
    project.write("params.yaml", "train:\n  offset: 10\n");
    commit(&project, "offset 10");
    up.wait_for("commit ", mark, minute);
    up.wait_for("`m` v2 serves `staging`", mark, minute);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(
        *failures.lock().unwrap(),
        Vec::<String>::new(),
        "requests failed during the rollout"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [3, 13].into(),
        "both versions answered"
    );
    assert!(answered.load(Ordering::SeqCst) > 20);

    // Promotion to production, by hand (`approve: manual`), waits for the rollout.
    let promoted = crate::common::kiln_command(project.root())
        .env("KILN_TEST_HOOK_SECRET", SECRET)
        .args(["promote", "m", "--to", "production"])
        .output()
        .unwrap();
    assert_eq!(promoted.status.code(), Some(0), "{}", stderr(&promoted));
    assert!(
        stderr(&promoted).contains(&format!(
            "`m` v2 serves `production` at http://127.0.0.1:{production}"
        )),
        "{}",
        stderr(&promoted)
    );
    assert_eq!(predict(&client, production), Ok(13.0));

    // `kiln ps`: both environments, their processes, healthy.
    let listed = ps(&project);
    assert_eq!(listed["supervisor_running"], true);
    let on_staging = deployment(&listed, "staging");
    assert_eq!(on_staging["version"], 2);
    assert_eq!(on_staging["port"], staging);
    assert_eq!(on_staging["health"], "ready");
    assert_eq!(on_staging["restarts"], 0);
    assert_eq!(deployment(&listed, "production")["version"], 2);

    // SIGKILL the staging process: it is back on the same version, and requests wait for it.
    let pid = on_staging["pid"].as_u64().unwrap().to_string();
    let mark = up.line_count();
    let killed = Instant::now();
    assert!(signal("-KILL", &pid));
    assert_eq!(
        predict(&client, staging),
        Ok(13.0),
        "a request during the restart waits for it"
    );
    let back = killed.elapsed();
    up.wait_for("`m` v2 in `staging` is back", mark, minute);
    let listed = ps(&project);
    let on_staging = deployment(&listed, "staging");
    assert_eq!(
        (
            on_staging["version"].as_i64(),
            on_staging["restarts"].as_i64()
        ),
        (Some(2), Some(1))
    );
    assert_ne!(on_staging["pid"].as_u64().unwrap().to_string(), pid);
    // The figure is measured by bench/deliver; here only the order of magnitude.
    assert!(back < Duration::from_secs(10), "took {back:?}");

    // A process that stops answering (SIGSTOP) is killed after three missed health checks,
    // and restarted on the same version.
    let pid = on_staging["pid"].as_u64().unwrap().to_string();
    let mark = up.line_count();
    assert!(signal("-STOP", &pid));
    up.wait_for("missed 3 health checks in a row", mark, minute);
    up.wait_for("`m` v2 in `staging` is back", mark, minute);
    let listed = ps(&project);
    let on_staging = deployment(&listed, "staging");
    assert_eq!(
        (
            on_staging["version"].as_i64(),
            on_staging["restarts"].as_i64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(predict(&client, staging), Ok(13.0));

    // A version that crashes on load is rolled back; staging keeps serving v2 throughout.
    let mark = up.line_count();
    project.write("params.yaml", "train:\n  offset: 20\n  crash: true\n");
    commit(&project, "a model that cannot load when served");
    up.wait_for("registered `m` v3", mark, minute);
    up.wait_for("`m@staging` is back on v2", mark, minute);
    let output = up.output();
    assert!(
        output.contains("the feature store is unreachable"),
        "{output}"
    );
    assert_eq!(predict(&client, staging), Ok(13.0));
    let history = project.kiln(&["models", "history", "m", "--alias", "staging", "--json"]);
    let history: Value = serde_json::from_str(&stdout(&history)).unwrap();
    let commands: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["command"].as_str().unwrap())
        .collect();
    assert_eq!(
        commands,
        ["deploy", "deploy", "deploy", "rollback"],
        "{history}"
    );

    // Ctrl-C stops the watcher and the servers.
    let status = up.interrupt();
    assert!(status.success(), "{status}\n{}", up.output());
    assert!(
        client
            .get(format!("http://127.0.0.1:{staging}/ping"))
            .send()
            .is_err()
    );
    assert_eq!(ps(&project)["supervisor_running"], false);

    // What people heard.
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let hooks: Vec<Value> = std::fs::read_to_string(tools.path().join("hooks.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert!(hooks.iter().all(|h| h["signed"] == true), "{hooks:?}");
        let events: Vec<String> = hooks
            .iter()
            .map(|h| {
                format!(
                    "{} {}",
                    h["event"].as_str().unwrap(),
                    h["body"]["text"].as_str().unwrap()
                )
            })
            .collect();
        if events.iter().any(|e| e.starts_with("rolled_back")) || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let has = |prefix: &str| events.iter().any(|e| e.starts_with(prefix));
    assert!(has("registered `m` v1"), "{events:#?}");
    assert!(
        has(&format!(
            "deployed `m` v1 serves `staging` at http://127.0.0.1:{staging}"
        )),
        "{events:#?}"
    );
    assert!(has("deployed `m` v2 serves `staging`"), "{events:#?}");
    assert!(
        has("promoted `m` `production` now serves v2"),
        "{events:#?}"
    );
    assert!(has("deployed `m` v2 serves `production`"), "{events:#?}");
    assert!(has("crashed `m` v2 crashed in `staging`"), "{events:#?}");
    assert!(
        has("rolled_back `m` v3 failed its rollout to `staging`: rolled back to v2"),
        "{events:#?}"
    );
    let mails: Vec<String> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        mails.iter().any(|m| m.contains("crashed in `staging`")),
        "{mails:#?}"
    );
    assert!(
        mails.iter().any(|m| m.contains("rolled back to v2")),
        "{mails:#?}"
    );
}

#[test]
fn kiln_up_once_serves_one_prediction_and_stops() {
    let (staging, production) = (free_port(), free_port());
    let project = repository(&kiln_yaml(staging, production, ""));
    let output = kiln_process(project.root())
        .args(["up", "--once"])
        .env("KILN_PYTHON", test_python())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("`m` v1 serves `staging`"), "{text}");
    assert!(
        text.contains(&format!(
            "curl -s http://127.0.0.1:{staging}/invocations -H 'Content-Type: application/json' -d '"
        )),
        "{text}"
    );
    assert!(text.contains("answered a prediction"), "{text}");
    // Everything it started is stopped.
    assert!(std::net::TcpStream::connect(("127.0.0.1", staging)).is_err());
    // Without a running `kiln up`, a deploy is recorded for the next one, and `ps` says so.
    let deployed = project.kiln(&["deploy", "m@v1", "--env", "production", "--json"]);
    assert_eq!(deployed.status.code(), Some(0), "{}", stderr(&deployed));
    let report: Value = serde_json::from_str(&stdout(&deployed)).unwrap();
    assert_eq!(report["outcome"], "recorded");
    let listed = ps(&project);
    assert_eq!(listed["supervisor_running"], false);
    assert_eq!(deployment(&listed, "production")["health"], "stopped");

    // The next `kiln up` starts what the aliases name before it looks at the branch: staging
    // as before, and production as recorded.
    let mut up = Up::start(&project, &[]);
    let minute = Duration::from_secs(60);
    let production_up = up.wait_for("`m` v1 serves `production`", 0, minute);
    let head_seen = up.wait_for("commit ", 0, minute);
    assert!(production_up < head_seen, "{}", up.output());
    assert_eq!(
        predict(&reqwest::blocking::Client::new(), production),
        Ok(3.0)
    );
    assert!(up.interrupt().success());
}

#[test]
fn deploy_commands_refuse_what_does_not_exist() {
    let (staging, production) = (free_port(), free_port());
    let project = repository(&kiln_yaml(staging, production, ""));
    let cases: [(&[&str], &str); 4] = [
        (
            &["deploy", "m@v1", "--env", "canary"],
            "`m` has no environment `canary` (its environments: `staging`, `production`)",
        ),
        (&["deploy", "nope@v1"], "there is no model `nope`"),
        (
            &["promote", "m", "--to", "staging"],
            "`staging` is the first environment of `m`",
        ),
        (&["up", "--poll", "30"], "has no unit: write `30s`"),
    ];
    for (args, message) in cases {
        crate::common::assert_refused(&project, args, message);
    }
}

#[test]
fn a_version_that_crash_loops_after_its_rollout_is_rolled_back() {
    let (staging, production) = (free_port(), free_port());
    let project = repository(&kiln_yaml(staging, production, ""));
    let mut up = Up::start(&project, &["--poll", "200ms"]);
    let minute = Duration::from_secs(60);
    up.wait_for("`m` v1 serves `staging`", 0, minute);

    // v2 passes its smoke test, then takes its server down every few seconds.
    let mark = up.line_count();
    project.write("params.yaml", "train:\n  offset: 10\n  die_after: 3\n");
    commit(&project, "a model that dies when served");
    up.wait_for("`m` v2 serves `staging`", mark, minute);
    let rolled = up.wait_for("rolled `m@staging` back from v2 to v1", mark, minute);
    assert!(
        up.output()
            .contains("crashed 3 times within a minute of its rollout")
    );
    up.wait_for("`m` v1 serves `staging`", rolled, minute);
    assert_eq!(predict(&reqwest::blocking::Client::new(), staging), Ok(3.0));
    let history = project.kiln(&["models", "history", "m", "--alias", "staging", "--json"]);
    let history: Value = serde_json::from_str(&stdout(&history)).unwrap();
    let last = history.as_array().unwrap().last().unwrap();
    assert_eq!(
        (last["command"].as_str(), last["to_version"].as_i64()),
        (Some("rollback"), Some(1))
    );

    // A SIGKILLed `kiln up` leaves no serving process behind: their stdin closes with it.
    let pid = deployment(&ps(&project), "staging")["pid"]
        .as_u64()
        .unwrap()
        .to_string();
    assert!(signal("-KILL", &up.child.id().to_string()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while signal("-0", &pid) {
        assert!(
            Instant::now() < deadline,
            "serving process {pid} outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn approve_auto_promotes_new_versions_but_not_one_rolled_back() {
    let (staging, production) = (free_port(), free_port());
    let project =
        repository(&kiln_yaml(staging, production, "").replace("approve: manual", "approve: auto"));
    let mut up = Up::start(&project, &["--poll", "200ms"]);
    let minute = Duration::from_secs(60);
    up.wait_for("promoted `m` v1 from `staging` to `production`", 0, minute);
    up.wait_for("`m` v1 serves `production`", 0, minute);
    let mark = up.line_count();
    project.write("params.yaml", "train:\n  offset: 10\n");
    commit(&project, "offset 10");
    up.wait_for("`m` v2 serves `production`", mark, minute);

    // Rolled back by hand, production stays on v1 although staging serves v2.
    let rolled = project.kiln(&[
        "rollback",
        "m",
        "--env",
        "production",
        "--reason",
        "latency",
    ]);
    assert_eq!(rolled.status.code(), Some(0), "{}", stderr(&rolled));
    let client = reqwest::blocking::Client::new();
    assert_eq!(predict(&client, production), Ok(3.0));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(predict(&client, production), Ok(3.0), "{}", up.output());
    assert_eq!(predict(&client, staging), Ok(13.0));
    assert!(
        up.output()
            .contains("`production` waits for approval: kiln promote m --to production")
    );
    assert!(up.interrupt().success());
}
