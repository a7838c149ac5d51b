//! `[deliveries]`: the channels' settings and the destinations of the configuration
//! file (applied at every start; the API manages the others).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::spec::DestinationInput;

/// Delivery of alerts to the cooperatives' webhooks and mailboxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveriesConfig {
    /// Run the fan-out and the delivery workers in this instance (one instance of a
    /// deployment should).
    pub enabled: bool,
    /// The service's public address, for the links to the map in messages
    /// (`https://fleet.example.vn` gives `https://fleet.example.vn/map#vehicle=...`);
    /// empty: no link.
    pub public_url: String,
    /// Consecutive failed attempts after which a destination is parked (it keeps its
    /// pending deliveries; unpark it over the API).
    pub park_after_failures: u32,
    /// Wait after the first failure, milliseconds; doubles at each failure.
    pub backoff_initial_ms: u64,
    /// Longest wait between attempts, seconds.
    pub backoff_max_s: u64,
    /// One attempt (connect, send, answer) may take this long, seconds.
    pub timeout_s: u64,
    /// Milliseconds between looks for new alerts and destination changes.
    pub poll_ms: u64,
    /// Most info events in one digest message.
    pub max_digest: usize,
    /// Most immediate alerts in one webhook POST: what queued while a destination was
    /// slow or down goes together, each alert with its own idempotency key (an email
    /// still carries one alert).
    pub max_batch: usize,
    /// Let webhooks point to loopback, private and link-local addresses (refused by
    /// default: a cooperative's URL must not reach the service's own network).
    pub allow_private_targets: bool,
    /// The SMTP relay for email destinations.
    pub smtp: SmtpConfig,
    /// Destinations of the configuration file (`[[deliveries.destinations]]`).
    pub destinations: Vec<DestinationInput>,
}

impl Default for DeliveriesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            public_url: String::new(),
            park_after_failures: 30,
            backoff_initial_ms: 1_000,
            backoff_max_s: 300,
            timeout_s: 10,
            poll_ms: 500,
            max_digest: 200,
            max_batch: 100,
            allow_private_targets: false,
            smtp: SmtpConfig::default(),
            destinations: Vec::new(),
        }
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on the same host.
    None,
}

/// The SMTP relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Relay host name (also the name its certificate must carry); empty: email
    /// destinations fail (and are parked) until it is set.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// `starttls` (default), `tls` or `none`.
    pub security: SmtpSecurity,
    /// Login (empty: no authentication).
    pub username: String,
    /// Password of `username`.
    pub password: String,
    /// The sender, e.g. `"fleetwatch <canhbao@htx.example.vn>"`.
    pub from: String,
    /// Extra CA certificate (PEM) to trust for the relay, besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 587,
            security: SmtpSecurity::Starttls,
            username: String::new(),
            password: String::new(),
            from: "fleetwatch <fleetwatch@localhost>".into(),
            ca_file: None,
        }
    }
}
