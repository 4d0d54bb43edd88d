//! Helpers for CLI tests: temporary projects and a `kiln` command with a stable environment.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// A project in a temporary folder.
pub struct TestProject {
    dir: tempfile::TempDir,
}

impl TestProject {
    pub fn new(kiln_yaml: &str) -> TestProject {
        let project = TestProject {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        project.write("kiln.yaml", kiln_yaml);
        project
    }

    pub fn empty() -> TestProject {
        TestProject {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn write(&self, relative: &str, text: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create dirs");
        std::fs::write(path, text).expect("write");
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative))
            .unwrap_or_else(|e| panic!("cannot read `{relative}`: {e}"))
    }

    /// `kiln ARGS` in this project.
    pub fn kiln(&self, args: &[&str]) -> Output {
        kiln_command(self.root())
            .args(args)
            .output()
            .expect("run kiln")
    }
}

/// The Kiln binary with a stable environment: no colour, a shared cache of Python envs, and the
/// test python (with numpy and scikit-learn) for models that declare no environment.
pub fn kiln_command(dir: &Path) -> Command {
    Command::from_std(kiln_process(dir))
}

/// [`kiln_command`] as a `std::process::Command`, for a process the test starts and stops itself.
pub fn kiln_process(dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("kiln"));
    command
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("KILN_CACHE_DIR", shared_cache_dir())
        .env_remove("KILN_PARAMS")
        .env_remove("KILN_DATABASE_URL")
        .env_remove("KILN_STORE_URL");
    if let Some(python) = std::env::var_os("KILN_TEST_PYTHON").filter(|p| !p.is_empty()) {
        command.env("KILN_PYTHON", python);
    }
    command
}

/// One cache for the whole test run, so that Python environments are built once.
pub fn shared_cache_dir() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/kiln-test-cache");
    std::fs::create_dir_all(&target).expect("cache dir");
    target
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The outcome word of each stage in plain progress lines: `a: ran`, `b: cached`, ...
pub fn outcomes(output: &Output) -> Vec<String> {
    stderr(output)
        .lines()
        .filter_map(|line| {
            let rest = line
                .strip_prefix("✓ ")
                .or_else(|| line.strip_prefix("· "))
                .or_else(|| line.strip_prefix("✗ "))
                .or_else(|| line.strip_prefix("- "))?;
            let (id, what) = rest.split_once("  ")?;
            let word = what.split_whitespace().next()?;
            let word = if word == "not" { "not-run" } else { word };
            Some(format!("{}: {word}", id.rsplit('/').next().unwrap_or(id)))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// `kiln ARGS` exits 2 (invalid input) and says `message` on stderr.
pub fn assert_refused(project: &TestProject, args: &[&str], message: &str) {
    let output = project.kiln(args);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{args:?}: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(message),
        "{args:?}: {}",
        stderr(&output)
    );
}

/// Copies the folder `from` into `to`, leaving out every file or folder named in `skip`.
pub fn copy_tree(from: &Path, to: &Path, skip: &[&str]) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if skip.iter().any(|skip| name == *skip) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&target).expect("create dir");
            copy_tree(&entry.path(), &target, skip);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}
