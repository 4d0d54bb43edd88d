//! E-mail: one plain-text message per notification, the event's line as its subject, sent
//! through the configured SMTP server (STARTTLS, TLS or, for a relay on the same machine, a
//! plain connection), logging in when the credentials' variables are set.

use std::time::Duration;

use kiln_spec::notify::Security;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Mailboxes};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{SmtpTransport, Transport};

use crate::{Deliver, Env, Error, Failure, Message};

pub(crate) struct Mail {
    transport: SmtpTransport,
    from: Mailbox,
    to: Mailboxes,
    shown: String,
}

fn mailbox(address: &str) -> Result<Mailbox, Error> {
    address
        .parse()
        .map_err(|error: lettre::address::AddressError| Error::Address {
            address: address.to_string(),
            reason: error.to_string(),
        })
}

impl Mail {
    pub(crate) fn new(spec: &kiln_spec::notify::Email, env: Env<'_>) -> Result<Mail, Error> {
        let server = format!("{}:{}", spec.host, spec.port);
        let smtp_error = |error: lettre::transport::smtp::Error| Error::Smtp {
            server: server.clone(),
            reason: error.to_string(),
        };
        let builder = match spec.security {
            Security::Tls => SmtpTransport::relay(&spec.host).map_err(smtp_error)?,
            Security::Starttls => SmtpTransport::starttls_relay(&spec.host).map_err(smtp_error)?,
            Security::None => SmtpTransport::builder_dangerous(&spec.host),
        };
        let mut builder = builder
            .port(spec.port)
            .timeout(Some(Duration::from_secs(10)));
        if let (Some(username), Some(password)) = (env(&spec.username_env), env(&spec.password_env))
        {
            builder = builder.credentials(Credentials::new(username, password));
        }
        let mut to = Mailboxes::new();
        for address in &spec.to {
            to.push(mailbox(address)?);
        }
        Ok(Mail {
            transport: builder.build(),
            from: mailbox(&spec.from)?,
            to,
            shown: format!("mail via {server}"),
        })
    }
}

/// The body: the line, the details, then the fields a reader may want to search for.
fn body(message: &Message) -> String {
    let mut body = format!("{}\n", message.text);
    if !message.details.is_empty() {
        body.push('\n');
        for line in &message.details {
            body.push_str(line);
            body.push('\n');
        }
    }
    body.push_str(&format!(
        "\nevent: {}\nmodel: {}\n",
        message.event, message.model
    ));
    if let Some(version) = message.version {
        body.push_str(&format!("version: {version}\n"));
    }
    if let Some(environment) = &message.environment {
        body.push_str(&format!("environment: {environment}\n"));
    }
    if let Some(run) = message.run {
        body.push_str(&format!("run: {run}\n"));
    }
    body.push_str(&format!("at: {}\n", message.at));
    body
}

impl Deliver for Mail {
    fn shown(&self) -> &str {
        &self.shown
    }

    fn deliver(&mut self, message: &Message, delivery_id: &str) -> Result<(), Failure> {
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .subject(format!("[kiln] {}", message.text))
            .header(ContentType::TEXT_PLAIN);
        for to in self.to.iter() {
            builder = builder.to(to.clone());
        }
        let email = builder
            .message_id(Some(format!("<{delivery_id}@kiln>")))
            .body(body(message))
            .map_err(|error| Failure::Permanent(error.to_string()))?;
        match self.transport.send(&email) {
            Ok(_) => Ok(()),
            Err(error) if error.is_permanent() => Err(Failure::Permanent(error.to_string())),
            Err(error) => Err(Failure::Transient(error.to_string())),
        }
    }
}
