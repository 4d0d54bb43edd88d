//! `notify:` in kiln.yaml: who is told what. Webhooks (a JSON POST with a Slack-compatible
//! `text`, signed when a secret is named) and e-mail over SMTP, each with the events it wants.
//!
//! Secrets are never written in the file: a webhook URL may be named by an environment
//! variable (`url_env`, as Slack's URLs are themselves secrets), the signing secret and the SMTP
//! credentials always are.

use std::collections::BTreeSet;
use std::fmt;

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};

use crate::diagnostic::{Diagnostic, SourceFile};
use crate::validate::locate;

/// Something that happened, that people may want to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A run failed: a stage, a data check, the environment or the servable check.
    RunFailed,
    /// A run's gates failed.
    GateFailed,
    /// A green run registered a new version.
    Registered,
    /// A version was deployed to an environment.
    Deployed,
    /// An alias (an environment) was moved to a version.
    Promoted,
    /// An alias (an environment) was moved back to the version it held before.
    RolledBack,
    /// A serving process died or stopped answering.
    Crashed,
}

impl Event {
    pub const ALL: [Event; 7] = [
        Event::RunFailed,
        Event::GateFailed,
        Event::Registered,
        Event::Deployed,
        Event::Promoted,
        Event::RolledBack,
        Event::Crashed,
    ];

    /// The name kiln.yaml and the webhook's JSON use.
    pub fn name(self) -> &'static str {
        match self {
            Event::RunFailed => "run_failed",
            Event::GateFailed => "gate_failed",
            Event::Registered => "registered",
            Event::Deployed => "deployed",
            Event::Promoted => "promoted",
            Event::RolledBack => "rolled_back",
            Event::Crashed => "crashed",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS (port 587 by default); the default.
    Starttls,
    /// TLS from the first byte (port 465 by default).
    Tls,
    /// No encryption (port 25 by default): for a relay on the same machine.
    None,
}

impl Security {
    pub fn default_port(self) -> u16 {
        match self {
            Security::Starttls => 587,
            Security::Tls => 465,
            Security::None => 25,
        }
    }
}

/// `notify:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    #[serde(default)]
    pub webhooks: Vec<WebhookSpec>,
    pub email: Option<EmailSpec>,
}

/// One webhook as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: Option<Spanned<String>>,
    /// The environment variable holding the URL.
    pub url_env: Option<Spanned<String>>,
    /// The environment variable holding the HMAC-SHA256 signing secret.
    pub secret_env: Option<Spanned<String>>,
    pub on: Option<Vec<Event>>,
}

/// E-mail as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    /// `host` or `host:port`.
    pub server: Spanned<String>,
    pub security: Option<Security>,
    pub from: Spanned<String>,
    pub to: Vec<Spanned<String>>,
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    pub on: Option<Vec<Event>>,
}

/// Who is told what, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Notify {
    pub webhooks: Vec<Webhook>,
    pub email: Option<Email>,
}

/// Where a webhook posts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    Literal(String),
    /// Read from this environment variable when Kiln starts notifying.
    Env(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: UrlSource,
    pub secret_env: Option<String>,
    pub on: BTreeSet<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub from: String,
    pub to: Vec<String>,
    /// The environment variables holding the SMTP credentials; no login when they are unset.
    pub username_env: String,
    pub password_env: String,
    pub on: BTreeSet<Event>,
}

/// Default names of the environment variables holding the SMTP credentials.
pub const SMTP_USERNAME_ENV: &str = "KILN_SMTP_USERNAME";
pub const SMTP_PASSWORD_ENV: &str = "KILN_SMTP_PASSWORD";

fn events(on: &Option<Vec<Event>>) -> BTreeSet<Event> {
    match on {
        Some(events) => events.iter().copied().collect(),
        None => Event::ALL.into_iter().collect(),
    }
}

/// Validates `notify:`, reporting each problem at its place in the file.
pub(crate) fn read(spec: &NotifySpec, source: &SourceFile) -> (Notify, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut error = |message: String, span: Option<&marked_yaml::Span>, hint: &str| {
        diagnostics.push(
            Diagnostic::new(message)
                .at(span.and_then(|span| locate(source, span)))
                .hint(hint.to_string()),
        );
    };
    let mut notify = Notify::default();
    for (index, webhook) in spec.webhooks.iter().enumerate() {
        let url = match (&webhook.url, &webhook.url_env) {
            (Some(url), None) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    error(
                        format!("webhook URL `{}` is not an http(s) URL", url.as_str()),
                        Some(url.span()),
                        "write it as `https://host/path`",
                    );
                }
                UrlSource::Literal(url.to_string())
            }
            (None, Some(env)) => UrlSource::Env(env.to_string()),
            (Some(url), Some(_)) => {
                error(
                    "a webhook has both `url` and `url_env`".into(),
                    Some(url.span()),
                    "keep one: `url_env` names a variable holding a URL that is itself a secret",
                );
                continue;
            }
            (None, None) => {
                error(
                    format!("webhook {} of `notify` has no `url`", index + 1),
                    webhook.secret_env.as_ref().map(|s| s.span()),
                    "give `url: https://...`, or `url_env: VARIABLE` naming where it is",
                );
                continue;
            }
        };
        notify.webhooks.push(Webhook {
            url,
            secret_env: webhook.secret_env.as_ref().map(|s| s.to_string()),
            on: events(&webhook.on),
        });
    }
    if let Some(email) = &spec.email {
        let security = email.security.unwrap_or(Security::Starttls);
        let (host, port) = match email.server.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) if port > 0 => (host.to_string(), port),
                _ => {
                    error(
                        format!("`{}` is not a port number", port),
                        Some(email.server.span()),
                        "write the server as `host` or `host:port`",
                    );
                    (host.to_string(), security.default_port())
                }
            },
            None => (email.server.to_string(), security.default_port()),
        };
        if host.is_empty() {
            error(
                "the SMTP server has no host".into(),
                Some(email.server.span()),
                "write the server as `host` or `host:port`",
            );
        }
        for address in std::iter::once(&email.from).chain(&email.to) {
            if !address.contains('@') {
                error(
                    format!("`{}` is not an e-mail address", address.as_str()),
                    Some(address.span()),
                    "write it as `name@example.com`",
                );
            }
        }
        if email.to.is_empty() {
            error(
                "`to` lists nobody".into(),
                Some(email.server.span()),
                "list the addresses to write to under `to`",
            );
        }
        notify.email = Some(Email {
            host,
            port,
            security,
            from: email.from.to_string(),
            to: email.to.iter().map(|a| a.to_string()).collect(),
            username_env: email
                .username_env
                .clone()
                .unwrap_or_else(|| SMTP_USERNAME_ENV.to_string()),
            password_env: email
                .password_env
                .clone()
                .unwrap_or_else(|| SMTP_PASSWORD_ENV.to_string()),
            on: events(&email.on),
        });
    }
    (notify, diagnostics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    const MODEL: &str = "models:\n  m:\n    stages:\n      train: {cmd: 'true'}\n";

    fn load(notify: &str) -> Result<Option<Notify>, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kiln.yaml"), format!("{MODEL}{notify}")).unwrap();
        match crate::load(dir.path()) {
            Ok(project) => Ok(project.notify),
            Err(Error::Invalid { diagnostics, .. }) => Err(diagnostics
                .iter()
                .map(|d| {
                    let at = d.location.as_ref().map_or(String::new(), |l| {
                        let (line, column) = l.line_column();
                        format!("{line}:{column}: ")
                    });
                    format!("{at}{} ({})", d.message, d.hint.as_deref().unwrap_or(""))
                })
                .collect()),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn a_full_configuration_reads_with_its_defaults() {
        let notify = load(
            "notify:\n  webhooks:\n    - url: https://hooks.example.com/x\n      secret_env: HOOK_SECRET\n      on: [run_failed, crashed]\n    - url_env: SLACK_URL\n  email:\n    server: smtp.example.com\n    from: kiln@example.com\n    to: [a@example.com]\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(notify.webhooks.len(), 2);
        assert_eq!(
            notify.webhooks[0].on,
            BTreeSet::from([Event::RunFailed, Event::Crashed])
        );
        assert_eq!(notify.webhooks[1].url, UrlSource::Env("SLACK_URL".into()));
        assert_eq!(notify.webhooks[1].on.len(), Event::ALL.len());
        let email = notify.email.unwrap();
        assert_eq!((email.port, email.security), (587, Security::Starttls));
        assert_eq!(email.username_env, SMTP_USERNAME_ENV);
    }

    #[test]
    fn mistakes_are_located_and_explained() {
        let problems = load(
            "notify:\n  webhooks:\n    - url: hooks.example.com/x\n    - url: https://a.example.com\n      url_env: A\n    - secret_env: S\n  email:\n    server: smtp.example.com:smtp\n    security: tls\n    from: kiln\n    to: []\n",
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "7:12: webhook URL `hooks.example.com/x` is not an http(s) URL (write it as `https://host/path`)",
                "8:12: a webhook has both `url` and `url_env` (keep one: `url_env` names a variable holding a URL that is itself a secret)",
                "10:19: webhook 3 of `notify` has no `url` (give `url: https://...`, or `url_env: VARIABLE` naming where it is)",
                "12:13: `smtp` is not a port number (write the server as `host` or `host:port`)",
                "14:11: `kiln` is not an e-mail address (write it as `name@example.com`)",
                "12:13: `to` lists nobody (list the addresses to write to under `to`)",
            ]
        );
    }

    #[test]
    fn an_unknown_event_is_refused_with_the_known_ones() {
        let problems =
            load("notify:\n  webhooks:\n    - url: https://x.example.com\n      on: [registerd]\n")
                .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("registerd"), "{problems:?}");
        assert!(problems[0].contains("registered"), "{problems:?}");
    }
}
