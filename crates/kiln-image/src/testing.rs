//! The tests' OCI registry: Debian's `docker-registry` (distribution v2) on a free loopback
//! port, its storage in a temporary folder, optionally behind a login: htpasswd (HTTP Basic;
//! bcrypt, made by the test Python's `bcrypt`) or a token service (Bearer: `token_server.py`,
//! run by the test Python, as Docker Hub's auth service does it). Every process is killed by
//! pid when the registry is dropped, also when a test fails. Tests never skip: without the
//! programs they fail saying how to install them.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry (see the module documentation).
#[derive(Debug)]
pub struct TestRegistry {
    /// `127.0.0.1:PORT`.
    pub address: String,
    child: Child,
    token_service: Option<Child>,
    folder: tempfile::TempDir,
}

/// How the registry asks for a login.
enum Login<'a> {
    None,
    Basic(&'a str, &'a str),
    Token(&'a str, &'a str),
}

impl TestRegistry {
    /// A registry that anyone may push to.
    pub fn start() -> TestRegistry {
        TestRegistry::start_with(Login::None)
    }

    /// A registry that takes only `username` with `password` (HTTP Basic, htpasswd).
    pub fn start_with_login(username: &str, password: &str) -> TestRegistry {
        TestRegistry::start_with(Login::Basic(username, password))
    }

    /// A registry that takes only Bearer tokens, which its token service gives `username` with
    /// `password`.
    pub fn start_with_token_service(username: &str, password: &str) -> TestRegistry {
        TestRegistry::start_with(Login::Token(username, password))
    }

    fn start_with(login: Login<'_>) -> TestRegistry {
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
        let mut token_service = None;
        match login {
            Login::None => {}
            Login::Basic(username, password) => {
                let htpasswd = root.join("htpasswd");
                std::fs::write(&htpasswd, htpasswd_line(username, password))
                    .expect("write htpasswd");
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            Login::Token(username, password) => {
                let (child, realm, certificate) = start_token_service(root, username, password);
                token_service = Some(child);
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: kiln-test-registry\n    issuer: kiln-test-token\n    rootcertbundle: {}\n",
                    certificate.display()
                ));
            }
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
            token_service,
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
        for child in std::iter::once(&mut self.child).chain(self.token_service.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `token_server.py` on a free port; returns it, its realm URL and the certificate its
/// tokens are signed with, once it listens.
fn start_token_service(root: &Path, username: &str, password: &str) -> (Child, String, PathBuf) {
    let script = root.join("token_server.py");
    std::fs::write(&script, include_str!("testing/token_server.py"))
        .expect("write the token service");
    let certificate = root.join("token.pem");
    let port = free_port();
    let mut child = Command::new(test_python())
        .arg(&script)
        .arg(port.to_string())
        .arg(&certificate)
        .args([username, password])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the token service with the test Python");
    let mut ready = String::new();
    let read = std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("its stdout")),
        &mut ready,
    );
    if read.is_err() || ready.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the token service did not start (it needs `cryptography` in the test Python)");
    }
    (child, format!("http://127.0.0.1:{port}/token"), certificate)
}

fn test_python() -> std::ffi::OsString {
    std::env::var_os("KILN_TEST_PYTHON").unwrap_or_else(|| {
        panic!("the registry's login needs `KILN_TEST_PYTHON` (a Python with `bcrypt` and `cryptography`)")
    })
}

/// `user:$2b$...`, hashed by the test Python's `bcrypt` (`KILN_TEST_PYTHON`).
fn htpasswd_line(username: &str, password: &str) -> String {
    let output = Command::new(test_python())
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
