//! Webhooks: the message as JSON, POSTed with its event and delivery id in headers and, when a
//! secret is configured, an HMAC-SHA256 signature of the body (`X-Kiln-Signature-256:
//! sha256=<hex>`, as GitHub signs its webhooks). `text` makes it a valid Slack or Mattermost
//! incoming-webhook payload as it is.

use std::time::Duration;

use hmac::{Hmac, Mac};
use kiln_spec::notify::UrlSource;
use sha2::Sha256;

use crate::{Deliver, Env, Error, Failure, Message, required_env};

pub const SIGNATURE_HEADER: &str = "X-Kiln-Signature-256";

pub(crate) struct Webhook {
    url: String,
    secret: Option<Vec<u8>>,
    shown: String,
    client: reqwest::blocking::Client,
}

impl Webhook {
    pub(crate) fn new(spec: &kiln_spec::notify::Webhook, env: Env<'_>) -> Result<Webhook, Error> {
        let url = match &spec.url {
            UrlSource::Literal(url) => url.clone(),
            UrlSource::Env(var) => required_env(env, var, "a webhook's URL")?,
        };
        let secret = match &spec.secret_env {
            Some(var) => Some(required_env(env, var, "a webhook's signing secret")?.into_bytes()),
            None => None,
        };
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| Error::Http(error.to_string()))?;
        Ok(Webhook {
            shown: format!("webhook {}", origin(&url)),
            url,
            secret,
            client,
        })
    }
}

/// `scheme://host[:port]` of a URL: its path and query may hold a token.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Credentials in the authority (`user:pass@host`) are dropped too.
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}")
}

/// The hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl Deliver for Webhook {
    fn shown(&self) -> &str {
        &self.shown
    }

    fn deliver(&mut self, message: &Message, delivery_id: &str) -> Result<(), Failure> {
        let body = serde_json::to_vec(message).expect("a message serialises");
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Kiln-Event", message.event.name())
            .header("X-Kiln-Delivery", delivery_id);
        if let Some(secret) = &self.secret {
            request = request.header(
                SIGNATURE_HEADER,
                format!("sha256={}", signature(secret, &body)),
            );
        }
        // reqwest's errors name the URL, which may hold a token: drop it.
        let response = request
            .body(body)
            .send()
            .map_err(|error| Failure::Transient(error.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
        {
            Err(Failure::Transient(format!(
                "the receiver answered {status}"
            )))
        } else {
            Err(Failure::Permanent(format!(
                "the receiver answered {status}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_name_a_webhook_by_its_origin_only() {
        assert_eq!(
            origin("https://hooks.slack.com/services/T000/B000/SECRET"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            origin("http://user:pass@127.0.0.1:8080/hook?token=x"),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
