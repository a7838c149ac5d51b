//! Identifiers that can only be built valid: vehicle, cooperative and driver ids.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty (after trimming white space).
    #[error("{kind} id is empty")]
    Empty { kind: &'static str },
    /// The id is longer than the maximum length.
    #[error("{kind} id is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    /// The id has a character outside `A-Z a-z 0-9 - _ .`.
    #[error("{kind} id has a character outside A-Z, 0-9, '-', '_', '.': {value:?}")]
    BadChar { kind: &'static str, value: String },
}

/// Ids become MQTT topic segments and database keys: keep them to a safe alphabet
/// (no '/', '+', '#', spaces) and normalise to upper case so "61c-123.45" and
/// "61C-123.45" are one vehicle.
fn parse_id(kind: &'static str, raw: &str, max: usize) -> Result<String, IdError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.chars().count() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(IdError::BadChar {
            kind,
            value: s.chars().take(64).collect(),
        });
    }
    Ok(s.to_ascii_uppercase())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        // Shared text: ids are cloned into every alert, live state and checkpoint,
        // and a clone is a reference count, not an allocation.
        // (Arc's equality compares the pointers first.)
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Parses and normalises an id (upper case, safe alphabet).
            pub fn parse(raw: &str) -> Result<Self, IdError> {
                parse_id($kind, raw, $max).map(|s| Self(s.into()))
            }
            /// The normalised id.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A vehicle, usually its registration plate (e.g. `61C-123.45`).
    VehicleId, "vehicle", 32
);
id_type!(
    /// A transport cooperative (or any fleet operator).
    CooperativeId, "cooperative", 64
);
id_type!(
    /// A driver, by licence or ID-card number read at the device's card reader.
    DriverId, "driver", 32
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_trims() {
        assert_eq!(
            VehicleId::parse(" 61c-123.45 ").unwrap().as_str(),
            "61C-123.45"
        );
    }

    #[test]
    fn rejects_topic_wildcards_and_slashes() {
        for bad in ["a/b", "a+", "#", "a b", ""] {
            assert!(VehicleId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rejects_too_long() {
        assert!(matches!(
            VehicleId::parse(&"A".repeat(33)),
            Err(IdError::TooLong { .. })
        ));
    }
}
