//! MQTT consumer: persistent session, QoS 1, manual acks after commit.
//!
//! The event loop task only polls and forwards: it never waits on the database.
//! Backpressure: the broker sends at most its in-flight window of unacked QoS 1
//! messages, and the channel to the pipeline is sized above that window.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::pipeline::delivery::{Ack, Body, Delivery, TooLarge};
use crate::store::incidents::{self, Incident};

/// MQTT connection and subscription settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port` or `mqtts://host:port`. Empty: the embedded broker.
    pub url: String,
    /// Client id; stable across restarts so the broker keeps the session.
    pub client_id: String,
    /// Username, if the broker requires one.
    pub username: Option<String>,
    /// Password, if the broker requires one.
    pub password: Option<String>,
    /// PEM file of the CA that signs the broker's certificate (mqtts); default: system roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Topic pattern with `{cooperative}` and `{vehicle}` placeholders.
    pub topic: String,
    /// Shared-subscription group (`$share/{group}/...`) so instances split the load.
    pub share_group: Option<String>,
    /// Consumer connections (a shared subscription among them). Each has its own
    /// in-flight window, which bounds throughput when acks wait for commits; 0: auto
    /// (4 on the embedded broker, whose window is fixed at 100; else 1).
    pub connections: usize,
    /// Keep-alive interval, seconds.
    pub keep_alive_s: u64,
    /// Messages buffered between the event loop and the pipeline.
    pub channel_capacity: usize,
    /// Longest wait between reconnect attempts, milliseconds.
    pub max_backoff_ms: u64,
    /// Largest message payload processed, bytes; a larger one is kept as a `too_large`
    /// dead letter (topic, size, first 4 KiB), acked, and ingest goes on.
    pub max_message_bytes: usize,
    /// Largest MQTT packet read from the broker at all, bytes (default: MQTT's own
    /// maximum, so no message can make the connection fail). One packet of up to this
    /// size is held in memory per connection while it is read; bound it with the
    /// broker's `max_packet_size` (Mosquitto) rather than here, since a packet refused
    /// here fails the connection and the broker redelivers it forever.
    pub max_packet_bytes: usize,
}

/// MQTT's largest packet: 268,435,455 bytes of remaining length + 5 header bytes.
pub const MQTT_MAX_PACKET_BYTES: usize = 268_435_455 + 5;

/// Bytes of an oversized message kept in its dead letter.
pub const TOO_LARGE_PREFIX_BYTES: usize = 4096;

/// A connection must stay up this long before the reconnect backoff starts again
/// from its minimum: one that fails right after ConnAck keeps backing off.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: "fleetwatch".into(),
            username: None,
            password: None,
            ca_file: None,
            topic: "fleet/{cooperative}/{vehicle}/fix".into(),
            share_group: None,
            connections: 0,
            keep_alive_s: 30,
            channel_capacity: 20_000,
            max_backoff_ms: 10_000,
            max_message_bytes: 1 << 20,
            max_packet_bytes: MQTT_MAX_PACKET_BYTES,
        }
    }
}

/// Errors setting up the MQTT client.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The URL is not `mqtt://` or `mqtts://` with a host.
    #[error("bad broker URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    /// The CA file could not be read.
    #[error("reading CA file {path}: {source}")]
    Ca {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Builds client options from a URL and the config.
pub fn options(cfg: &MqttConfig, url: &str) -> Result<MqttOptions, MqttError> {
    let bad = |why: &str| MqttError::BadUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    let host = parsed.host_str().ok_or_else(|| bad("no host"))?.to_string();
    let (tls, default_port) = match parsed.scheme() {
        "mqtt" | "tcp" => (false, 1883),
        "mqtts" | "ssl" => (true, 8883),
        other => return Err(bad(&format!("scheme {other:?} is not mqtt or mqtts"))),
    };
    let port = parsed.port().unwrap_or(default_port);
    let mut o = MqttOptions::new(cfg.client_id.clone(), host, port);
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_s.max(5)))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(cfg.max_packet_bytes.max(1024), 1 << 20);
    let user = cfg
        .username
        .clone()
        .or_else(|| non_empty(parsed.username()));
    let pass = cfg
        .password
        .clone()
        .or_else(|| parsed.password().map(str::to_string));
    if let Some(user) = user {
        o.set_credentials(user, pass.unwrap_or_default());
    }
    if tls {
        let transport = match &cfg.ca_file {
            Some(path) => {
                let ca = std::fs::read(path).map_err(|source| MqttError::Ca {
                    path: path.clone(),
                    source,
                })?;
                Transport::tls(ca, None, None)
            }
            None => Transport::tls_with_default_config(),
        };
        o.set_transport(transport);
    }
    Ok(o)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Keeps a publish whole, or (over `limit_bytes`) only its first bytes, copied so the
/// large buffer is freed at once.
pub fn limit_payload(mut publish: Publish, limit_bytes: usize) -> (Publish, Option<TooLarge>) {
    let size_bytes = publish.payload.len();
    if size_bytes <= limit_bytes {
        return (publish, None);
    }
    let keep = size_bytes.min(TOO_LARGE_PREFIX_BYTES);
    publish.payload = Bytes::copy_from_slice(&publish.payload[..keep]);
    (
        publish,
        Some(TooLarge {
            size_bytes,
            limit_bytes,
        }),
    )
}

/// Acks publishes, on the connection that received each, after the writer commits.
#[derive(Clone)]
pub struct MqttAcker(pub Vec<AsyncClient>);

impl MqttAcker {
    /// Queues the ack of `p` on connection `conn` without waiting; gives it back
    /// when there is no room.
    pub fn try_ack(&self, (conn, p): (usize, Publish)) -> Result<(), (usize, Publish)> {
        let Some(client) = self.0.get(conn) else {
            return Ok(());
        };
        // No room (or the event loop is gone, which the error does not tell apart):
        // keep it for later. Unsent acks only mean redelivery, which storage dedups.
        client.try_ack(&p).map_err(|_| (conn, p))
    }

    /// Queues the ack, waiting for room (shutdown: the event loop still runs).
    pub async fn ack(&self, (conn, p): (usize, Publish)) {
        if let Some(client) = self.0.get(conn) {
            if let Err(e) = client.ack(&p).await {
                tracing::warn!(error = %e, "ack not sent");
            }
        }
    }
}

/// The part of a publish an ack needs (packet id, QoS): the writer keeps these, not
/// the payloads, while acks wait for room.
pub fn ack_token(p: &Publish) -> Publish {
    let mut t = Publish::new("", p.qos, Vec::new());
    t.pkid = p.pkid;
    t
}

/// Starts the client; returns it (for acks and publishing) and the event loop to
/// hand to [`run_event_loop`].
///
/// `requests` must exceed the number of messages that can be inside fleetwatch at
/// once (pipeline channel + writer queue + a batch): acks then never wait for room,
/// so the writer never waits on the event loop while the event loop waits on the
/// pipeline — whatever in-flight window the broker really applies.
pub fn client(
    cfg: &MqttConfig,
    url: &str,
    requests: usize,
) -> Result<(AsyncClient, EventLoop), MqttError> {
    let o = options(cfg, url)?;
    Ok(AsyncClient::new(o, requests))
}

/// How the event loop is stopped and observed.
pub struct LoopControl {
    /// Stop handing messages to the pipeline (start of shutdown).
    pub stop_forwarding: CancellationToken,
    /// Disconnect and return (after the writer's last acks).
    pub disconnect: CancellationToken,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// Readiness flags to update.
    pub health: Arc<Health>,
    /// Payloads over this many bytes become `too_large` dead letters.
    pub max_message_bytes: usize,
    /// Where a lost session is reported (stored by its own task; never waited on).
    pub incidents: Option<mpsc::Sender<Incident>>,
    /// The broker's URL without password, for incidents.
    pub broker: String,
    /// This connection's client id, for incidents.
    pub client_id: String,
    /// Failover: asked before every reconnection, and the loop's abrupt end.
    pub gate: Option<Gate>,
}

/// Asked before a reconnection: `false` ends the loop without connecting.
pub type MayConnect = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync,
>;

/// Failover's hold on a consumer: a stale leader must never reconnect, since its
/// CONNECT with the shared client id would take the session back from the new leader.
#[derive(Clone)]
pub struct Gate {
    /// Asked afresh before each reconnection.
    pub may_connect: MayConnect,
    /// Ends the loop at once, without polling again (a poll may reconnect).
    pub abandon: CancellationToken,
}

/// Polls the event loop until `stop_forwarding` and then `disconnect` fire.
///
/// - Subscribes on every connect without a stored session.
/// - Forwards publishes to `tx` until `stop_forwarding`; after that it keeps polling
///   (so the writer's last acks reach the broker) but drops new publishes unacked, for
///   redelivery to the next session.
/// - Poll errors are logged, counted and retried with backoff; never fatal.
pub async fn run_event_loop(
    client: AsyncClient,
    mut eventloop: EventLoop,
    subscriptions: Vec<String>,
    tx: mpsc::Sender<Delivery>,
    conn: usize,
    ctl: LoopControl,
) {
    let LoopControl {
        stop_forwarding,
        disconnect,
        max_backoff,
        health,
        max_message_bytes,
        incidents,
        broker,
        client_id,
        gate,
    } = ctl;
    let abandon = gate.as_ref().map(|g| g.abandon.clone()).unwrap_or_default();
    let mut tx = Some(tx);
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    let mut backoff = MIN_BACKOFF;
    let mut connected_at: Option<std::time::Instant> = None;
    // Set once a session was established (subscription confirmed): from then on the
    // broker must say session present on every reconnect, or it lost what it held.
    let mut had_session = false;
    let mut disconnecting = false;
    loop {
        if stop_forwarding.is_cancelled() {
            // Dropping the sender lets the writer drain and finish.
            tx = None;
        }
        if disconnect.is_cancelled() && !disconnecting {
            disconnecting = true;
            let _ = client.try_disconnect();
        }
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = stop_forwarding.cancelled(), if tx.is_some() => continue,
            _ = disconnect.cancelled(), if !disconnecting => continue,
            _ = abandon.cancelled() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                health.messages.fetch_add(1, Ordering::Relaxed);
                let Some(sender) = tx.as_ref() else { continue };
                let (publish, too_large) = limit_payload(publish, max_message_bytes);
                if let Some(t) = too_large {
                    tracing::warn!(topic = %publish.topic, size_bytes = t.size_bytes, limit_bytes = t.limit_bytes, "message too large: kept as a dead letter");
                }
                let ack = Ack::Mqtt(conn, ack_token(&publish));
                let d = Delivery {
                    body: Body::Message {
                        topic: publish.topic,
                        payload: publish.payload,
                        too_large,
                    },
                    received_at: Utc::now(),
                    ack: Some(ack),
                };
                // Capacity exceeds the broker's in-flight window, so this waits only
                // when the pipeline is saturated: that is the backpressure we want.
                tokio::select! {
                    r = sender.send(d) => if r.is_err() { tx = None },
                    _ = abandon.cancelled() => return,
                    _ = stop_forwarding.cancelled() => tx = None,
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                // The backoff restarts from its minimum only once this connection has
                // proved stable (see the error arm), not on every ConnAck.
                connected_at = Some(std::time::Instant::now());
                health.mqtt_connects.fetch_add(1, Ordering::Relaxed);
                health.mqtt.store(true, Ordering::Relaxed);
                tracing::info!(session_present = ack.session_present, "connected to broker");
                metrics::counter!("fleetwatch_mqtt_connects_total").increment(1);
                if had_session && !ack.session_present {
                    session_lost(&health, incidents.as_ref(), &broker, &client_id);
                }
                // Re-subscribing on a kept session is harmless and covers a broker
                // that lost its session state (restart without persistence).
                for s in &subscriptions {
                    if let Err(e) = client.try_subscribe(s.clone(), QoS::AtLeastOnce) {
                        tracing::error!(error = %e, topic = %s, "subscribe request failed");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let ok = ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)));
                if ok {
                    had_session = true;
                    tracing::info!("subscription confirmed");
                } else {
                    tracing::error!(codes = ?ack.return_codes, "broker refused the subscription");
                }
                health.subscribed.store(ok, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) if disconnecting => return,
            Ok(_) => {}
            Err(e) => {
                if disconnecting {
                    return;
                }
                health.mqtt.store(false, Ordering::Relaxed);
                health.subscribed.store(false, Ordering::Relaxed);
                if connected_at
                    .take()
                    .is_some_and(|t| t.elapsed() >= STABLE_CONNECTION)
                {
                    backoff = MIN_BACKOFF;
                }
                let kind = poll_error_kind(&e);
                metrics::counter!("fleetwatch_mqtt_poll_errors_total", "kind" => kind).increment(1);
                tracing::warn!(error = %e, kind, retry_in_ms = backoff.as_millis() as u64, "MQTT poll error");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = disconnect.cancelled() => return,
                    _ = abandon.cancelled() => return,
                }
                backoff = (backoff * 2).min(max_backoff);
                if let Some(g) = &gate {
                    if abandon.is_cancelled() || !(g.may_connect)().await {
                        tracing::error!(
                            client_id,
                            "ha: not reconnecting to the broker: this instance no longer leads"
                        );
                        return;
                    }
                }
            }
        }
    }
}

/// The broker came back without fleetwatch's session: what it held for fleetwatch
/// (queued and in-flight messages) and what arrived before the new subscription is
/// gone. Warn, count, and record an incident for the reports.
fn session_lost(
    health: &Health,
    incidents: Option<&mpsc::Sender<Incident>>,
    broker: &str,
    client_id: &str,
) {
    health.mqtt_sessions_lost.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("fleetwatch_mqtt_session_lost_total").increment(1);
    tracing::warn!(
        broker,
        client_id,
        "broker lost fleetwatch's session (CONNACK session present = 0 after an established session): \
         messages it had acknowledged to devices but not yet delivered may be lost"
    );
    let incident = Incident {
        at: Utc::now(),
        kind: incidents::SESSION_LOST,
        broker: broker.to_string(),
        connection: client_id.to_string(),
        detail: "the broker accepted the reconnection without the persistent session \
                 (CONNACK session present = 0): messages it had queued or acknowledged to devices \
                 before fleetwatch subscribed again may be lost"
            .to_string(),
    };
    if let Some(tx) = incidents {
        if tx.try_send(incident).is_err() {
            tracing::error!(
                broker,
                client_id,
                "ingest incident not recorded: its queue is full or closed"
            );
        }
    }
}

fn poll_error_kind(e: &rumqttc::ConnectionError) -> &'static str {
    use rumqttc::ConnectionError as E;
    match e {
        E::Io(_) => "io",
        E::ConnectionRefused(_) => "refused",
        E::NetworkTimeout | E::FlushTimeout => "timeout",
        E::MqttState(_) => "protocol",
        E::Tls(_) => "tls",
        E::RequestsDone => "closed",
        _ => "other",
    }
}
