//! Builds real virtualenvs with the real installers (needs `python3`, and PyPI or a local index).

use std::path::Path;
use std::process::Command;

use kiln_pipeline::python_env::{
    BuildProgress, COMPLETE_MARKER, EnvOptions, INSTALL_LOG, InstallerChoice, PythonEnvError,
    PythonEnvironment, ensure_env, ensure_env_with_progress,
};

fn options(cache_root: &Path, installer: InstallerChoice) -> EnvOptions {
    EnvOptions {
        cache_root: cache_root.to_path_buf(),
        python: "python3".into(),
        installer,
    }
}

/// Runs `code` with the environment's interpreter the way a stage would: found on `PATH`.
fn python_in(env: &PythonEnvironment, code: &str) -> String {
    let mut command = Command::new("python");
    command
        .args(["-c", code])
        .current_dir(env.root.parent().unwrap());
    env.apply(&mut command).unwrap();
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn builds_once_then_reuses_even_under_concurrency() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let requirements = work.path().join("requirements.txt");
    std::fs::write(&requirements, "six\n").unwrap();
    let options = options(&cache, InstallerChoice::Auto);

    let mut progress = Vec::new();
    let env = ensure_env(&requirements, &options, &mut |line| {
        progress.push(line.to_string())
    })
    .unwrap();
    assert!(env.built);
    assert!(env.root.starts_with(cache.join("envs")));
    assert!(env.root.join(COMPLETE_MARKER).is_file());
    assert!(env.root.join(INSTALL_LOG).is_file());
    assert!(!progress.is_empty());
    // `python` on PATH is the environment's, and it has the package.
    let six_file = python_in(
        &env,
        "import six, sys; print(six.__file__); print(sys.prefix)",
    );
    assert!(
        six_file.starts_with(env.root.to_str().unwrap()),
        "{six_file}"
    );

    // Second call: same environment, nothing rebuilt, nothing reported.
    let mut progress = Vec::new();
    let again = ensure_env(&requirements, &options, &mut |line| {
        progress.push(line.to_string())
    })
    .unwrap();
    assert!(!again.built);
    assert_eq!(again.root, env.root);
    assert_eq!(again.key, env.key);
    assert!(progress.is_empty(), "{progress:?}");

    // New requirements content, two callers at once: both get it, exactly one builds it.
    std::fs::write(&requirements, "six\n# a second environment\n").unwrap();
    let results: Vec<PythonEnvironment> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| ensure_env(&requirements, &options, &mut |_| {}).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_ne!(results[0].root, env.root);
    assert_eq!(results[0].root, results[1].root);
    assert_eq!(results.iter().filter(|env| env.built).count(), 1);
    python_in(&results[0], "import six");
}

#[test]
fn pip_fallback_builds_a_working_env() {
    let work = tempfile::tempdir().unwrap();
    let requirements = work.path().join("requirements.txt");
    std::fs::write(&requirements, "six\n").unwrap();
    let env = ensure_env(
        &requirements,
        &options(&work.path().join("cache"), InstallerChoice::Pip),
        &mut |_| {},
    )
    .unwrap();
    assert!(env.built);
    python_in(&env, "import six");
}

#[test]
fn failed_install_names_the_file_the_installer_and_the_log() {
    let work = tempfile::tempdir().unwrap();
    let requirements = work.path().join("requirements.txt");
    // A local path that does not exist fails fast and needs no network.
    std::fs::write(&requirements, "./no-such-package-dir\n").unwrap();
    let cache = work.path().join("cache");
    let (mut steps, mut output) = (Vec::new(), Vec::new());
    let error = ensure_env_with_progress(
        &requirements,
        &options(&cache, InstallerChoice::Auto),
        &mut |progress| match progress {
            BuildProgress::Step(step) => steps.push(step.to_string()),
            BuildProgress::Output(line) => output.push(line.to_string()),
        },
    )
    .unwrap_err();
    let PythonEnvError::InstallFailed { log, tail, .. } = &error else {
        panic!("expected an install failure, got {error:?}");
    };
    // The first step says where the installer's output goes; its lines arrive as it prints.
    assert!(
        steps[0].contains(&format!("(installer log: `{}`)", log.display())),
        "{steps:?}"
    );
    assert!(
        output
            .iter()
            .any(|line| line.contains("no-such-package-dir")),
        "{output:?}"
    );
    assert!(
        output
            .iter()
            .all(|line| !line.is_empty() && !line.contains('\n'))
    );
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "installing requirements for `{}` with ",
            requirements.display()
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!("`{}`", log.display())),
        "{message}"
    );
    assert!(tail.contains("no-such-package-dir"), "{tail}");
    // Not marked complete, so the next run starts over instead of using a broken env.
    assert!(!log.parent().unwrap().join(COMPLETE_MARKER).exists());
}
