//! Which blob backend a project uses, from the environment: the filesystem store under
//! `.kiln/store` always (it is the working cache stages read and write), and an S3-compatible
//! store when `KILN_STORE_URL=s3://BUCKET/PREFIX` is set, with endpoint, region and credentials
//! from the usual AWS variables.

use std::ffi::OsString;

use crate::Error;

/// Every environment variable the store reads, declared once.
pub mod env_vars {
    /// The remote store, `s3://BUCKET[/PREFIX]`; unset or empty: the filesystem store alone.
    pub const KILN_STORE_URL: &str = "KILN_STORE_URL";
    /// The S3 endpoint (`http://127.0.0.1:9000`); unset: AWS's own for the region.
    pub const AWS_ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
    /// The region; `AWS_DEFAULT_REGION` is read when it is unset, then `us-east-1`.
    pub const AWS_REGION: &str = "AWS_REGION";
    pub const AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
    pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
    /// `true` allows a plain-HTTP endpoint that is not on loopback (loopback always may be).
    pub const AWS_ALLOW_HTTP: &str = "AWS_ALLOW_HTTP";
}

/// Where an S3-compatible store is and how to reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Keys start with it (no leading or trailing `/`); may be empty.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Config {
    // Credentials stay out of logs and error reports.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// The configuration in the process environment; `None` when `KILN_STORE_URL` is unset.
    pub fn from_env() -> Result<Option<S3Config>, Error> {
        S3Config::from_lookup(|name| std::env::var_os(name))
    }

    /// The configuration that `lookup` (an environment) gives.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Option<S3Config>, Error> {
        use env_vars::*;
        let text = |name: &str| -> Result<Option<String>, Error> {
            match lookup(name) {
                None => Ok(None),
                Some(value) if value.is_empty() => Ok(None),
                Some(value) => value.into_string().map(Some).map_err(|_| Error::Config {
                    message: format!("`{name}` is not valid UTF-8"),
                }),
            }
        };
        let Some(url) = text(KILN_STORE_URL)? else {
            return Ok(None);
        };
        let config_error = |message: String| Error::Config { message };
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            config_error(format!(
                "`{KILN_STORE_URL}` is `{url}`, which is not an `s3://BUCKET/PREFIX` URL"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(config_error(format!(
                "`{bucket}` in `{KILN_STORE_URL}` is not an S3 bucket name (3 to 63 lowercase letters, digits, `-` or `.`)"
            )));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix
            .split('/')
            .any(|part| part == "." || part == ".." || (part.is_empty() && !prefix.is_empty()))
        {
            return Err(config_error(format!(
                "the prefix `{prefix}` in `{KILN_STORE_URL}` has an empty, `.` or `..` component"
            )));
        }
        let endpoint = text(AWS_ENDPOINT_URL)?.map(|e| e.trim_end_matches('/').to_string());
        let allow_http = match &endpoint {
            Some(endpoint) if endpoint.starts_with("http://") => {
                let allowed = text(AWS_ALLOW_HTTP)?.is_some_and(|v| v == "true" || v == "1");
                if !allowed && !is_loopback(endpoint) {
                    return Err(config_error(format!(
                        "`{AWS_ENDPOINT_URL}` is `{endpoint}`: plain HTTP is allowed on loopback only, unless `{AWS_ALLOW_HTTP}=true`"
                    )));
                }
                true
            }
            Some(endpoint) if !endpoint.starts_with("https://") => {
                return Err(config_error(format!(
                    "`{AWS_ENDPOINT_URL}` is `{endpoint}`, which is not an `http://` or `https://` URL"
                )));
            }
            _ => false,
        };
        Ok(Some(S3Config {
            bucket: bucket.to_string(),
            prefix,
            endpoint,
            region: text(AWS_REGION)?
                .or(text(AWS_DEFAULT_REGION)?)
                .unwrap_or_else(|| "us-east-1".to_string()),
            access_key_id: text(AWS_ACCESS_KEY_ID)?,
            secret_access_key: text(AWS_SECRET_ACCESS_KEY)?,
            session_token: text(AWS_SESSION_TOKEN)?,
            allow_http,
        }))
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Whether an `http://` URL's host is on loopback.
fn is_loopback(url: &str) -> bool {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<S3Config>, Error> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        S3Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn a_url_and_the_aws_variables_make_a_configuration() {
        assert_eq!(config(&[]).unwrap(), None);
        let s3 = config(&[
            ("KILN_STORE_URL", "s3://models/team/kiln/"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000/"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "id"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s3.bucket, "models");
        assert_eq!(s3.prefix, "team/kiln");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(s3.region, "eu-west-1");
        assert!(s3.allow_http);
        assert_eq!(s3.url(), "s3://models/team/kiln");
        assert!(
            !format!("{s3:?}").contains("\"id\""),
            "no credentials in Debug"
        );
    }

    #[test]
    fn bad_urls_and_remote_plain_http_are_refused() {
        for (url, endpoint) in [
            ("gs://bucket", None),
            ("s3://", None),
            ("s3://Upper", None),
            ("s3://bucket/a/../b", None),
            ("s3://bucket", Some("http://10.0.0.5:9000")),
            ("s3://bucket", Some("ftp://127.0.0.1")),
        ] {
            let mut vars = vec![("KILN_STORE_URL", url)];
            if let Some(endpoint) = endpoint {
                vars.push(("AWS_ENDPOINT_URL", endpoint));
            }
            let error = config(&vars).unwrap_err();
            assert!(matches!(error, Error::Config { .. }), "{url}: {error}");
        }
        assert!(
            config(&[
                ("KILN_STORE_URL", "s3://bucket"),
                ("AWS_ENDPOINT_URL", "http://minio.internal:9000"),
                ("AWS_ALLOW_HTTP", "true"),
            ])
            .is_ok()
        );
        assert!(is_loopback("http://[::1]:9000/x"));
        assert!(is_loopback("http://localhost:9000"));
        assert!(!is_loopback("http://127.0.0.1.example.com"));
    }
}
