//! The embedded MQTT broker (rumqttd), for zero-configuration runs and tests.
//!
//! rumqttd listens on a private loopback port and admits only fleetwatch's own
//! generated credential; devices connect to the gate ([`super::mqtt_gate`]) on the
//! configured port, which checks their credentials and topic ACLs.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use super::mqtt_gate::{self, AclTopics, BrokerCredentials, INTERNAL_USER};
use crate::pipeline::topic::TopicPattern;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Errors starting the embedded broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No free local port could be found.
    #[error("finding a free port: {0}")]
    Port(#[from] std::io::Error),
    /// The broker thread did not start listening in time.
    #[error("embedded broker did not accept connections on {0}")]
    NotListening(SocketAddr),
}

/// A running embedded broker. It lives on its own threads until the process exits
/// (rumqttd has no stop handle).
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    gate: SocketAddr,
    internal_password: String,
}

impl EmbeddedBroker {
    /// Starts a broker whose devices' port (the gate) is 127.0.0.1:`port` (0: a free
    /// port), with credentials held in memory only (no device credentials: tests).
    pub fn start(port: u16) -> Result<Self, BrokerError> {
        let topics = AclTopics {
            fix: TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").expect("valid pattern"),
            alert: "fleet/{cooperative}/{vehicle}/alert".into(),
        };
        Self::start_with(port, BrokerCredentials::ephemeral(), topics)
    }

    /// Starts a broker with `creds` (fleetwatch's own and the devices'); devices may
    /// publish and subscribe only as `topics` and their credential allow.
    pub fn start_with(
        port: u16,
        creds: BrokerCredentials,
        topics: AclTopics,
    ) -> Result<Self, BrokerError> {
        let gate_listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        gate_listener.set_nonblocking(true)?;
        let gate = gate_listener.local_addr()?;
        // One start at a time in this process: the private port is picked free, then
        // bound by rumqttd's thread; two starts at once could pick the same port, and
        // the loser's gate would relay to the winner's broker.
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let server = ServerSettings {
            name: "v4".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 1 << 20,
                // The in-flight window per connection; fleetwatch's pipeline channel
                // is larger, so the event loop never waits on a full channel.
                max_inflight_count: 1_000,
                // Only fleetwatch's own clients and the gate (which relays devices
                // after checking them) connect here.
                auth: Some(HashMap::from([(
                    INTERNAL_USER.to_string(),
                    creds.internal_password.clone(),
                )])),
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 10_010,
                max_outgoing_packet_count: 1_000,
                // Persistent sessions keep unacked data in the router's log: size it
                // to hold minutes of a large fleet (1 GiB) before old segments go.
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                ..Default::default()
            },
            v4: Some(HashMap::from([("v4".to_string(), server)])),
            ..Default::default()
        };
        let (failed_tx, failed) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                let mut broker = Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                    let _ = failed_tx.send(());
                }
            })?;
        // Wait until it accepts connections (bounded; the thread binds quickly), and
        // is ours: a broker that failed to bind says so.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if failed.try_recv().is_ok() || std::time::Instant::now() > deadline {
                return Err(BrokerError::NotListening(addr));
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let internal_password = creds.internal_password.clone();
        let (creds, topics) = (Arc::new(creds), Arc::new(topics));
        std::thread::Builder::new()
            .name("mqtt-gate".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("gate runtime");
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(gate_listener) {
                        Ok(l) => mqtt_gate::run(l, addr, creds, topics).await,
                        Err(e) => tracing::error!(error = %e, "embedded broker gate did not start"),
                    }
                });
            })?;
        Ok(Self {
            addr,
            gate,
            internal_password,
        })
    }

    /// URL of fleetwatch's own clients: `mqtt://fleetwatch-internal:PASSWORD@127.0.0.1:PORT`
    /// (the private port; redact before logging).
    pub fn url(&self) -> String {
        format!(
            "mqtt://{INTERNAL_USER}:{}@{}",
            self.internal_password, self.addr
        )
    }

    /// URL devices connect to (with their own credentials): `mqtt://127.0.0.1:PORT`.
    pub fn device_url(&self) -> String {
        format!("mqtt://{}", self.gate)
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
