//! What validation makes of each fix or element: an accepted fix with its quality
//! flags, or a reject kept as a dead letter. The writer stores both.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{CooperativeId, Fix};

/// Quality flags on an accepted fix, stored as a bit set (`fixes.flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Flags(pub i16);

impl Flags {
    /// Implies an impossible speed from the vehicle's previous accepted fix.
    pub const JUMP: i16 = 1;
    /// Few satellites, high HDOP, or a large accuracy radius.
    pub const POOR_ACCURACY: i16 = 2;
    /// Vehicle not in the registry.
    pub const UNREGISTERED: i16 = 4;
    /// Older than a fix already received for the same vehicle.
    pub const OUT_OF_ORDER: i16 = 8;
    /// Older than a fix the rules already applied (beyond the reorder window): data
    /// quality only; applied by a recomputation of its vehicle. Set by the rules stage.
    pub const LATE: i16 = 16;
    /// The device did not know its speed (OwnTracks `vel` -1 or absent): the stored
    /// speed is the average from the vehicle's previous accepted fix (0 for its first).
    pub const SPEED_DERIVED: i16 = 32;

    /// Whether `flag` is set.
    pub fn has(self, flag: i16) -> bool {
        self.0 & flag != 0
    }
    /// Names of the set flags, for metrics labels.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [
            (Self::JUMP, "jump"),
            (Self::POOR_ACCURACY, "poor_accuracy"),
            (Self::UNREGISTERED, "unregistered"),
            (Self::OUT_OF_ORDER, "out_of_order"),
            (Self::LATE, "late"),
            (Self::SPEED_DERIVED, "speed_derived"),
        ]
        .into_iter()
        .filter(move |(f, _)| self.has(*f))
        .map(|(_, n)| n)
    }
}

/// A fix that passed validation, ready to store.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The fix.
    pub fix: Fix,
    /// Cooperative from the topic.
    pub cooperative: CooperativeId,
    /// Quality flags.
    pub flags: Flags,
    /// When fleetwatch received the message.
    pub received_at: DateTime<Utc>,
    /// MQTT topic it came on and the bytes of the fix (the payload, or one element of
    /// a batch): kept as a dead letter if the database refuses the row.
    pub source: (String, Bytes),
}

/// A message or element that failed, kept as a dead letter.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// MQTT topic it came on.
    pub topic: String,
    /// The bytes that failed (the whole payload, or one element of a batch).
    pub payload: Bytes,
    /// Low-cardinality reason label.
    pub reason: &'static str,
    /// Human-readable explanation.
    pub detail: String,
    /// When fleetwatch received the message.
    pub received_at: DateTime<Utc>,
}

/// Outcome for one fix or element.
#[derive(Debug, Clone)]
pub enum Record {
    /// Stored in `fixes`.
    Accepted(Accepted),
    /// Stored in `dead_letters`.
    Rejected(Rejected),
}
