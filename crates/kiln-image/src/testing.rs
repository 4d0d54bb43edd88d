//! The tests' OCI registry: Debian's `docker-registry` (distribution v2) on a free loopback
//! port, its storage in a temporary folder, optionally behind htpasswd (bcrypt, made by the
//! test Python's `bcrypt`), killed by pid when dropped, also when a test fails. Tests never
//! skip: without the program they fail saying how to install it.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry (see the module documentation).
#[derive(Debug)]
pub struct TestRegistry {
    /// `127.0.0.1:PORT`.
    pub address: String,
    child: Child,
    folder: tempfile::TempDir,
}

impl TestRegistry {
    /// A registry that anyone may push to.
    pub fn start() -> TestRegistry {
        TestRegistry::start_with(None)
    }

    /// A registry that takes only `username` with `password` (HTTP Basic, htpasswd).
    pub fn start_with_login(username: &str, password: &str) -> TestRegistry {
        TestRegistry::start_with(Some((username, password)))
    }

    fn start_with(login: Option<(&str, &str)>) -> TestRegistry {
        let folder = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()
            .expect("a temporary folder for the registry");
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let root = folder.path();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n",
            root.join("data").display()
        );
        if let Some((username, password)) = login {
            let htpasswd = root.join("htpasswd");
            std::fs::write(&htpasswd, htpasswd_line(username, password)).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = root.join("config.yml");
        std::fs::write(&config_path, config).expect("write the registry's config");
        let log =
            std::fs::File::create(root.join("registry.log")).expect("create the registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `docker-registry` ({e}): install Debian's `docker-registry` \
                     (`bash .ci/setup`)"
                )
            });
        let mut registry = TestRegistry {
            address,
            child,
            folder,
        };
        registry.wait_until_listening();
        registry
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(&self.address).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "`docker-registry` exited ({status}) before listening:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "`docker-registry` did not listen on {} within 30 s:\n{}",
                    self.address,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the registry wrote, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.folder.path().join("registry.log")).unwrap_or_default()
    }

    /// Its storage folder (`docker/registry/v2/...`).
    pub fn storage(&self) -> &Path {
        self.folder.path()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `user:$2b$...`, hashed by the test Python's `bcrypt` (`KILN_TEST_PYTHON`).
fn htpasswd_line(username: &str, password: &str) -> String {
    let python = std::env::var_os("KILN_TEST_PYTHON").unwrap_or_else(|| {
        panic!("the registry's htpasswd needs `KILN_TEST_PYTHON` (a Python with `bcrypt`)")
    });
    let output = Command::new(&python)
        .args([
            "-c",
            "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(rounds=5)).decode())",
            password,
        ])
        .output()
        .expect("run the test Python");
    assert!(
        output.status.success(),
        "hashing the password failed (is `bcrypt` installed? `bash .ci/setup`): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let hash = String::from_utf8(output.stdout).expect("a UTF-8 hash");
    let mut line = Vec::new();
    writeln!(line, "{username}:{}", hash.trim()).expect("write to memory");
    String::from_utf8(line).expect("UTF-8")
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on loopback")
}
