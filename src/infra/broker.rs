//! The embedded MQTT broker (rumqttd), for zero-configuration runs and tests.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

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
}

impl EmbeddedBroker {
    /// Starts a broker on 127.0.0.1 at `port` (0: a free port).
    pub fn start(port: u16) -> Result<Self, BrokerError> {
        let port = if port == 0 { free_port()? } else { port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
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
                auth: None,
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
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                let mut broker = Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            })?;
        // Wait until it accepts connections (bounded; the thread binds quickly).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(BrokerError::NotListening(addr));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(Self { addr })
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
