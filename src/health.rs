//! Readiness flags shared by the sources, the writer and the API (bottom layer: it
//! imports nothing of fleetwatch).

use std::sync::atomic::{AtomicBool, AtomicU64};

/// Readiness of the parts the service needs.
#[derive(Debug, Default)]
pub struct Health {
    /// Connected to the broker (ConnAck received, not lost since).
    pub mqtt: AtomicBool,
    /// The subscription was confirmed (SubAck) on the current connection.
    pub subscribed: AtomicBool,
    /// Messages this instance received from the broker.
    pub messages: AtomicU64,
    /// Broker connections made (ConnAcks received), all consumer connections together.
    pub mqtt_connects: AtomicU64,
    /// Times the broker came back without the session fleetwatch expected.
    pub mqtt_sessions_lost: AtomicU64,
    /// The database answers: the last probe (`SELECT 1`) or commit succeeded.
    pub database: AtomicBool,
}
