//! Registry credentials: `KILN_REGISTRY_USERNAME` and `KILN_REGISTRY_PASSWORD`, else the
//! registry's entry in the Docker config file (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`, `auths.<host>.auth`: base64 `user:password`), else none. Values
//! never reach a message, a log or `Debug`: only where they came from does.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::Error;

/// Every environment variable pushing reads, declared once.
pub mod env_vars {
    /// The user name to log in to the registry with (with `KILN_REGISTRY_PASSWORD`); it wins over
    /// the Docker config file.
    pub const KILN_REGISTRY_USERNAME: &str = "KILN_REGISTRY_USERNAME";
    /// The password or access token that goes with `KILN_REGISTRY_USERNAME`.
    pub const KILN_REGISTRY_PASSWORD: &str = "KILN_REGISTRY_PASSWORD";
    /// The folder of the Docker config file (`config.json`); unset: `~/.docker`.
    pub const DOCKER_CONFIG: &str = "DOCKER_CONFIG";
}

/// A user name and password (or token) for one registry.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    password: String,
    pub source: CredentialSource,
}

/// Where credentials were found: what an error names instead of their values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    Environment,
    DockerConfig {
        path: PathBuf,
        key: String,
    },
    /// Handed over by the caller.
    Given,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
            source: CredentialSource::Given,
        }
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }

    /// The credentials for `registry` (`host[:port]`) that `env` (an environment) gives:
    /// the Kiln variables, else the Docker config file; `None` when neither has any.
    pub fn lookup(
        registry: &str,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Option<Credentials>, Error> {
        let value = |name| env(name).filter(|value: &OsString| !value.is_empty());
        match (
            value(env_vars::KILN_REGISTRY_USERNAME),
            value(env_vars::KILN_REGISTRY_PASSWORD),
        ) {
            (Some(username), Some(password)) => {
                return Ok(Some(Credentials {
                    username: username.to_string_lossy().into_owned(),
                    password: password.to_string_lossy().into_owned(),
                    source: CredentialSource::Environment,
                }));
            }
            (Some(_), None) => {
                return Err(Error::HalfCredentials {
                    set: env_vars::KILN_REGISTRY_USERNAME,
                    unset: env_vars::KILN_REGISTRY_PASSWORD,
                });
            }
            (None, Some(_)) => {
                return Err(Error::HalfCredentials {
                    set: env_vars::KILN_REGISTRY_PASSWORD,
                    unset: env_vars::KILN_REGISTRY_USERNAME,
                });
            }
            (None, None) => {}
        }
        let path = match value(env_vars::DOCKER_CONFIG) {
            Some(folder) => PathBuf::from(folder).join("config.json"),
            None => match dirs::home_dir() {
                Some(home) => home.join(".docker").join("config.json"),
                None => return Ok(None),
            },
        };
        docker_config_credentials(&path, registry)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Environment => write!(
                f,
                "the credentials of `{}` and `{}`",
                env_vars::KILN_REGISTRY_USERNAME,
                env_vars::KILN_REGISTRY_PASSWORD
            ),
            CredentialSource::DockerConfig { path, key } => write!(
                f,
                "the credentials of `auths.{key}` in `{}`",
                path.display()
            ),
            CredentialSource::Given => f.write_str("the credentials given"),
        }
    }
}

/// The entry of `registry` in a Docker config file; `None` when the file or the entry is absent.
fn docker_config_credentials(path: &Path, registry: &str) -> Result<Option<Credentials>, Error> {
    let bad = |reason: String| Error::DockerConfig {
        path: path.to_owned(),
        reason,
    };
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(bad(error.to_string())),
    };
    let config: serde_json::Value =
        serde_json::from_slice(&text).map_err(|error| bad(format!("not JSON: {error}")))?;
    let Some(auths) = config.get("auths").and_then(|auths| auths.as_object()) else {
        return Ok(None);
    };
    // Keys are written as `host`, `https://host` or `https://host/v1/` by different tools.
    let Some((key, entry)) = auths
        .iter()
        .find(|(key, _)| registry_of_key(key) == registry)
    else {
        return Ok(None);
    };
    let field = |name: &str| entry.get(name).and_then(|value| value.as_str());
    let (username, password) = match field("auth").filter(|auth| !auth.is_empty()) {
        Some(auth) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad(format!("`auths.{key}.auth` is not base64")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| bad(format!("`auths.{key}.auth` is not UTF-8")))?;
            let Some((username, password)) = decoded.split_once(':') else {
                return Err(bad(format!(
                    "`auths.{key}.auth` is not `user:password` in base64"
                )));
            };
            (username.to_owned(), password.to_owned())
        }
        None => match (field("username"), field("password")) {
            (Some(username), Some(password)) => (username.to_owned(), password.to_owned()),
            // An entry without a secret (credentials kept by a helper program, which Kiln does
            // not run).
            _ => return Ok(None),
        },
    };
    Ok(Some(Credentials {
        username,
        password,
        source: CredentialSource::DockerConfig {
            path: path.to_owned(),
            key: key.clone(),
        },
    }))
}

/// `https://host:port/v1/` → `host:port`; Docker Hub's old key names `docker.io`'s registry.
fn registry_of_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        host => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn config_folder(json: &str) -> tempfile::TempDir {
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("config.json"), json).unwrap();
        folder
    }

    #[test]
    fn the_environment_wins_over_the_docker_config() {
        let folder = config_folder(r#"{"auths":{"r.example":{"auth":"ZG9jazpwdw=="}}}"#);
        let dir = folder.path().to_str().unwrap();
        let found = Credentials::lookup(
            "r.example",
            &env(&[
                ("KILN_REGISTRY_USERNAME", "kiln"),
                ("KILN_REGISTRY_PASSWORD", "secret"),
                ("DOCKER_CONFIG", dir),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(found.username, "kiln");
        assert_eq!(found.password(), "secret");
        assert_eq!(found.source, CredentialSource::Environment);
        assert!(!format!("{found:?}").contains("secret"));
    }

    #[test]
    fn docker_config_entries_are_found_by_host_whatever_the_key_form() {
        // "dock:pw"
        for key in [
            "r.example:5000",
            "https://r.example:5000",
            "https://r.example:5000/v1/",
        ] {
            let folder = config_folder(&format!(
                r#"{{"auths":{{"{key}":{{"auth":"ZG9jazpwdw=="}}}}}}"#
            ));
            let dir = folder.path().to_str().unwrap();
            let found = Credentials::lookup("r.example:5000", &env(&[("DOCKER_CONFIG", dir)]))
                .unwrap()
                .unwrap();
            assert_eq!((found.username.as_str(), found.password()), ("dock", "pw"));
            let shown = found.source.to_string();
            assert!(shown.contains(&format!("`auths.{key}`")), "{shown}");
            assert!(!shown.contains("pw"));
        }
        let folder = config_folder(r#"{"auths":{"other.example":{"auth":"ZG9jazpwdw=="}}}"#);
        let dir = folder.path().to_str().unwrap();
        assert!(
            Credentials::lookup("r.example", &env(&[("DOCKER_CONFIG", dir)]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_credentials_are_clear_errors() {
        let half = Credentials::lookup("r.example", &env(&[("KILN_REGISTRY_USERNAME", "kiln")]))
            .unwrap_err();
        assert_eq!(
            half.to_string(),
            "`KILN_REGISTRY_USERNAME` is set but `KILN_REGISTRY_PASSWORD` is not"
        );
        let folder = config_folder(r#"{"auths":{"r.example":{"auth":"not base64!"}}}"#);
        let dir = folder.path().to_str().unwrap();
        let error = Credentials::lookup("r.example", &env(&[("DOCKER_CONFIG", dir)])).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("`auths.r.example.auth` is not base64"),
            "{error}"
        );
        let folder = config_folder("{not json");
        let dir = folder.path().to_str().unwrap();
        let error = Credentials::lookup("r.example", &env(&[("DOCKER_CONFIG", dir)])).unwrap_err();
        assert!(error.to_string().contains("not JSON"), "{error}");
    }
}
