//! The databases the registry's tests run against: a SQLite file in a temporary folder, or a
//! fresh database (random name, dropped afterwards) on a real PostgreSQL server, so that tests
//! run in parallel. The server is the one `KILN_TEST_DATABASE_URL` names (`.ci/run` starts one
//! with `.ci/services/postgres.sh`); when it is unset, the first test starts a server with the
//! same script, which stops when the test process ends (it holds the script's stdin).
//!
//! Shared by the unit tests (`#[path]` from `src/lib.rs`) and the integration tests: it names
//! only `Location`, which both crate roots have in scope.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::Location;

/// The variable naming a PostgreSQL server the tests may create databases on.
pub const TEST_DATABASE_URL_ENV: &str = "KILN_TEST_DATABASE_URL";

/// One database for one test.
pub struct Backend {
    kind: Kind,
}

enum Kind {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres {
        server: String,
        name: String,
        url: String,
    },
}

impl Backend {
    pub fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("kiln.db");
        Backend {
            kind: Kind::Sqlite { _dir: dir, path },
        }
    }

    /// A new, empty database on the test server.
    pub fn postgres() -> Backend {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let server = server().to_string();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "kiln_test_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = postgres::Client::connect(&server, postgres::NoTls)
            .unwrap_or_else(|error| panic!("cannot reach the test PostgreSQL server: {error}"));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("a test database");
        let url = with_database(&server, &name);
        Backend {
            kind: Kind::Postgres { server, name, url },
        }
    }

    pub fn location(&self) -> Location {
        match &self.kind {
            Kind::Sqlite { path, .. } => Location::Sqlite(path.clone()),
            Kind::Postgres { url, .. } => Location::Postgres(url.clone()),
        }
    }

    /// Runs `sql` on a connection of its own, as something outside Kiln would.
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        match &self.kind {
            Kind::Sqlite { path, .. } => {
                let connection = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
                connection
                    .execute_batch("PRAGMA foreign_keys = ON")
                    .map_err(|e| e.to_string())?;
                connection.execute_batch(sql).map_err(|e| e.to_string())
            }
            Kind::Postgres { url, .. } => {
                let shown = |error: postgres::Error| match error.as_db_error() {
                    Some(db) => db.to_string(),
                    None => error.to_string(),
                };
                let mut client = postgres::Client::connect(url, postgres::NoTls).map_err(shown)?;
                client.batch_execute(sql).map_err(shown)
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Kind::Postgres { server, name, .. } = &self.kind
            && let Ok(mut admin) = postgres::Client::connect(server, postgres::NoTls)
        {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (address, query) = match url.split_once('?') {
        Some((address, query)) => (address, Some(query)),
        None => (url, None),
    };
    let authority_start = address.find("://").map_or(0, |i| i + 3);
    let base = match address[authority_start..].find('/') {
        Some(slash) => &address[..authority_start + slash],
        None => address,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// The URL of the test server: `KILN_TEST_DATABASE_URL`, or a server started for this process.
fn server() -> &'static str {
    static SERVER: OnceLock<String> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var(TEST_DATABASE_URL_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => start_server(),
    })
}

/// Starts `.ci/services/postgres.sh serve` in a temporary folder and keeps its stdin open for
/// as long as this process lives.
fn start_server() -> String {
    static SCRIPT: Mutex<Option<Child>> = Mutex::new(None);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.ci/services/postgres.sh"
    );
    let dir = std::env::temp_dir().join(format!("kiln-test-postgres-{}", std::process::id()));
    let mut child = Command::new("bash")
        .arg(script)
        .arg("serve")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bash runs .ci/services/postgres.sh");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the script's output");
    let url = line.trim().to_string();
    assert!(
        url.starts_with("postgres://"),
        "`.ci/services/postgres.sh serve` started no PostgreSQL server (is the `postgresql` \
         package installed?); set {TEST_DATABASE_URL_ENV} to use a running one"
    );
    *SCRIPT.lock().unwrap() = Some(child);
    url
}
