//! Local time: a fixed offset from UTC (Vietnam: +07:00), as the rules, the roll-ups
//! and the reports count days in it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `utc_offset` is not `"+HH:MM"` / `"-HH:MM"`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("utc_offset must look like \"+07:00\", got {0:?}")]
pub struct OffsetError(pub String);

/// A fixed offset of local time from UTC, written `"+07:00"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UtcOffset {
    seconds: i32,
}

impl UtcOffset {
    /// An offset of `seconds` east of UTC.
    pub fn from_seconds(seconds: i32) -> Self {
        Self { seconds }
    }

    /// Seconds east of UTC.
    pub fn seconds(self) -> i32 {
        self.seconds
    }
}

impl TryFrom<String> for UtcOffset {
    type Error = OffsetError;
    fn try_from(s: String) -> Result<Self, OffsetError> {
        let bad = || OffsetError(s.clone());
        let (sign, rest) = match s.trim().split_at_checked(1) {
            Some(("+", r)) => (1, r),
            Some(("-", r)) => (-1, r),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(bad)?;
        let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if !(0..=14).contains(&h) || !(0..60).contains(&m) {
            return Err(bad());
        }
        Ok(Self::from_seconds(sign * (h * 3600 + m * 60)))
    }
}

impl From<UtcOffset> for String {
    fn from(o: UtcOffset) -> String {
        o.to_string()
    }
}

impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.seconds < 0 { '-' } else { '+' };
        let a = self.seconds.abs();
        write!(f, "{sign}{:02}:{:02}", a / 3600, a % 3600 / 60)
    }
}
