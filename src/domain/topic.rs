//! Topic layout: `fleet/{cooperative}/{vehicle}/fix` by default, configurable.

use super::{CooperativeId, IdError, VehicleId};

/// Why a topic pattern or a concrete topic was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopicError {
    /// The configured pattern lacks a placeholder or has a wildcard.
    #[error("topic pattern {0:?} must contain {{cooperative}} and {{vehicle}} as whole levels and no wildcards")]
    BadPattern(String),
    /// A received topic does not have the pattern's shape.
    #[error("topic {0:?} does not match the pattern")]
    NoMatch(String),
    /// A level in the cooperative or vehicle position is not a valid id.
    #[error("topic has an invalid id: {0}")]
    BadId(#[from] IdError),
}

#[derive(Debug, Clone, PartialEq)]
enum Level {
    Literal(String),
    Cooperative,
    Vehicle,
}

/// A parsed topic pattern such as `fleet/{cooperative}/{vehicle}/fix`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicPattern {
    levels: Vec<Level>,
}

impl TopicPattern {
    /// Parses a pattern; both placeholders must appear once, each as a whole level.
    pub fn parse(pattern: &str) -> Result<Self, TopicError> {
        let bad = || TopicError::BadPattern(pattern.to_string());
        let levels: Vec<Level> = pattern
            .split('/')
            .map(|l| match l {
                "{cooperative}" => Ok(Level::Cooperative),
                "{vehicle}" => Ok(Level::Vehicle),
                l if l.contains(['+', '#', '{', '}']) => Err(bad()),
                l => Ok(Level::Literal(l.to_string())),
            })
            .collect::<Result<_, _>>()?;
        let count = |want: &Level| levels.iter().filter(|l| *l == want).count();
        if count(&Level::Cooperative) != 1 || count(&Level::Vehicle) != 1 {
            return Err(bad());
        }
        Ok(Self { levels })
    }

    /// The subscription filter: placeholders become `+`.
    pub fn filter(&self) -> String {
        self.render("+", "+")
    }

    /// The concrete topic for one vehicle.
    pub fn topic(&self, cooperative: &CooperativeId, vehicle: &VehicleId) -> String {
        self.render(cooperative.as_str(), vehicle.as_str())
    }

    fn render(&self, coop: &str, vehicle: &str) -> String {
        let parts: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Cooperative => coop,
                Level::Vehicle => vehicle,
            })
            .collect();
        parts.join("/")
    }

    /// Extracts cooperative and vehicle from a received topic.
    pub fn parse_topic(&self, topic: &str) -> Result<(CooperativeId, VehicleId), TopicError> {
        let parts: Vec<&str> = topic.split('/').collect();
        if parts.len() != self.levels.len() {
            return Err(TopicError::NoMatch(topic.to_string()));
        }
        let (mut coop, mut vehicle) = (None, None);
        for (level, part) in self.levels.iter().zip(parts) {
            match level {
                Level::Literal(s) if s == part => {}
                Level::Literal(_) => return Err(TopicError::NoMatch(topic.to_string())),
                Level::Cooperative => coop = Some(CooperativeId::parse(part)?),
                Level::Vehicle => vehicle = Some(VehicleId::parse(part)?),
            }
        }
        // Both are set: parse() guarantees each placeholder occurs once.
        match (coop, vehicle) {
            (Some(c), Some(v)) => Ok((c, v)),
            _ => Err(TopicError::NoMatch(topic.to_string())),
        }
    }
}

/// Adds a shared-subscription prefix (`$share/{group}/`) when a group is configured.
pub fn subscription(filter: &str, share_group: Option<&str>) -> String {
    match share_group {
        Some(g) if !g.is_empty() => format!("$share/{g}/{filter}"),
        _ => filter.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pattern_round_trips() {
        let p = TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap();
        assert_eq!(p.filter(), "fleet/+/+/fix");
        let (c, v) = p.parse_topic("fleet/htx-tdm/61B-024.17/fix").unwrap();
        assert_eq!((c.as_str(), v.as_str()), ("HTX-TDM", "61B-024.17"));
        assert_eq!(p.topic(&c, &v), "fleet/HTX-TDM/61B-024.17/fix");
    }

    #[test]
    fn rejects_other_shapes() {
        let p = TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap();
        for t in [
            "fleet/a/b/alert",
            "fleet/a/fix",
            "fleet/a/b/c/fix",
            "other/a/b/fix",
        ] {
            assert!(
                matches!(p.parse_topic(t), Err(TopicError::NoMatch(_))),
                "{t}"
            );
        }
        assert!(matches!(
            p.parse_topic("fleet/a/b c/fix"),
            Err(TopicError::BadId(_))
        ));
    }

    #[test]
    fn pattern_needs_both_placeholders_and_no_wildcards() {
        for bad in [
            "fleet/{vehicle}/fix",
            "fleet/+/{cooperative}/{vehicle}",
            "fleet/{vehicle}x/{cooperative}",
        ] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(TopicPattern::parse("{vehicle}/gps/{cooperative}").is_ok());
    }

    #[test]
    fn shared_subscription_prefix() {
        assert_eq!(
            subscription("fleet/+/+/fix", Some("fw")),
            "$share/fw/fleet/+/+/fix"
        );
        assert_eq!(subscription("fleet/+/+/fix", None), "fleet/+/+/fix");
    }
}
