//! `kiln registry serve` as a process over a project's registry filled by real runs: the URL
//! line, reads, an alias moved with the token (and the serving link following it), SIGTERM.
//! (The routes and their errors are tested in kiln-api.)

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::common::{TestProject, kiln_command, stderr};
use crate::models::{green, json_of, project};

/// A child process killed (by its pid) when dropped, also when a test fails.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `kiln registry serve` on a free port with `token`; returns the guard and the base URL.
fn serve(dir: &Path, token: Option<&str>) -> (ChildGuard, String) {
    serve_with(dir, token, &[])
}

/// [`serve`] with more environment variables.
fn serve_with(dir: &Path, token: Option<&str>, env: &[(&str, &str)]) -> (ChildGuard, String) {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin("kiln"));
    command
        .args(["registry", "serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("KILN_REGISTRY_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("KILN_REGISTRY_TOKEN", token);
    }
    command.envs(env.iter().copied());
    let mut guard = ChildGuard(command.spawn().unwrap());
    let stderr = guard.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some((_, rest)) = line.split_once("listening on ") {
            let url = rest.split_whitespace().next().unwrap().to_string();
            std::thread::spawn(move || for _ in lines {});
            return (guard, url);
        }
        seen.push(line);
    }
    panic!(
        "the registry API exited before listening:\n{}",
        seen.join("\n")
    );
}

fn terminate(guard: &mut ChildGuard) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    guard.0.wait().unwrap()
}

#[test]
fn kiln_registry_serve_reads_the_registry_and_moves_an_alias_with_the_token() {
    let project = project();
    green(&project, 0.9);
    green(&project, 0.92);
    let (mut server, url) = serve(project.root(), Some("s3cret"));

    let models: Value = reqwest::blocking::get(format!("{url}/v1/models"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        models,
        json!({"models": [{"model": "m", "versions": 2, "latest_version": 2, "aliases": {"latest": 2}}]})
    );
    let v1: Value = reqwest::blocking::get(format!("{url}/v1/models/m/versions/1"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v1["lineage"]["metrics"], json!({"accuracy": 0.9}));
    assert_eq!(
        v1,
        json_of(&project, &["models", "show", "m@v1", "--json"]),
        "the API and `kiln models show` agree"
    );

    let client = reqwest::blocking::Client::new();
    let moved = client
        .put(format!("{url}/v1/models/m/aliases/production"))
        .bearer_auth("s3cret")
        .json(&json!({"version": 1, "reason": "first release"}))
        .send()
        .unwrap();
    assert_eq!(moved.status().as_u16(), 200);
    let moved: Value = moved.json().unwrap();
    assert_eq!(
        moved,
        json!({"model": "m", "alias": "production", "from_version": null, "to_version": 1})
    );
    // The serving link follows, as with `kiln models alias`.
    assert_eq!(
        project.read(".kiln/serving/m@production/model/score.json"),
        "{\"accuracy\": 0.9}"
    );
    let refused = client
        .put(format!("{url}/v1/models/m/aliases/production"))
        .json(&json!({"version": 2}))
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    let history = json_of(
        &project,
        &["models", "history", "m", "--alias", "production", "--json"],
    );
    assert_eq!(history[0]["command"], json!("alias"));
    assert_eq!(history[0]["reason"], json!("first release"));
    assert_eq!(history.as_array().unwrap().len(), 1);

    assert!(terminate(&mut server).success());
}

#[test]
fn an_alias_moved_through_the_api_notifies_as_kiln_models_alias_does() {
    let project = project();
    green(&project, 0.9);
    let tools = tempfile::tempdir().unwrap();
    let (_receiver, hook_port) = crate::notify::start_receiver(tools.path());
    let kiln_yaml = project.read("kiln.yaml");
    project.write(
        "kiln.yaml",
        &format!(
            "{kiln_yaml}notify:\n  webhooks:\n    - url: http://127.0.0.1:{hook_port}/hooks\n      secret_env: KILN_TEST_HOOK_SECRET\n"
        ),
    );
    let (mut server, url) = serve_with(
        project.root(),
        Some("s3cret"),
        &[("KILN_TEST_HOOK_SECRET", crate::notify::SECRET)],
    );
    let moved = reqwest::blocking::Client::new()
        .put(format!("{url}/v1/models/m/aliases/production"))
        .bearer_auth("s3cret")
        .json(&json!({"version": 1, "reason": "first release"}))
        .send()
        .unwrap();
    assert_eq!(moved.status().as_u16(), 200);
    let hooks = tools.path().join("hooks.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let hook: Value = loop {
        if let Ok(text) = std::fs::read_to_string(&hooks)
            && let Some(line) = text.lines().next()
        {
            break serde_json::from_str(line).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no notification arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(hook["event"], json!("promoted"));
    assert_eq!(hook["signed"], json!(true));
    assert_eq!(
        hook["body"]["text"],
        json!("`m` `production` now serves v1")
    );
    assert_eq!(hook["body"]["details"][0], json!("reason: first release"));
    assert!(terminate(&mut server).success());
}

#[test]
fn kiln_registry_serve_refuses_a_folder_without_a_registry() {
    let empty = TestProject::empty();
    let output = kiln_command(empty.root())
        .args(["registry", "serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("holds no registry (no `.kiln` folder)"),
        "{}",
        stderr(&output)
    );
    assert!(!empty.path(".kiln").exists(), "nothing is created");
}
