//! The webhook channel: a JSON POST signed with HMAC-SHA256.
//!
//! Headers: `X-Fleetwatch-Timestamp` (Unix seconds), `X-Fleetwatch-Signature`
//! (`sha256=` and the hex HMAC-SHA256, under the destination's secret, of the
//! timestamp, a `.`, and the body), `Idempotency-Key` (`{alert_id}:{revision}`, or
//! `digest:{destination}:{batch}` for a digest; every alert in the body carries its
//! own key too). A receiver checks the signature, refuses old timestamps (replays),
//! and drops a key it has seen.

use std::net::SocketAddr;
use std::time::Duration;

use hmac::{KeyInit, Mac};

use super::spec::{is_private, Secret};
use super::SendError;

/// The signature header's value for `body` sent at `timestamp_s`.
pub fn signature(secret: &[u8], timestamp_s: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends webhooks.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Longest time of one attempt.
    pub timeout: Duration,
    /// Whether loopback and private addresses are allowed.
    pub allow_private: bool,
}

impl Webhook {
    /// POSTs `body` to `url`; `Ok` with the answer's status line once it is 2xx.
    pub async fn send(
        &self,
        url: &url::Url,
        secret: &Secret,
        key: &str,
        body: Vec<u8>,
    ) -> Result<String, SendError> {
        let host = url
            .host_str()
            .ok_or_else(|| SendError::Refused("URL without a host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        // Resolved here and pinned for the request, so the address checked is the
        // address used (no second lookup that a rebinding DNS could answer otherwise).
        let addrs: Vec<SocketAddr> =
            tokio::time::timeout(self.timeout, tokio::net::lookup_host((host.as_str(), port)))
                .await
                .map_err(|_| SendError::Transport(format!("resolving {host}: timed out")))?
                .map_err(|e| SendError::Transport(format!("resolving {host}: {e}")))?
                .collect();
        if addrs.is_empty() {
            return Err(SendError::Transport(format!("{host} has no address")));
        }
        if !self.allow_private {
            if let Some(a) = addrs.iter().find(|a| is_private(a.ip())) {
                return Err(SendError::Refused(format!(
                    "{host} resolves to {}, a private address (deliveries.allow_private_targets is off)",
                    a.ip()
                )));
            }
        }
        install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .resolve_to_addrs(&host, &addrs)
            .user_agent(concat!("fleetwatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SendError::Transport(format!("HTTP client: {e}")))?;
        let ts = chrono::Utc::now().timestamp();
        let sig = signature(secret.expose(), ts, &body);
        let resp = client
            .post(url.clone())
            .header("Content-Type", "application/json; charset=utf-8")
            .header("X-Fleetwatch-Timestamp", ts.to_string())
            .header("X-Fleetwatch-Signature", sig)
            .header("Idempotency-Key", key)
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Transport(describe(&e)))?;
        let status = resp.status();
        if status.is_success() {
            Ok(format!("HTTP {}", status.as_u16()))
        } else {
            Err(SendError::Answer(format!("HTTP {status}")))
        }
    }
}

/// Makes rustls' ring the process's crypto provider, once: reqwest is built without
/// one of its own (its default, aws-lc-rs, is a long C build) and panics without it.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when another provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// reqwest's error with its causes ("error sending request" alone says nothing).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The primitive is RFC 4231 test case 2; the framing is "{ts}.{body}".
    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Our framing: "{ts}.{body}", computed here over the whole message at once.
        let body = br#"{"alert":"x"}"#;
        let mut whole = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"secret-0123456789").unwrap();
        whole.update(b"1764000000.{\"alert\":\"x\"}");
        let want = format!("sha256={}", hex::encode(whole.finalize().into_bytes()));
        assert_eq!(signature(b"secret-0123456789", 1_764_000_000, body), want);
        // Another timestamp, body or key: another signature.
        assert_ne!(signature(b"secret-0123456789", 1_764_000_001, body), want);
        assert_ne!(signature(b"secret-0123456789", 1_764_000_000, b"{}"), want);
        assert_ne!(signature(b"secret-0123456788", 1_764_000_000, body), want);
    }
}
