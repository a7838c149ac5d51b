//! What a source hands the pipeline: a delivery (an MQTT message, the positions a
//! device sent in one frame, or a frame that could not be used) and the handle that
//! acknowledges it once what it carried is stored.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::domain::{CooperativeId, FixCandidate, VehicleId};

/// One unit of input, acknowledged as a whole once stored.
#[derive(Debug)]
pub struct Delivery {
    /// What arrived.
    pub body: Body,
    /// When the source received it.
    pub received_at: DateTime<Utc>,
    /// Sent back to the source after the commit; `None`: nothing to acknowledge.
    pub ack: Option<Ack>,
}

/// What a delivery carries.
#[derive(Debug)]
pub enum Body {
    /// An MQTT message: the topic names the cooperative and the vehicle.
    Message {
        /// The topic.
        topic: String,
        /// The payload (only its first bytes when `too_large`).
        payload: Bytes,
        /// Set when the payload was over the size limit.
        too_large: Option<TooLarge>,
    },
    /// Positions a device sent in one frame or request.
    Device(DeviceReport),
    /// A frame a source could not use (bad checksum, garbage, before login...): kept
    /// as a dead letter.
    Unusable(Unusable),
}

/// Positions from one frame of an identified device.
#[derive(Debug)]
pub struct DeviceReport {
    /// The protocol the device speaks (`gt06`, `jt808`, `teltonika`, `osmand`).
    pub protocol: &'static str,
    /// Where they came from (`protocol/device`): the topic of their dead letters.
    pub source: String,
    /// The connection's remote address, for dead letters' details.
    pub remote: String,
    /// The vehicle the device is fitted to (the device id for an unknown device
    /// accepted as unregistered).
    pub vehicle: VehicleId,
    /// Its cooperative.
    pub cooperative: CooperativeId,
    /// The frame as received, kept when a position in it is rejected.
    pub frame: Bytes,
    /// The positions, in the order the device sent them.
    pub positions: Vec<DevicePosition>,
}

/// A frame that carries nothing usable, with why.
#[derive(Debug)]
pub struct Unusable {
    /// Where it came from (`protocol/device`, or `protocol@ip` before login): the
    /// dead letter's topic.
    pub source: String,
    /// The bytes (at most a bounded prefix of a long run of garbage).
    pub bytes: Bytes,
    /// Low-cardinality reason label.
    pub reason: &'static str,
    /// Human-readable explanation (with the remote address).
    pub detail: String,
}

/// An oversized message's real size and the limit it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// Payload size as received, bytes.
    pub size_bytes: usize,
    /// The configured limit, bytes.
    pub limit_bytes: usize,
}

/// Acknowledges a delivery to its source, after the commit.
#[derive(Debug)]
pub enum Ack {
    /// MQTT: the consumer connection that received the publish, and its ack token
    /// (packet id and QoS only).
    Mqtt(usize, rumqttc::Publish),
    /// A device connection waiting to send its reply: told once stored. A dropped
    /// receiver (the device went away) is fine: the device resends, storage dedups.
    Device(oneshot::Sender<()>),
}

/// An alarm a device reports with a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// Emergency button.
    Sos,
    /// Main power cut or disconnected.
    PowerCut,
    /// Shock or vibration sensor.
    Vibration,
    /// Backup battery low.
    LowBattery,
    /// The device's own overspeed alarm (fleetwatch judges speed itself).
    Overspeed,
    /// Any other alarm, kept as the device's raw code.
    Other(u32),
}

impl Alarm {
    /// Stable name, for logs, metrics and stored events.
    pub fn name(self) -> &'static str {
        match self {
            Alarm::Sos => "sos",
            Alarm::PowerCut => "power_cut",
            Alarm::Vibration => "vibration",
            Alarm::LowBattery => "low_battery",
            Alarm::Overspeed => "device_overspeed",
            Alarm::Other(_) => "other",
        }
    }
}

/// A position as a device reported it, with what the device adds to it.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePosition {
    /// The fix, to be validated like any other (the vehicle comes from the device's
    /// identity, not from the frame).
    pub fix: FixCandidate,
    /// The receiver had a position fix; a position without one repeats the last known
    /// place and must not feed the rules.
    pub gps_valid: bool,
    /// The device marks this position as uploaded from its buffer (blind area).
    pub buffered: bool,
    /// Alarms the device reported with this position.
    pub alarms: Vec<Alarm>,
}
