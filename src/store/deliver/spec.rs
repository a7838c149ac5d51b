//! Destinations as the cooperatives describe them (configuration file, API): the
//! raw form, and the checked form the workers use, valid by construction.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::domain::alert::{AlertKind, Level};
use crate::domain::{CooperativeId, VehicleId};

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field is missing, malformed or out of range.
    #[error("{field}: {why}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

fn invalid(field: &'static str, why: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        why: why.into(),
    }
}

/// How alerts reach a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// A signed JSON POST.
    Webhook,
    /// An email over SMTP.
    Email,
}

impl Channel {
    /// Stable name, as stored and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Email => "email",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "webhook" => Some(Self::Webhook),
            "email" => Some(Self::Email),
            _ => None,
        }
    }
}

/// Language of the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// Tiếng Việt.
    #[default]
    Vi,
    /// English.
    En,
}

/// A span of local time, minutes since local midnight, `start` inclusive, `end`
/// exclusive; it wraps midnight when `end <= start` ("22:00-06:00").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QuietHours {
    start_min: u16,
    end_min: u16,
}

impl QuietHours {
    /// Local minutes since midnight where the span starts.
    pub fn start_min(self) -> u16 {
        self.start_min
    }

    /// Local minutes since midnight where the span ends.
    pub fn end_min(self) -> u16 {
        self.end_min
    }

    /// Whether local minute-of-day `m` is inside.
    pub fn contains(self, m: u16) -> bool {
        if self.start_min < self.end_min {
            (self.start_min..self.end_min).contains(&m)
        } else {
            m >= self.start_min || m < self.end_min
        }
    }
}

impl TryFrom<String> for QuietHours {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        let bad = || invalid("quiet_hours", format!("{s:?}: expected \"HH:MM-HH:MM\""));
        let minute = |t: &str| -> Result<u16, SpecError> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let q = QuietHours {
            start_min: minute(a)?,
            end_min: minute(b)?,
        };
        if q.start_min == q.end_min {
            return Err(invalid("quiet_hours", "start and end are the same minute"));
        }
        Ok(q)
    }
}

impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (self.start_min, self.end_min);
        write!(f, "{:02}:{:02}-{:02}:{:02}", a / 60, a % 60, b / 60, b % 60)
    }
}

impl From<QuietHours> for String {
    fn from(q: QuietHours) -> String {
        q.to_string()
    }
}

/// Which alerts a destination gets and how they are presented (stored as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Alert kinds; `None`: every kind.
    pub kinds: Option<Vec<AlertKind>>,
    /// Alerts of at least this level.
    pub min_level: Level,
    /// Overspeed alerts of at least this severity band (1-4); other kinds pass.
    pub min_severity: Option<u8>,
    /// These vehicles only; `None`: every vehicle of the cooperative.
    pub vehicles: Option<Vec<VehicleId>>,
    /// Local time when info events wait (sent when it ends).
    pub quiet_hours: Option<QuietHours>,
    /// Info events are batched into one message per local hour; warnings and
    /// violations go at once.
    pub digest: bool,
    /// Language of the messages.
    pub language: Language,
}

/// A destination as written in `[[deliveries.destinations]]` or an API body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DestinationInput {
    /// The cooperative whose alerts go there (API: a cooperative token's own by default).
    pub cooperative: Option<String>,
    /// A name unique within the cooperative.
    pub name: String,
    /// `webhook` or `email`.
    pub channel: Option<Channel>,
    /// Webhook: `https://` (or `http://`) URL receiving the POSTs.
    pub url: Option<String>,
    /// Webhook: the HMAC-SHA256 key of the signature header (at least 16 characters).
    pub secret: Option<String>,
    /// Email: the recipient address.
    pub email: Option<String>,
    /// Alert kinds (default: all).
    pub kinds: Option<Vec<AlertKind>>,
    /// `info` (default), `warning` or `violation`.
    pub min_level: Option<Level>,
    /// Overspeed: lowest severity band, 1-4 (default: any).
    pub min_severity: Option<u8>,
    /// Vehicle ids (default: all).
    pub vehicles: Option<Vec<String>>,
    /// `"HH:MM-HH:MM"` local time (`rules.utc_offset`): info events wait until it ends.
    pub quiet_hours: Option<String>,
    /// Batch info events into one message per hour.
    pub digest: bool,
    /// `vi` (default) or `en`.
    pub language: Option<Language>,
}

/// A checked webhook secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The key bytes.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a destination's messages go.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A webhook URL and its signing secret.
    Webhook {
        /// The URL (http or https).
        url: url::Url,
        /// The HMAC key.
        secret: Secret,
    },
    /// An email recipient.
    Email {
        /// The address.
        to: lettre::Address,
    },
}

impl Target {
    /// Its channel.
    pub fn channel(&self) -> Channel {
        match self {
            Self::Webhook { .. } => Channel::Webhook,
            Self::Email { .. } => Channel::Email,
        }
    }

    /// The URL or the address, as stored and logged (no secret in it).
    pub fn address(&self) -> String {
        match self {
            Self::Webhook { url, .. } => url.to_string(),
            Self::Email { to } => to.to_string(),
        }
    }

    /// Rebuilds a stored target.
    pub fn from_stored(
        channel: &str,
        target: &str,
        secret: Option<&str>,
    ) -> Result<Self, SpecError> {
        match Channel::parse(channel) {
            Some(Channel::Webhook) => webhook_target(target, secret.unwrap_or_default()),
            Some(Channel::Email) => email_target(target),
            None => Err(invalid("channel", format!("unknown channel {channel:?}"))),
        }
    }
}

fn webhook_target(url: &str, secret: &str) -> Result<Target, SpecError> {
    let u = url::Url::parse(url.trim()).map_err(|e| invalid("url", e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(invalid(
            "url",
            "must be an http:// or https:// URL with a host",
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(invalid(
            "url",
            "must not carry credentials: the signature authenticates",
        ));
    }
    if secret.chars().count() < 16 || secret.len() > 512 {
        return Err(invalid("secret", "must be 16 to 512 characters"));
    }
    Ok(Target::Webhook {
        url: u,
        secret: Secret(secret.to_string()),
    })
}

fn email_target(addr: &str) -> Result<Target, SpecError> {
    let to: lettre::Address = addr
        .trim()
        .parse()
        .map_err(|e: lettre::address::AddressError| invalid("email", e.to_string()))?;
    Ok(Target::Email { to })
}

/// A checked destination, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDestination {
    /// Whose alerts.
    pub cooperative: CooperativeId,
    /// Unique within the cooperative: 1 to 100 characters.
    pub name: String,
    /// Where to.
    pub target: Target,
    /// Which alerts, how.
    pub spec: Spec,
}

impl DestinationInput {
    /// Checks every field; `cooperative` is the one to use when the input names none.
    pub fn validate(self, cooperative: Option<&str>) -> Result<NewDestination, SpecError> {
        let coop = self
            .cooperative
            .as_deref()
            .or(cooperative)
            .ok_or_else(|| invalid("cooperative", "missing"))?;
        let cooperative =
            CooperativeId::parse(coop).map_err(|e| invalid("cooperative", e.to_string()))?;
        let name = self.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(invalid("name", "must be 1 to 100 printable characters"));
        }
        let target = match self.channel {
            Some(Channel::Webhook) => {
                if self.email.is_some() {
                    return Err(invalid("email", "a webhook has a url, not an email"));
                }
                webhook_target(
                    self.url
                        .as_deref()
                        .ok_or_else(|| invalid("url", "missing"))?,
                    self.secret
                        .as_deref()
                        .ok_or_else(|| invalid("secret", "missing"))?,
                )?
            }
            Some(Channel::Email) => {
                if self.url.is_some() || self.secret.is_some() {
                    return Err(invalid(
                        "url",
                        "an email destination has an email, not a url",
                    ));
                }
                email_target(
                    self.email
                        .as_deref()
                        .ok_or_else(|| invalid("email", "missing"))?,
                )?
            }
            None => return Err(invalid("channel", "missing: webhook or email")),
        };
        if self.min_severity.is_some_and(|b| !(1..=4).contains(&b)) {
            return Err(invalid("min_severity", "must be a band from 1 to 4"));
        }
        if self.kinds.as_ref().is_some_and(|k| k.is_empty()) {
            return Err(invalid("kinds", "empty: leave it out for every kind"));
        }
        let vehicles = self
            .vehicles
            .map(|vs| {
                if vs.is_empty() {
                    return Err(invalid("vehicles", "empty: leave it out for every vehicle"));
                }
                vs.iter()
                    .map(|v| VehicleId::parse(v).map_err(|e| invalid("vehicles", e.to_string())))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let quiet_hours = self.quiet_hours.map(QuietHours::try_from).transpose()?;
        Ok(NewDestination {
            cooperative,
            name,
            target,
            spec: Spec {
                kinds: self.kinds,
                min_level: self.min_level.unwrap_or(Level::Info),
                min_severity: self.min_severity,
                vehicles,
                quiet_hours,
                digest: self.digest,
                language: self.language.unwrap_or_default(),
            },
        })
    }
}

/// Whether `ip` is loopback, private, link-local or otherwise not on the public
/// Internet: a webhook there needs `deliveries.allow_private_targets`.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64 // CGNAT 100.64/10
        }
        IpAddr::V6(v) => {
            v.is_loopback()
                || v.is_unspecified()
                || (v.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v.to_ipv4_mapped().is_some_and(|m| is_private(IpAddr::V4(m)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook() -> DestinationInput {
        DestinationInput {
            name: "dispatch".into(),
            channel: Some(Channel::Webhook),
            url: Some("https://hooks.example.vn/fleet".into()),
            secret: Some("0123456789abcdef".into()),
            ..Default::default()
        }
    }

    #[test]
    fn quiet_hours_wrap_midnight() {
        let q = QuietHours::try_from("22:00-06:00".to_string()).unwrap();
        assert!(
            q.contains(22 * 60) && q.contains(23 * 60 + 59) && q.contains(0) && q.contains(359)
        );
        assert!(!q.contains(360) && !q.contains(21 * 60 + 59) && !q.contains(12 * 60));
        let day = QuietHours::try_from("12:00-13:30".to_string()).unwrap();
        assert!(day.contains(12 * 60) && day.contains(13 * 60 + 29) && !day.contains(13 * 60 + 30));
        assert_eq!(day.to_string(), "12:00-13:30");
        for bad in [
            "22:00",
            "25:00-06:00",
            "22:00-22:00",
            "aa:00-06:00",
            "22:60-06:00",
        ] {
            assert!(QuietHours::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn inputs_are_checked() {
        let d = webhook().validate(Some("htx-a")).unwrap();
        assert_eq!(d.cooperative.as_str(), "HTX-A");
        assert_eq!(d.spec.min_level, Level::Info);
        assert_eq!(d.spec.language, Language::Vi);
        let cases: Vec<(DestinationInput, &str)> = vec![
            (
                DestinationInput {
                    secret: Some("short".into()),
                    ..webhook()
                },
                "secret",
            ),
            (
                DestinationInput {
                    url: Some("ftp://x/".into()),
                    ..webhook()
                },
                "url",
            ),
            (
                DestinationInput {
                    url: Some("https://u:p@x/".into()),
                    ..webhook()
                },
                "url",
            ),
            (
                DestinationInput {
                    min_severity: Some(5),
                    ..webhook()
                },
                "min_severity",
            ),
            (
                DestinationInput {
                    vehicles: Some(vec!["a/b".into()]),
                    ..webhook()
                },
                "vehicles",
            ),
            (
                DestinationInput {
                    name: " ".into(),
                    ..webhook()
                },
                "name",
            ),
            (
                DestinationInput {
                    channel: None,
                    ..webhook()
                },
                "channel",
            ),
            (
                DestinationInput {
                    channel: Some(Channel::Email),
                    url: None,
                    secret: None,
                    email: Some("not an address".into()),
                    ..webhook()
                },
                "email",
            ),
        ];
        for (input, field) in cases {
            let e = input.validate(Some("HTX-A")).unwrap_err();
            assert!(e.to_string().starts_with(field), "{field}: {e}");
        }
        assert!(webhook().validate(None).is_err());
    }

    #[test]
    fn private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "203.113.131.1", "2001:4860:4860::8888"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
