//! Where a registry's database is: a SQLite file (the default, `.kiln/kiln.db`) or a
//! PostgreSQL database named by URL (`KILN_DATABASE_URL`). A location is shown and debugged
//! without its password.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::Error;

/// The environment variable that points Kiln at a PostgreSQL database:
/// `postgres://USER:PASSWORD@HOST:PORT/DATABASE`. Unset (or empty), the registry is the SQLite
/// file under `.kiln/`.
pub const DATABASE_URL_ENV: &str = "KILN_DATABASE_URL";

/// Where a registry's database is.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file, created when missing.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`) or by
    /// libpq's `key=value` connection string. The database must exist; its tables are created.
    Postgres(String),
}

impl Location {
    /// The PostgreSQL database `KILN_DATABASE_URL` names when it is set and not empty, else
    /// the SQLite file `sqlite`.
    pub fn from_env(sqlite: &Path) -> Location {
        match std::env::var(DATABASE_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => Location::Postgres(url.trim().to_string()),
            _ => Location::Sqlite(sqlite.to_path_buf()),
        }
    }

    /// The connection settings of a PostgreSQL location.
    pub(crate) fn postgres_config(&self) -> Result<postgres::Config, Error> {
        let Location::Postgres(url) = self else {
            unreachable!("only a PostgreSQL location has connection settings");
        };
        let looks_like_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if url.contains("://") && !looks_like_url {
            return Err(Error::BadDatabaseUrl {
                reason: "it must start with `postgres://` or `postgresql://`".to_string(),
            });
        }
        // The parser's messages name the offending part, never the whole text (which may hold
        // a password).
        postgres::Config::from_str(url).map_err(|error| Error::BadDatabaseUrl {
            reason: error.to_string(),
        })
    }
}

/// The server, database and user of `config`, for messages: never the password.
pub(crate) fn describe(config: &postgres::Config) -> String {
    let ports = config.get_ports();
    let servers: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let port = ports.get(index).or(ports.first()).copied().unwrap_or(5432);
            match host {
                postgres::config::Host::Tcp(name) if name.contains(':') => {
                    format!("[{name}]:{port}")
                }
                postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let mut text = if servers.is_empty() {
        "`(no host given)`".to_string()
    } else {
        format!("`{}`", servers.join(","))
    };
    if let Some(database) = config.get_dbname() {
        text.push_str(&format!(" (database `{database}`"));
        if let Some(user) = config.get_user() {
            text.push_str(&format!(", user `{user}`"));
        }
        text.push(')');
    } else if let Some(user) = config.get_user() {
        text.push_str(&format!(" (user `{user}`)"));
    }
    text
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "`{}`", path.display()),
            Location::Postgres(_) => match self.postgres_config() {
                Ok(config) => write!(f, "PostgreSQL {}", describe(&config)),
                Err(_) => f.write_str("PostgreSQL (an unreadable URL)"),
            },
        }
    }
}

/// As `Display`: a derived `Debug` would print the password of a URL.
impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Location::Postgres(_) => f.debug_tuple("Postgres").field(&self.to_string()).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_never_shows_its_password() {
        let location = Location::Postgres("postgres://kiln:s3cret@db.example:5433/registry".into());
        assert_eq!(
            location.to_string(),
            "PostgreSQL `db.example:5433` (database `registry`, user `kiln`)"
        );
        assert!(!format!("{location:?}").contains("s3cret"));
        let bad = Location::Postgres("mysql://kiln:s3cret@db/x".into());
        let error = bad.postgres_config().unwrap_err();
        assert!(matches!(error, Error::BadDatabaseUrl { .. }), "{error}");
        assert!(!error.to_string().contains("s3cret"));
        let bad = Location::Postgres("postgres://kiln:s3cret@db:notaport/x".into());
        let error = bad.postgres_config().unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }
}
