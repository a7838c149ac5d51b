//! Typed settings: built-in defaults, then a TOML file, then `FLEETWATCH__SECTION__KEY`
//! environment overrides (e.g. `FLEETWATCH__MQTT__URL=mqtt://broker:1883`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::Vehicle;
use crate::geo::GeoConfig;
use crate::pipeline::validate::ValidateConfig;
use crate::rules::RulesConfig;
use crate::sources::gateway::GatewayConfig;
use crate::sources::mqtt::MqttConfig;
use crate::store::deliver::DeliveriesConfig;
use crate::store::lease::HaConfig;
use crate::store::migrate::LayoutConfig;
use crate::store::writer::BatchConfig;

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:pass@host:port/db` of an external PostgreSQL or TimescaleDB.
    /// Empty: a private server started by fleetwatch in `data_dir`.
    pub url: String,
    /// Directory fleetwatch owns for the private server.
    pub data_dir: PathBuf,
    /// Database name on the private server.
    pub name: String,
    /// Storage layout (TimescaleDB, retention).
    pub layout: LayoutConfig,
    /// Milliseconds between database probes (`SELECT 1`) that feed `/readyz`.
    pub probe_interval_ms: u64,
    /// A probe not answered within this many milliseconds marks the database down.
    pub probe_timeout_ms: u64,
    /// API: longest wait for a pooled connection, or to open a new one, milliseconds.
    pub api_wait_timeout_ms: u64,
    /// API: `statement_timeout` of its queries, milliseconds. A request still waiting
    /// for the database this long plus the wait timeout after it started gets a 503
    /// (a hung server cannot enforce its own timeout).
    pub api_statement_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            data_dir: PathBuf::from("data"),
            name: "fleetwatch".into(),
            layout: LayoutConfig::default(),
            probe_interval_ms: 2_000,
            probe_timeout_ms: 2_000,
            api_wait_timeout_ms: 2_000,
            api_statement_timeout_ms: 30_000,
        }
    }
}

/// The embedded broker, used when `mqtt.url` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedBrokerConfig {
    /// Port on 127.0.0.1; when taken, a free port is used (logged at start). 0: any.
    pub port: u16,
}

impl Default for EmbeddedBrokerConfig {
    fn default() -> Self {
        Self { port: 1883 }
    }
}

/// HTTP endpoints (health, readiness, metrics, API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Longest time range of one track or trips request, days.
    pub max_track_days: u32,
    /// Tile URL template of the map page (`{z}`, `{x}`, `{y}`, optional `{s}`);
    /// empty: no background tiles (routes and zones are still drawn).
    pub map_tile_url: String,
    /// Attribution shown under the tiles (HTML, as the tile provider requires).
    pub map_tile_attribution: String,
    /// Track pages and compliance reports one token may have in progress at once; one
    /// more is refused with 429 (`Retry-After: 1`).
    pub max_heavy_requests_per_token: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_track_days: 31,
            map_tile_url: "https://tile.openstreetmap.org/{z}/{x}/{y}.png".into(),
            map_tile_attribution: "&copy; <a href=\"https://www.openstreetmap.org/copyright\">OpenStreetMap</a> contributors".into(),
            max_heavy_requests_per_token: 4,
        }
    }
}

/// All settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Broker connection and topics.
    pub mqtt: MqttConfig,
    /// The embedded broker.
    pub embedded_broker: EmbeddedBrokerConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// Fix validation.
    pub validation: ValidateConfig,
    /// Write batching.
    pub batch: BatchConfig,
    /// HTTP server.
    pub http: HttpConfig,
    /// Seconds to finish in-flight work on shutdown before giving up (unacked
    /// messages are redelivered by the broker).
    pub shutdown_deadline_s: u64,
    /// Routes and zones.
    pub geo: GeoConfig,
    /// Compliance rules (limits, durations, bands; docs/rules.md defaults).
    pub rules: RulesConfig,
    /// Ingest only: store fixes without running the rules (benchmarks, a second
    /// ingest-only instance).
    pub disable_rules: bool,
    /// Rule state checkpoints and restart replay.
    pub checkpoint: CheckpointConfig,
    /// Topic of published alerts (`{cooperative}`, `{vehicle}` placeholders).
    pub alert_topic: String,
    /// Vehicle registry.
    pub vehicles: Vec<Vehicle>,
    /// Device listeners (GT06, JT/T 808, Teltonika, OsmAnd).
    pub gateway: GatewayConfig,
    /// Alerts to the cooperatives' webhooks and mailboxes.
    pub deliveries: DeliveriesConfig,
    /// Active/standby failover (off: a single instance, no lease).
    pub ha: HaConfig,
}

/// How often rule state is saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Seconds between checkpoints of the rules' per-vehicle state.
    pub interval_s: u64,
    /// No longer used (older files still load; a warning is logged): a vehicle
    /// with no checkpoint is rebuilt from its local week, not from a wall-clock horizon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_horizon_h: Option<u32>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            interval_s: 30,
            replay_horizon_h: None,
        }
    }
}

/// Errors loading settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment did not make valid settings.
    #[error("configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    /// Rule parameters out of range.
    #[error("configuration: {0}")]
    Rules(#[from] crate::rules::RulesConfigError),
    /// The named file does not exist.
    #[error("configuration file {0} not found")]
    Missing(PathBuf),
    /// A vehicle's device id is malformed or fitted to two vehicles.
    #[error("configuration: vehicle {vehicle}: {why}")]
    Device {
        /// The vehicle.
        vehicle: String,
        /// What is wrong.
        why: String,
    },
}

impl Settings {
    /// Loads defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Missing(f.to_path_buf()));
            }
            b = b.add_source(config::File::from(f));
        }
        b = b.add_source(
            config::Environment::with_prefix("FLEETWATCH")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let mut s: Settings = b.build()?.try_deserialize()?;
        if s.shutdown_deadline_s == 0 {
            s.shutdown_deadline_s = 15;
        }
        if s.alert_topic.is_empty() {
            s.alert_topic = "fleet/{cooperative}/{vehicle}/alert".into();
        }
        s.rules.validate()?;
        let mut fitted = std::collections::HashMap::new();
        for v in &mut s.vehicles {
            let Some(raw) = &v.device_id else { continue };
            let err = |why: String| ConfigError::Device {
                vehicle: v.id.to_string(),
                why,
            };
            let d = crate::domain::vehicle::device_id(raw).map_err(err)?;
            if let Some(other) = fitted.insert(d.clone(), v.id.clone()) {
                return Err(err(format!("device {d} is also fitted to {other}")));
            }
            v.device_id = Some(d);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fleetwatch.toml");
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.mqtt.topic, "fleet/{cooperative}/{vehicle}/fix");
        assert!(!s.vehicles.is_empty());
        // The file states the defaults of [deliveries] (its destinations are examples).
        assert_eq!(s.deliveries, DeliveriesConfig::default());
        assert_eq!(s.ha, HaConfig::default());
    }

    /// The Debian package's config (`ops/debian/fleetwatch.toml`, installed as
    /// /etc/fleetwatch/fleetwatch.toml): it loads, keeps the state where the unit may
    /// write, and registers no example fleet.
    #[test]
    fn packaged_config_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/debian/fleetwatch.toml");
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.database.data_dir, Path::new("/var/lib/fleetwatch"));
        assert!(s.database.url.is_empty() && s.mqtt.url.is_empty());
        assert!(s.vehicles.is_empty());
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
    }

    /// `docs/rules.md` ends with a table of every rules and validation setting and
    /// its default: it must say what the code does, and leave none out.
    #[test]
    fn docs_rules_md_states_the_defaults_of_the_code() {
        use serde_json::Value;
        fn flatten(prefix: &str, v: &Value, out: &mut std::collections::BTreeMap<String, Value>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        flatten(&format!("{prefix}.{k}"), v, out);
                    }
                }
                v => {
                    out.insert(prefix.to_string(), v.clone());
                }
            }
        }
        let s = Settings::default();
        let mut code = std::collections::BTreeMap::new();
        flatten("rules", &serde_json::to_value(&s.rules).unwrap(), &mut code);
        flatten(
            "validation",
            &serde_json::to_value(&s.validation).unwrap(),
            &mut code,
        );
        let mut layout = std::collections::BTreeMap::new();
        flatten(
            "database.layout",
            &serde_json::to_value(&s.database.layout).unwrap(),
            &mut layout,
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/rules.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let mut stated = std::collections::BTreeMap::new();
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let key = cells[1].trim_matches('`').to_string();
            let value = match cells[2] {
                "none" => Value::Null,
                v => serde_json::from_str(v).unwrap_or_else(|e| panic!("{key}: {v}: {e}")),
            };
            assert!(stated.insert(key.clone(), value).is_none(), "{key} twice");
        }
        let mut wrong = Vec::new();
        for (key, value) in &stated {
            let Some(actual) = code.get(key).or_else(|| layout.get(key)) else {
                wrong.push(format!("{key}: no such setting"));
                continue;
            };
            let same = match (value.as_f64(), actual.as_f64()) {
                (Some(a), Some(b)) => a == b,
                _ => value == actual,
            };
            if !same {
                wrong.push(format!("{key}: docs say {value}, the code {actual}"));
            }
        }
        for (key, actual) in &code {
            if !stated.contains_key(key) {
                wrong.push(format!("{key} (default {actual}) is not in docs/rules.md"));
            }
        }
        assert!(wrong.is_empty(), "docs/rules.md:\n{}", wrong.join("\n"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = std::env::temp_dir().join(format!("fw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.toml");
        std::fs::write(&f, "[mqtt]\nurll = \"x\"\n").unwrap();
        let e = Settings::load(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("urll"), "{e}");
    }
}
