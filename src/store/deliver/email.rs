//! The email channel: a multipart (plain text and HTML) UTF-8 message through the
//! configured SMTP relay, STARTTLS or TLS and authentication as configured. The
//! Message-ID is derived from the idempotency key, so a mail client shows a repeat
//! as the same message.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::config::{SmtpConfig, SmtpSecurity};
use super::render;
use super::SendError;

/// Sends email through one relay.
#[derive(Clone)]
pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Option<Mailbox>,
    problem: String,
}

impl Mailer {
    /// A mailer for `cfg`; a relay that is not configured, or misconfigured, makes
    /// every email attempt fail with the reason (so it shows on the destination).
    pub fn new(cfg: &SmtpConfig, timeout: Duration) -> Mailer {
        match build(cfg, timeout) {
            Ok((t, from)) => Mailer {
                transport: Some(t),
                from: Some(from),
                problem: String::new(),
            },
            Err(problem) => {
                if !cfg.host.is_empty() {
                    tracing::error!(%problem, "deliveries.smtp: email destinations will fail");
                }
                Mailer {
                    transport: None,
                    from: None,
                    problem,
                }
            }
        }
    }

    /// Sends `msg` to `to`; `message_id` without angle brackets. `Ok` with the
    /// relay's reply once it accepted the message.
    pub async fn send(
        &self,
        to: &lettre::Address,
        msg: &render::Message,
        message_id: &str,
    ) -> Result<String, SendError> {
        let (Some(t), Some(from)) = (&self.transport, &self.from) else {
            return Err(SendError::Refused(self.problem.clone()));
        };
        let email = Message::builder()
            .from(from.clone())
            .to(Mailbox::new(None, to.clone()))
            .subject(msg.subject.clone())
            .message_id(Some(format!("<{message_id}>")))
            .multipart(MultiPart::alternative_plain_html(
                msg.text.clone(),
                msg.html.clone(),
            ))
            .map_err(|e| SendError::Refused(format!("message: {e}")))?;
        let reply = t.send(email).await.map_err(|e| match e.is_permanent() {
            true => SendError::Answer(format!("SMTP: {e}")),
            false => SendError::Transport(format!("SMTP: {e}")),
        })?;
        Ok(format!(
            "SMTP {} {}",
            reply.code(),
            reply.message().collect::<Vec<_>>().join(" ")
        ))
    }
}

fn build(
    cfg: &SmtpConfig,
    timeout: Duration,
) -> Result<(AsyncSmtpTransport<Tokio1Executor>, Mailbox), String> {
    if cfg.host.is_empty() {
        return Err("no SMTP relay configured (deliveries.smtp.host)".into());
    }
    let from: Mailbox = cfg
        .from
        .parse()
        .map_err(|e| format!("deliveries.smtp.from {:?}: {e}", cfg.from))?;
    let tls = || -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(cfg.host.clone());
        if let Some(f) = &cfg.ca_file {
            let pem = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", f.display()))?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls().map_err(|e| format!("TLS: {e}"))
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.clone())
        .port(cfg.port)
        .timeout(Some(timeout))
        .tls(match cfg.security {
            SmtpSecurity::Starttls => Tls::Required(tls()?),
            SmtpSecurity::Tls => Tls::Wrapper(tls()?),
            SmtpSecurity::None => Tls::None,
        });
    if !cfg.username.is_empty() {
        b = b.credentials(Credentials::new(cfg.username.clone(), cfg.password.clone()));
    }
    Ok((b.build(), from))
}
