//! `fleetwatch replay`: a stored track published to MQTT again, with its original
//! spacing divided by a speed factor (reproducing incidents, testing downstream
//! systems); or, with `--rules`, run through the rules offline and compared with the
//! alerts the service stored.
//!
//! The rules are deterministic on event time, so the same fixes through the same
//! configuration give the same alerts with the same ids, provided the rule state at
//! the start of the range is the live one. That state is rebuilt from the stored
//! fixes before the range ([`warmup_start`]), and the fixes after the range are read
//! until the range's alerts are final ([`OfflineRules::settled`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, FixedOffset, SecondsFormat, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;

use crate::config::Settings;
use crate::demo::Publisher;
use crate::domain::{CooperativeId, Fix, IdError, VehicleId};
use crate::geo::GeoError;
use crate::pipeline::decode::canonical;
use crate::pipeline::topic::{TopicError, TopicPattern};
use crate::pipeline::{self, SKIPPED_BY_RULES};
use crate::rules::{Alert, AlertKind, AlertStatus, Engine, RulesConfig};
use crate::sources::mqtt::{MqttConfig, MqttError};
use crate::store::StoreError;

/// Options of `fleetwatch replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayOptions {
    /// The vehicle whose track is replayed.
    #[arg(long)]
    pub vehicle: String,
    /// Start of the range, RFC 3339 (inclusive), e.g. 2026-11-24T08:00:00+07:00.
    #[arg(long, value_parser = parse_time)]
    pub from: DateTime<Utc>,
    /// End of the range, RFC 3339 (exclusive).
    #[arg(long, value_parser = parse_time)]
    pub to: DateTime<Utc>,
    /// Event time runs this many times faster than it did; `0` or `max`: as fast as
    /// the broker takes it.
    #[arg(long, default_value = "1")]
    pub speed: Speed,
    /// Broker to publish to (default: the configured `mqtt.url`).
    #[arg(long)]
    pub broker: Option<String>,
    /// Topic to publish on, optionally with `{cooperative}` and `{vehicle}` (default:
    /// the configured `mqtt.topic` with the cooperative stored with each fix).
    #[arg(long)]
    pub topic: Option<String>,
    /// Publish nothing: run the stored fixes through the rules offline, print the
    /// alerts and compare them with the stored ones (exit status 1 if they differ).
    #[arg(long)]
    pub rules: bool,
    /// How `--rules` prints the alerts.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Routes and zones for `--rules`: those the service recorded when it made the
    /// stored alerts (default), or the configuration's files as they are now.
    #[arg(long, value_enum, default_value_t = GeoSource::Recorded)]
    pub geo: GeoSource,
    /// TOML configuration file (database, broker, rules, routes and zones, registry).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// Where `--rules` takes its routes and zones from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GeoSource {
    /// The geography the service recorded in the database when it wrote the range's
    /// alerts (the configuration's files if none was recorded).
    Recorded,
    /// The configuration's `[geo]` files as they are now.
    Files,
}

/// How alerts are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns, local time.
    Table,
    /// One JSON object per line.
    Jsonl,
}

/// Errors of a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// `--to` is not after `--from`.
    #[error("empty range: --to ({to}) must be after --from ({from})")]
    EmptyRange {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// A speed that is neither a positive factor, `0` nor `max`.
    #[error("speed {0:?}: expected a factor of at least 0.001, 0 or max")]
    BadSpeed(String),
    /// An invalid vehicle id.
    #[error("vehicle: {0}")]
    Vehicle(#[from] IdError),
    /// A `--topic` with wildcards, or an unusable topic pattern.
    #[error("topic: {0}")]
    Topic(String),
    /// Nowhere to publish.
    #[error("no broker to publish to: pass --broker mqtt://host:1883 or set mqtt.url (replay does not start the embedded broker: nobody would be subscribed to it)")]
    NoBroker,
    /// The broker URL or TLS settings are unusable.
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// The MQTT client stopped accepting messages.
    #[error("publishing: {0}")]
    Publish(String),
    /// Reading the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Routes or zones could not be loaded.
    #[error("loading routes and zones: {0}")]
    Geo(#[from] GeoError),
    /// A recorded geography could not be read.
    #[error(transparent)]
    GeoVersion(#[from] crate::store::geo_versions::GeoVersionError),
}

impl From<tokio_postgres::Error> for ReplayError {
    fn from(e: tokio_postgres::Error) -> Self {
        ReplayError::Store(StoreError::Db(e))
    }
}

impl From<TopicError> for ReplayError {
    fn from(e: TopicError) -> Self {
        ReplayError::Topic(e.to_string())
    }
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e} (expected RFC 3339, e.g. 2026-11-24T08:00:00+07:00)"))
}

/// How fast event time runs during a replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// Event-time spacing divided by this factor (at least 0.001).
    Factor(f64),
    /// No waiting: as fast as the broker acknowledges.
    Max,
}

impl std::str::FromStr for Speed {
    type Err = ReplayError;
    fn from_str(s: &str) -> Result<Self, ReplayError> {
        match s.trim() {
            "max" | "0" => Ok(Speed::Max),
            t => match t.parse::<f64>() {
                Ok(0.0) => Ok(Speed::Max),
                // Below 0.001 a pause would outlast any replay worth running.
                Ok(k) if k.is_finite() && k >= 0.001 => Ok(Speed::Factor(k)),
                _ => Err(ReplayError::BadSpeed(s.to_string())),
            },
        }
    }
}

/// A vehicle's track between two instants: `[from, to)`, event time.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackRange {
    /// The vehicle.
    pub vehicle: VehicleId,
    /// First instant included.
    pub from: DateTime<Utc>,
    /// First instant excluded.
    pub to: DateTime<Utc>,
}

impl TrackRange {
    /// A non-empty range.
    pub fn new(
        vehicle: VehicleId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Self, ReplayError> {
        if to <= from {
            return Err(ReplayError::EmptyRange { from, to });
        }
        Ok(Self { vehicle, from, to })
    }

    fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from <= t && t < self.to
    }
}

/// A stored fix with the cooperative of the topic it came in on.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFix {
    /// The fix as validated when received.
    pub fix: Fix,
    /// Cooperative from the topic it was received on.
    pub cooperative: CooperativeId,
}

/// Rows per page: memory stays flat however long the range.
const PAGE_ROWS: i64 = 2_000;

/// One vehicle's stored fixes in time order, read a page at a time by keyset
/// (`ts > last`) rather than a server-side cursor: a replay at speed 1 may take hours,
/// and a cursor would hold a transaction (and vacuum) open all that time.
struct Pager {
    vehicle: String,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    skip_flags: i16,
    last: Option<DateTime<Utc>>,
    page: VecDeque<StoredFix>,
    exhausted: bool,
}

impl Pager {
    fn new(
        vehicle: &VehicleId,
        from: DateTime<Utc>,
        to: Option<DateTime<Utc>>,
        skip_flags: i16,
    ) -> Self {
        Self {
            vehicle: vehicle.to_string(),
            from,
            to,
            skip_flags,
            last: None,
            page: VecDeque::new(),
            exhausted: false,
        }
    }

    /// Loads pages until one has a readable fix or the range is read.
    async fn fill(&mut self, client: &Client) -> Result<(), ReplayError> {
        while self.page.is_empty() && !self.exhausted {
            self.fetch(client).await?;
        }
        Ok(())
    }

    async fn fetch(&mut self, client: &Client) -> Result<(), ReplayError> {
        // Fixed fragments only: the values are all parameters.
        let lower = if self.last.is_some() { ">" } else { ">=" };
        let upper = if self.to.is_some() {
            "AND ts < $3"
        } else {
            "AND $3::timestamptz IS NULL"
        };
        let sql = format!(
            "SELECT vehicle_id, ts, lat_e7 / 1e7::float8, lon_e7 / 1e7::float8, speed_kmh, heading_deg, driver_id, ignition,
                    satellites, hdop, odometer_m, received_at, cooperative_id
             FROM fixes
             WHERE vehicle_id = $1 AND ts {lower} $2 {upper} AND flags & $4 = 0
             ORDER BY ts LIMIT $5"
        );
        let after = self.last.unwrap_or(self.from);
        let rows = client
            .query(
                &sql,
                &[
                    &self.vehicle,
                    &after,
                    &self.to,
                    &self.skip_flags,
                    &PAGE_ROWS,
                ],
            )
            .await?;
        self.exhausted = (rows.len() as i64) < PAGE_ROWS;
        let limits = pipeline::stored_fix_limits();
        for row in &rows {
            self.last = Some(row.get(1));
            let fix = pipeline::fix_from_row(row, &limits);
            let coop = CooperativeId::parse(row.get::<_, &str>(12));
            match (fix, coop) {
                (Some(fix), Ok(cooperative)) => self.page.push_back(StoredFix { fix, cooperative }),
                _ => {
                    tracing::warn!(vehicle = %self.vehicle, ts = %row.get::<_, DateTime<Utc>>(1), "unreadable stored fix skipped")
                }
            }
        }
        Ok(())
    }

    async fn next(&mut self, client: &Client) -> Result<Option<StoredFix>, ReplayError> {
        self.fill(client).await?;
        Ok(self.page.pop_front())
    }
}

/// Several vehicles' stored fixes merged in `(ts, vehicle)` order (the order of
/// `pipeline::restore`), each read by its own [`Pager`] on the primary key.
struct Merged {
    pagers: Vec<Pager>,
}

impl Merged {
    async fn next(&mut self, client: &Client) -> Result<Option<StoredFix>, ReplayError> {
        for p in &mut self.pagers {
            p.fill(client).await?;
        }
        let head = self
            .pagers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.page.front().map(|f| (f.fix.ts(), f.fix.vehicle(), i)))
            .min()
            .map(|(_, _, i)| i);
        Ok(head.and_then(|i| self.pagers[i].page.pop_front()))
    }
}

/// Where and how a replay publishes.
#[derive(Debug, Clone)]
pub struct PublishTarget {
    /// Broker URL.
    pub url: String,
    /// Client settings (credentials, CA file, client id).
    pub mqtt: MqttConfig,
    /// Topic of each fix.
    pub topic: TopicChoice,
    /// Pace.
    pub speed: Speed,
}

/// The topic a replayed fix is published on.
#[derive(Debug, Clone)]
pub enum TopicChoice {
    /// The topic it came in on: the pattern with the stored cooperative and vehicle.
    /// (The stored ids are normalised to upper case; a device that wrote its topic in
    /// lower case gets it back in upper case, which the service reads the same.)
    Pattern(TopicPattern),
    /// A fixed topic; `{cooperative}` and `{vehicle}` are filled in if present.
    Template(String),
}

impl TopicChoice {
    /// `--topic` if given, else the configured pattern.
    pub fn new(template: Option<&str>, pattern: &str) -> Result<Self, ReplayError> {
        match template {
            None => Ok(TopicChoice::Pattern(TopicPattern::parse(pattern)?)),
            Some(t) if t.is_empty() || t.contains(['+', '#']) => Err(ReplayError::Topic(format!(
                "{t:?}: a topic to publish on cannot be empty nor have wildcards"
            ))),
            Some(t) => Ok(TopicChoice::Template(t.to_string())),
        }
    }

    /// The topic for a fix of `vehicle` received for `cooperative`.
    pub fn topic(&self, cooperative: &CooperativeId, vehicle: &VehicleId) -> String {
        match self {
            TopicChoice::Pattern(p) => p.topic(cooperative, vehicle),
            TopicChoice::Template(t) => t
                .replace("{cooperative}", cooperative.as_str())
                .replace("{vehicle}", vehicle.as_str()),
        }
    }
}

/// What a publishing replay did.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishSummary {
    /// Fixes published.
    pub fixes: u64,
    /// Of those, acknowledged by the broker.
    pub acked: u64,
    /// Event time of the first and last fix published.
    pub span: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Wall time from the first publication to the last acknowledgement.
    pub wall: Duration,
    /// Stopped early (Ctrl-C) before the end of the range.
    pub interrupted: bool,
}

impl PublishSummary {
    /// One line for people: fixes, event-time span, wall time.
    pub fn line(&self, range: &TrackRange) -> String {
        let span = match self.span {
            Some((a, b)) => format!(
                "{} → {} ({} of event time)",
                a.to_rfc3339_opts(SecondsFormat::Secs, true),
                b.to_rfc3339_opts(SecondsFormat::Secs, true),
                human((b - a).to_std().unwrap_or_default())
            ),
            None => "no fixes stored in the range".to_string(),
        };
        format!(
            "{}{} fixes of {} published, {} acked by the broker; {span}; wall time {}",
            if self.interrupted {
                "interrupted: "
            } else {
                ""
            },
            self.fixes,
            range.vehicle,
            self.acked,
            human(self.wall),
        )
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        let s = s.round() as u64;
        format!("{}h {:02}m {:02}s", s / 3600, s / 60 % 60, s % 60)
    }
}

/// Publishes the stored fixes of `range` (every one, flagged or not, in time order)
/// as canonical JSON, QoS 1, sleeping the event-time spacing ÷ speed between them
/// (scheduled from the start instant, so waits never add up to drift), and returns
/// once the broker has acknowledged them all, or `stop` resolves.
pub async fn publish_track(
    client: &Client,
    range: &TrackRange,
    target: &PublishTarget,
    stop: impl Future<Output = ()>,
) -> Result<PublishSummary, ReplayError> {
    let total: i64 = client
        .query_one(
            "SELECT count(*) FROM fixes WHERE vehicle_id = $1 AND ts >= $2 AND ts < $3",
            &[&range.vehicle.as_str(), &range.from, &range.to],
        )
        .await?
        .get(0);
    let publisher = Publisher::connect_with(&target.mqtt, &target.url)?;
    let pb = ProgressBar::new(total.max(0) as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} fixes ({per_sec}) {msg}",
        )
        .expect("static template"),
    );
    let mut pager = Pager::new(&range.vehicle, range.from, Some(range.to), 0);
    tokio::pin!(stop);
    let started = tokio::time::Instant::now();
    let mut span: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    let mut sent = 0u64;
    let mut interrupted = false;
    while let Some(f) = pager.next(client).await? {
        let ts = f.fix.ts();
        let first = span.map_or(ts, |s| s.0);
        if let Speed::Factor(k) = target.speed {
            let offset_s = (ts - first).num_microseconds().unwrap_or(0) as f64 / 1e6 / k;
            let due = Duration::try_from_secs_f64(offset_s.max(0.0))
                .ok()
                .and_then(|d| started.checked_add(d))
                .unwrap_or(started + Duration::from_secs(100 * 365 * 86_400));
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = &mut stop => { interrupted = true; break; }
            }
        }
        let topic = target.topic.topic(&f.cooperative, f.fix.vehicle());
        tokio::select! {
            r = publisher.publish(topic, canonical::encode(&f.fix)) => {
                r.map_err(|e| ReplayError::Publish(format!("{e:#}")))?;
            }
            _ = &mut stop => { interrupted = true; break; }
        }
        span = Some((first, ts));
        sent += 1;
        pb.set_position(sent);
        pb.set_message(format!("acked {}", publisher.acked.load(Ordering::Relaxed)));
    }
    // Every message acknowledged before we say done; a second Ctrl-C cannot be
    // awaited (the future is spent), so after an interruption the wait is bounded.
    let acked = publisher.acked.clone();
    let ack_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < sent {
        if interrupted && tokio::time::Instant::now() >= ack_deadline {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = &mut stop, if !interrupted => interrupted = true,
        }
        pb.set_message(format!("acked {}", acked.load(Ordering::Relaxed)));
    }
    let wall = started.elapsed();
    publisher.finish(sent, Duration::from_secs(1)).await;
    let acked = acked.load(Ordering::Relaxed).min(sent);
    pb.finish_with_message(format!("acked {acked}"));
    Ok(PublishSummary {
        fixes: sent,
        acked,
        span,
        wall,
        interrupted,
    })
}

/// Extra day of fixes read before the local week's start (see [`warmup_start`]).
const WARMUP_MARGIN: chrono::Duration = chrono::Duration::days(1);

/// Where the rules must start reading stored fixes so that the alerts starting at or
/// after `from` come out as the service computed them: midnight (local time,
/// `rules.utc_offset`) starting the ISO week that contains `from`, less one day.
///
/// Why this is exact for driving time: weekly driving counts from the local week's
/// start and daily driving from local midnight (later than or at that start), so the
/// accumulators at `from` are the live ones once every driving interval since the
/// week began is seen; the margin day includes the fix before the week's start, whose
/// interval straddles it. Continuous driving in progress at the start of the read is
/// undercounted, but a continuous-driving alert starts where its run started (before
/// `from`), so none of the alerts reported is affected, and after the next 15-min
/// break the run state is the live one. The other rules remember only the current
/// episode (overspeed, off route, zone stays): the margin day gives them a day of
/// context, enough unless one episode lasted more than a day.
pub fn warmup_start(from: DateTime<Utc>, cfg: &RulesConfig) -> DateTime<Utc> {
    let offset = FixedOffset::east_opt(cfg.utc_offset.seconds())
        .unwrap_or(FixedOffset::east_opt(0).expect("zero offset"));
    let local = from.with_timezone(&offset);
    let monday =
        local.date_naive() - chrono::Days::new(u64::from(local.weekday().num_days_from_monday()));
    let week_start = monday
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_local_timezone(offset)
        .single()
        .expect("a fixed offset has no gaps")
        .with_timezone(&Utc);
    week_start - WARMUP_MARGIN
}

/// An alert as stored and compared: the columns of `alerts` that the rules decide.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRow {
    /// Stable id.
    pub id: String,
    /// `overspeed`, `continuous_driving` ...
    pub kind: String,
    /// `info`, `warning`, `violation`.
    pub level: String,
    /// `open` or `closed`.
    pub status: String,
    /// Start of the episode (event time).
    pub start: DateTime<Utc>,
    /// End of the episode, when closed.
    pub end: Option<DateTime<Utc>>,
    /// Driver the alert is about or was logged in.
    pub driver: Option<String>,
    /// Overspeed band 1..=4.
    pub severity: Option<i16>,
    /// Latitude of the start, degrees.
    pub lat: f64,
    /// Longitude of the start, degrees.
    pub lon: f64,
    /// Rule-specific facts.
    pub details: Value,
}

impl From<&Alert> for AlertRow {
    fn from(a: &Alert) -> Self {
        Self {
            id: a.id.to_string(),
            kind: a.kind.as_str().to_string(),
            level: a.level.as_str().to_string(),
            status: a.status.as_str().to_string(),
            start: a.start,
            end: a.end,
            driver: a.driver.as_ref().map(|d| d.to_string()),
            severity: a.severity.map(i16::from),
            lat: a.lat,
            lon: a.lon,
            details: a.details.clone(),
        }
    }
}

/// The rules over stored fixes, offline: pure and synchronous. Feed it every stored
/// fix (those the live rules applied) of the vehicle and of the other vehicles its
/// drivers drove, in time order, from [`warmup_start`] on; stop when
/// [`OfflineRules::settled`]; [`OfflineRules::finish`] gives the alerts about the
/// vehicle starting in the range, in their final version.
pub struct OfflineRules {
    engine: Engine,
    range: TrackRange,
    /// Last version of each alert about the vehicle, in first-seen order.
    alerts: Vec<Alert>,
    index: HashMap<String, usize>,
    /// Event time of the newest fix fed.
    position: Option<DateTime<Utc>>,
}

impl OfflineRules {
    /// Offline rules with `engine` (the service's configuration, geography and
    /// registry, fresh state) for the alerts of `range`.
    pub fn new(engine: Engine, range: TrackRange) -> Self {
        Self {
            engine,
            range,
            alerts: Vec::new(),
            index: HashMap::new(),
            position: None,
        }
    }

    /// Feeds one fix; fixes come in time order.
    pub fn push(&mut self, fix: &Fix) {
        let mut out = self.engine.push(fix);
        // In time order nothing is out of order, so each fix is released at once, as
        // the live service does a reorder window later. Holding it instead would let
        // a vehicle's last fix be released after a later fix of another vehicle,
        // and a driver who changed vehicles would see time go backwards.
        out.append(self.engine.flush());
        self.keep(out.alerts);
        self.position = Some(self.position.map_or(fix.ts(), |p| p.max(fix.ts())));
    }

    /// Whether the input has passed the range and nothing that began in it is still
    /// in progress: the range's alerts are final, reading further changes none.
    pub fn settled(&self) -> bool {
        if self.position.is_none_or(|p| p < self.range.to) {
            return false;
        }
        !self
            .engine
            .pending_since(&self.range.vehicle)
            .into_iter()
            .any(|t| self.range.contains(t))
    }

    /// The alerts about the vehicle that start in the range, in their last version,
    /// by start time (no-signal excluded: it runs on receive time; data gaps are not
    /// alerts but `data_gaps` rows).
    pub fn finish(self) -> Vec<Alert> {
        let range = self.range;
        let mut alerts: Vec<Alert> = self
            .alerts
            .into_iter()
            .filter(|a| range.contains(a.start))
            .collect();
        alerts.sort_by(|a, b| {
            (a.start, a.kind.as_str(), &a.id).cmp(&(b.start, b.kind.as_str(), &b.id))
        });
        alerts
    }

    /// Keeps the vehicle's alerts, the newest version of each id; like the writer, a
    /// closed alert never goes back to open.
    fn keep(&mut self, alerts: Vec<Alert>) {
        for a in alerts {
            if a.vehicle != self.range.vehicle
                || matches!(
                    a.kind,
                    AlertKind::NoSignal | AlertKind::DataGap | AlertKind::DeviceAlarm
                )
            {
                continue;
            }
            match self.index.get(a.id.as_str()) {
                Some(&i)
                    if self.alerts[i].status == AlertStatus::Closed
                        && a.status == AlertStatus::Open => {}
                Some(&i) => self.alerts[i] = a,
                None => {
                    self.index.insert(a.id.to_string(), self.alerts.len());
                    self.alerts.push(a);
                }
            }
        }
    }
}

/// One way the computed alerts differ from the stored ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "difference", rename_all = "snake_case")]
pub enum Difference {
    /// Stored, but the rules did not produce it.
    OnlyStored(AlertRow),
    /// Produced by the rules, but not stored.
    OnlyComputed(AlertRow),
    /// The same id with other content.
    Changed {
        /// The names of the fields that differ.
        fields: Vec<&'static str>,
        /// As stored.
        stored: Box<AlertRow>,
        /// As computed.
        computed: Box<AlertRow>,
    },
}

/// Compares alerts by id; empty when they are the same.
pub fn compare(computed: &[AlertRow], stored: &[AlertRow]) -> Vec<Difference> {
    let by_id: HashMap<&str, &AlertRow> = computed.iter().map(|a| (a.id.as_str(), a)).collect();
    let stored_ids: HashMap<&str, &AlertRow> = stored.iter().map(|a| (a.id.as_str(), a)).collect();
    let mut out = Vec::new();
    for s in stored {
        match by_id.get(s.id.as_str()) {
            None => out.push(Difference::OnlyStored(s.clone())),
            Some(c) => {
                let fields = changed_fields(s, c);
                if !fields.is_empty() {
                    out.push(Difference::Changed {
                        fields,
                        stored: Box::new(s.clone()),
                        computed: Box::new((*c).clone()),
                    });
                }
            }
        }
    }
    out.extend(
        computed
            .iter()
            .filter(|c| !stored_ids.contains_key(c.id.as_str()))
            .map(|c| Difference::OnlyComputed(c.clone())),
    );
    out
}

fn changed_fields(a: &AlertRow, b: &AlertRow) -> Vec<&'static str> {
    let checks = [
        ("kind", a.kind == b.kind),
        ("level", a.level == b.level),
        ("status", a.status == b.status),
        ("start", a.start == b.start),
        ("end", a.end == b.end),
        ("driver", a.driver == b.driver),
        ("severity", a.severity == b.severity),
        ("position", a.lat == b.lat && a.lon == b.lon),
        ("details", a.details == b.details),
    ];
    checks
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(f, _)| f)
        .collect()
}

/// The outcome of `--rules`.
#[derive(Debug, Clone)]
pub struct RulesCheck {
    /// Alerts the rules produced, starting in the range, by start.
    pub computed: Vec<AlertRow>,
    /// Alerts stored for the vehicle starting in the range (no-signal excluded).
    pub stored: Vec<AlertRow>,
    /// How they differ; empty when they match.
    pub differences: Vec<Difference>,
    /// Where reading began ([`warmup_start`]).
    pub read_from: DateTime<Utc>,
    /// Event time of the last fix read (after the range, until its alerts settled).
    pub read_until: Option<DateTime<Utc>>,
    /// Fixes read, of all `vehicles`.
    pub fixes_read: u64,
    /// The vehicle and the others its drivers drove since `read_from`.
    pub vehicles: Vec<VehicleId>,
    /// The routes and zones used.
    pub geography: Geography,
}

/// Runs the stored fixes through the rules with the service's rules, geography and
/// registry, and compares the alerts starting in `range` with the stored ones.
///
/// Driving time is per driver, across vehicles: the fixes of every vehicle that one of
/// the vehicle's drivers drove since the warm-up start are read too (a driver who
/// first comes to the vehicle after the range, carrying a run from another vehicle,
/// is not followed).
pub async fn check_rules(
    client: &Client,
    settings: &Settings,
    range: &TrackRange,
) -> Result<RulesCheck, ReplayError> {
    let read_from = warmup_start(range.from, &settings.rules);
    check_rules_with(client, settings, range, read_from, GeoSource::Recorded).await
}

/// [`check_rules`] reading the stored fixes from `read_from` rather than from
/// [`warmup_start`] (to show what the warm-up is for).
pub async fn check_rules_from(
    client: &Client,
    settings: &Settings,
    range: &TrackRange,
    read_from: DateTime<Utc>,
) -> Result<RulesCheck, ReplayError> {
    check_rules_with(client, settings, range, read_from, GeoSource::Recorded).await
}

/// [`check_rules_from`] with the routes and zones of `geo_source`.
pub async fn check_rules_with(
    client: &Client,
    settings: &Settings,
    range: &TrackRange,
    read_from: DateTime<Utc>,
    geo_source: GeoSource,
) -> Result<RulesCheck, ReplayError> {
    let (geo, geography) = geography(client, settings, range, geo_source).await?;
    let geo = Arc::new(geo);
    // The service's registry: the configuration's vehicles and the admin's.
    crate::store::registry::register(client, &settings.vehicles).await?;
    let registry = crate::store::registry::load(client).await?;
    let engine = Engine::new(settings.rules.clone(), geo, registry);
    let vehicles = track_vehicles(client, &range.vehicle, read_from, range.to).await?;
    let mut merged = Merged {
        pagers: vehicles
            .iter()
            .map(|v| Pager::new(v, read_from, None, SKIPPED_BY_RULES))
            .collect(),
    };
    let mut rules = OfflineRules::new(engine, range.clone());
    let (mut fixes_read, mut read_until) = (0u64, None);
    while let Some(f) = merged.next(client).await? {
        rules.push(&f.fix);
        fixes_read += 1;
        read_until = Some(f.fix.ts());
        if rules.settled() {
            break;
        }
    }
    let computed: Vec<AlertRow> = rules.finish().iter().map(AlertRow::from).collect();
    let stored = stored_alerts(client, range).await?;
    let differences = compare(&computed, &stored);
    Ok(RulesCheck {
        computed,
        stored,
        differences,
        read_from,
        read_until,
        fixes_read,
        vehicles,
        geography,
    })
}

/// Which routes and zones `--rules` used, and what the user should know about them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Geography {
    /// One line: counts and origin.
    pub used: String,
    /// Warnings: nothing loaded, files differing from or missing beside the recorded.
    pub warnings: Vec<String>,
}

fn describe_sources(sources: &Value) -> String {
    let mut parts = Vec::new();
    if sources["demo"].as_bool() == Some(true) {
        parts.push("the built-in demo routes and zones".to_string());
    }
    for key in ["routes", "gtfs", "zones"] {
        for p in sources[key].as_array().into_iter().flatten() {
            parts.push(format!("{key} {}", p.as_str().unwrap_or("?")));
        }
    }
    if parts.is_empty() {
        "no sources".into()
    } else {
        parts.join(", ")
    }
}

/// The routes and zones for `--rules`: by default the ones the service had loaded
/// when it last wrote one of the range's stored alerts (the newest recorded when
/// none is stored), compared with the configured files.
async fn geography(
    client: &Client,
    settings: &Settings,
    range: &TrackRange,
    source: GeoSource,
) -> Result<(crate::geo::GeoIndex, Geography), ReplayError> {
    use crate::store::geo_versions;
    let files_sources = serde_json::to_value(&settings.geo).unwrap_or(Value::Null);
    let mut warnings = Vec::new();
    let (index, used) = match source {
        GeoSource::Files => {
            let g = settings.geo.load()?;
            let used = format!(
                "the configuration's files ({})",
                describe_sources(&files_sources)
            );
            (g, used)
        }
        GeoSource::Recorded => {
            let written: Option<DateTime<Utc>> = client
                .query_one(
                    "SELECT max(updated_at) FROM alerts
                     WHERE vehicle_id = $1 AND start_ts >= $2 AND start_ts < $3",
                    &[&range.vehicle.as_str(), &range.from, &range.to],
                )
                .await?
                .get(0);
            let at = written.unwrap_or_else(Utc::now);
            match geo_versions::in_effect(client, at).await? {
                Some(v) => {
                    match settings.geo.load() {
                        Ok(files) if files.route_count() == 0 && files.zone_count() == 0 => {
                            warnings.push(
                                "the configuration names no routes or zones; using those the service recorded"
                                    .into(),
                            );
                        }
                        Ok(files) if geo_versions::content_hash(&files) != v.content_hash => {
                            warnings.push(format!(
                                "the configuration's routes and zones ({}: {} routes, {} zones) differ from those the service recorded; \
                                 using the recorded ones (--geo files to use the files)",
                                describe_sources(&files_sources),
                                files.route_count(),
                                files.zone_count()
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => warnings.push(format!(
                            "the configuration's routes and zones do not load ({e}); using the recorded ones"
                        )),
                    }
                    let used = format!(
                        "recorded by the service on {} (geography {}, from {})",
                        v.loaded_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                        v.id,
                        describe_sources(&v.sources)
                    );
                    (v.index, used)
                }
                None => {
                    warnings.push(
                        "no geography recorded in the database before these alerts were written: \
                         using the configuration's files, which may not be what the service used"
                            .into(),
                    );
                    let g = settings.geo.load()?;
                    let used = format!(
                        "the configuration's files ({})",
                        describe_sources(&files_sources)
                    );
                    (g, used)
                }
            }
        }
    };
    match (index.route_count(), index.zone_count()) {
        (0, 0) => warnings.push(
            "no routes and no zones are loaded: off-route, restricted-zone, geofence and speed-zone \
             alerts cannot be reproduced (give the service's --config)"
                .into(),
        ),
        (0, _) => warnings.push("no routes are loaded: off-route alerts cannot be reproduced".into()),
        (_, 0) => warnings.push(
            "no zones are loaded: restricted-zone, geofence and speed-zone alerts cannot be reproduced"
                .into(),
        ),
        _ => {}
    }
    let used = format!(
        "{} routes, {} zones, {used}",
        index.route_count(),
        index.zone_count()
    );
    Ok((index, Geography { used, warnings }))
}

/// The vehicle, then the other vehicles driven by its drivers in `[from, to)`.
async fn track_vehicles(
    client: &Client,
    vehicle: &VehicleId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<VehicleId>, ReplayError> {
    let rows = client
        .query(
            "SELECT DISTINCT vehicle_id FROM fixes
             WHERE ts >= $2 AND ts < $3 AND vehicle_id <> $1 AND driver_id IN (
                 SELECT DISTINCT driver_id FROM fixes
                 WHERE vehicle_id = $1 AND ts >= $2 AND ts < $3 AND driver_id IS NOT NULL)
             ORDER BY vehicle_id",
            &[&vehicle.as_str(), &from, &to],
        )
        .await?;
    let mut out = vec![vehicle.clone()];
    out.extend(
        rows.iter()
            .filter_map(|r| VehicleId::parse(r.get::<_, &str>(0)).ok()),
    );
    Ok(out)
}

/// Stored alerts of the vehicle starting in the range, no-signal excluded.
async fn stored_alerts(client: &Client, range: &TrackRange) -> Result<Vec<AlertRow>, ReplayError> {
    let rows = client
        .query(
            "SELECT alert_id, kind, level, status, start_ts, end_ts, driver_id, severity,
                    lat, lon, details
             FROM alerts
             WHERE vehicle_id = $1 AND start_ts >= $2 AND start_ts < $3 AND kind NOT IN ('no_signal', 'device_alarm')
               AND retracted_at IS NULL
             ORDER BY start_ts, kind, alert_id",
            &[&range.vehicle.as_str(), &range.from, &range.to],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AlertRow {
            id: r.get(0),
            kind: r.get(1),
            level: r.get(2),
            status: r.get(3),
            start: r.get(4),
            end: r.get(5),
            driver: r.get(6),
            severity: r.get(7),
            lat: r.get(8),
            lon: r.get(9),
            details: r.get(10),
        })
        .collect())
}

/// The alerts as a table (local time at `offset_s` east of UTC) or JSON lines.
pub fn render_alerts(alerts: &[AlertRow], format: OutputFormat, offset_s: i32) -> String {
    match format {
        OutputFormat::Jsonl => alerts
            .iter()
            .map(|a| serde_json::to_string(a).expect("serialisable") + "\n")
            .collect(),
        OutputFormat::Table => {
            let tz =
                FixedOffset::east_opt(offset_s).unwrap_or(FixedOffset::east_opt(0).expect("zero"));
            let t = |d: DateTime<Utc>| d.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string();
            let mut s = format!(
                "{:<19}  {:<19}  {:<18}  {:<9}  {:<6}  {:<14}  details\n",
                "start (local)", "end", "kind", "level", "status", "driver"
            );
            for a in alerts {
                s.push_str(&format!(
                    "{:<19}  {:<19}  {:<18}  {:<9}  {:<6}  {:<14}  {}\n",
                    t(a.start),
                    a.end.map(t).unwrap_or_else(|| "-".into()),
                    a.kind,
                    a.level,
                    a.status,
                    a.driver.as_deref().unwrap_or("-"),
                    a.details
                ));
            }
            s
        }
    }
}

/// The comparison in words: "N alerts, all match the stored ones" or the differences.
pub fn render_differences(check: &RulesCheck) -> String {
    let mut s = String::new();
    if check.differences.is_empty() {
        s.push_str(&format!(
            "{} alerts, all match the stored ones\n",
            check.computed.len()
        ));
    } else {
        s.push_str(&format!(
            "{} differences between {} computed and {} stored alerts:\n",
            check.differences.len(),
            check.computed.len(),
            check.stored.len()
        ));
        for d in &check.differences {
            let line = match d {
                Difference::OnlyStored(a) => format!(
                    "  only stored:   {} {} {} {}",
                    a.id, a.kind, a.level, a.start
                ),
                Difference::OnlyComputed(a) => format!(
                    "  only computed: {} {} {} {}",
                    a.id, a.kind, a.level, a.start
                ),
                Difference::Changed {
                    fields,
                    stored,
                    computed,
                } => {
                    let mut l = format!(
                        "  changed:       {} {} ({}):",
                        stored.id,
                        stored.kind,
                        fields.join(", ")
                    );
                    for f in fields {
                        l.push_str(&format!(
                            "\n      {f}: stored {} / computed {}",
                            field(stored, f),
                            field(computed, f)
                        ));
                    }
                    l
                }
            };
            s.push_str(&line);
            s.push('\n');
        }
    }
    s.push_str(
        "(no_signal alerts are not compared: that rule runs on receive time, not event time; nor device_alarm alerts: devices raise them, not the rules)\n",
    );
    s
}

fn field(a: &AlertRow, name: &str) -> String {
    let v = match name {
        "kind" => serde_json::json!(a.kind),
        "level" => serde_json::json!(a.level),
        "status" => serde_json::json!(a.status),
        "start" => serde_json::json!(a.start),
        "end" => serde_json::json!(a.end),
        "driver" => serde_json::json!(a.driver),
        "severity" => serde_json::json!(a.severity),
        "position" => serde_json::json!([a.lat, a.lon]),
        _ => a.details.clone(),
    };
    v.to_string()
}

/// `fleetwatch replay`: publishes, or with `--rules` checks the rules. Returns false
/// when `--rules` found differences (the command then exits with status 1).
pub async fn run(opts: ReplayOptions, stop: impl Future<Output = ()>) -> anyhow::Result<bool> {
    use anyhow::Context;
    let settings = Settings::load(opts.config.as_deref())?;
    let range = TrackRange::new(VehicleId::parse(&opts.vehicle)?, opts.from, opts.to)?;
    // Check what can be checked before starting a database.
    let target = if opts.rules {
        None
    } else {
        let url = opts
            .broker
            .clone()
            .or_else(|| Some(settings.mqtt.url.clone()).filter(|u| !u.is_empty()))
            .ok_or(ReplayError::NoBroker)?;
        // Against the embedded broker of a local fleetwatch: its generated credential.
        let url =
            crate::infra::mqtt_gate::with_local_credentials(&url, &settings.database.data_dir);
        let mqtt = MqttConfig {
            client_id: format!("fleetwatch-replay-{}", std::process::id()),
            ..settings.mqtt.clone()
        };
        Some(PublishTarget {
            url,
            mqtt,
            topic: TopicChoice::new(opts.topic.as_deref(), &settings.mqtt.topic)?,
            speed: opts.speed,
        })
    };
    let (db_url, pg) = crate::app::database(&settings).await?;
    let client = crate::store::connect(&db_url)
        .await
        .with_context(|| format!("connecting to {}", crate::app::redact(&db_url)))?;
    let ok = match target {
        Some(target) => {
            let summary = publish_track(&client, &range, &target, stop)
                .await
                .context("replaying the track")?;
            println!("{}", summary.line(&range));
            true
        }
        None => {
            let read_from = warmup_start(range.from, &settings.rules);
            let check = tokio::select! {
                c = check_rules_with(&client, &settings, &range, read_from, opts.geo) => c.context("running the rules")?,
                _ = stop => anyhow::bail!("interrupted"),
            };
            eprintln!("geography: {}", check.geography.used);
            for w in &check.geography.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!(
                "read {} fixes of {} from {} to {}",
                check.fixes_read,
                check
                    .vehicles
                    .iter()
                    .map(VehicleId::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                check.read_from.to_rfc3339_opts(SecondsFormat::Secs, true),
                check
                    .read_until
                    .map_or("-".into(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            );
            print!(
                "{}",
                render_alerts(
                    &check.computed,
                    opts.format,
                    settings.rules.utc_offset.seconds()
                )
            );
            // JSON lines stay parseable: the verdict goes to stderr then.
            match opts.format {
                OutputFormat::Table => print!("{}", render_differences(&check)),
                OutputFormat::Jsonl => eprint!("{}", render_differences(&check)),
            }
            check.differences.is_empty()
        }
    };
    drop(client);
    // A private server the service is running on is left running (see its Drop).
    drop(pg);
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FixCandidate, Vehicle, VehicleClass};
    use crate::geo::GeoIndex;
    use chrono::{NaiveDate, TimeZone};

    const V: &str = "51B-777.01";

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Limits scaled down so a few days of fixes cross every driving-time limit.
    fn config() -> RulesConfig {
        let mut c = RulesConfig::default();
        c.driving.continuous_max_s = 40 * 60;
        c.driving.warn_before_s = 5 * 60;
        c.driving.daily_max_s = 3 * 3600;
        c.driving.weekly_max_s = 12 * 3600;
        c.driving.break_min_s = 8 * 60;
        c.validate().unwrap();
        c
    }

    fn engine() -> Engine {
        let bus = Vehicle {
            id: VehicleId::parse(V).unwrap(),
            plate: None,
            cooperative: CooperativeId::parse("HTX-R").unwrap(),
            class: VehicleClass::Bus,
            route: None,
            device_id: None,
        };
        Engine::new(config(), Arc::new(GeoIndex::empty()), vec![bus])
    }

    /// Nine days (Thursday 2026-11-19 to Friday 2026-11-27, local UTC+7), one fix
    /// every 30 s from 06:00 to 22:00 local: cycles of 25 min driving (a minute at
    /// 95 km/h in each, a bus's limit is 70), a 3-min stop (no break), 25 min driving
    /// and a 10-min stop with the ignition off (a break). Driver 079000000001, except
    /// on Saturday afternoon when 079000000002 logs in.
    fn track() -> Vec<Fix> {
        let tz = FixedOffset::east_opt(7 * 3600).unwrap();
        let vehicle = VehicleId::parse(V).unwrap();
        let mut fixes = Vec::new();
        for day in 0..9 {
            let date = NaiveDate::from_ymd_opt(2026, 11, 19).unwrap() + chrono::Days::new(day);
            let six = tz
                .from_local_datetime(&date.and_hms_opt(6, 0, 0).unwrap())
                .unwrap()
                .with_timezone(&Utc);
            for i in 0..(16 * 120) {
                let ts = six + chrono::Duration::seconds(30 * i);
                let minute = (i / 2) % 63;
                let (speed, ignition) = match minute {
                    10 | 38 => (95.0, true),
                    0..25 | 28..53 => (50.0, true),
                    25..28 => (0.0, true),
                    _ => (0.0, false),
                };
                let local = ts.with_timezone(&tz);
                let driver = if local.weekday() == chrono::Weekday::Sat && local.hour() >= 14 {
                    "079000000002"
                } else {
                    "079000000001"
                };
                let c = FixCandidate {
                    ts: Some(ts),
                    lat: 10.95,
                    lon: 106.6 + (i % 1000) as f64 * 1e-4,
                    speed_kmh: Some(speed),
                    driver: Some(driver.into()),
                    ignition: Some(ignition),
                    ..FixCandidate::default()
                };
                fixes.push(
                    Fix::validate(c, vehicle.clone(), &pipeline::stored_fix_limits(), ts).unwrap(),
                );
            }
        }
        fixes
    }
    use chrono::Timelike;

    fn range(from: &str, to: &str) -> TrackRange {
        TrackRange::new(VehicleId::parse(V).unwrap(), utc(from), utc(to)).unwrap()
    }

    /// What the service stored: every fix through the rules, from the first one on.
    fn live(fixes: &[Fix], r: &TrackRange) -> Vec<Alert> {
        let mut rules = OfflineRules::new(engine(), r.clone());
        fixes.iter().for_each(|f| rules.push(f));
        rules.finish()
    }

    /// The replay: from `read_from`, until settled. Returns the alerts and how many
    /// fixes after the range were read.
    fn offline(fixes: &[Fix], r: &TrackRange, read_from: DateTime<Utc>) -> (Vec<Alert>, usize) {
        let mut rules = OfflineRules::new(engine(), r.clone());
        let mut after = 0;
        for f in fixes.iter().filter(|f| f.ts() >= read_from) {
            rules.push(f);
            after += usize::from(f.ts() >= r.to);
            if rules.settled() {
                break;
            }
        }
        (rules.finish(), after)
    }

    #[test]
    fn speed_factors_and_max() {
        assert_eq!("max".parse::<Speed>().unwrap(), Speed::Max);
        assert_eq!("0".parse::<Speed>().unwrap(), Speed::Max);
        assert_eq!("0.0".parse::<Speed>().unwrap(), Speed::Max);
        assert_eq!("10".parse::<Speed>().unwrap(), Speed::Factor(10.0));
        assert_eq!("0.5".parse::<Speed>().unwrap(), Speed::Factor(0.5));
        for bad in ["-1", "fast", "inf", "NaN", "", "1e-300"] {
            assert!(bad.parse::<Speed>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn warmup_starts_a_day_before_the_local_week() {
        let c = config();
        // Wednesday 10:00 local → Monday 23 Nov 00:00 local (22 Nov 17:00 UTC) less a day.
        assert_eq!(
            warmup_start(utc("2026-11-25T10:00:00+07:00"), &c),
            utc("2026-11-21T17:00:00Z")
        );
        // Monday 00:00 local is in that week; Sunday 23:59 in the one before.
        assert_eq!(
            warmup_start(utc("2026-11-23T00:00:00+07:00"), &c),
            utc("2026-11-21T17:00:00Z")
        );
        assert_eq!(
            warmup_start(utc("2026-11-22T23:59:59+07:00"), &c),
            utc("2026-11-14T17:00:00Z")
        );
        // In UTC terms the same instant is Sunday 16:59: local time decides.
        let mut utc0 = c.clone();
        utc0.utc_offset = crate::rules::UtcOffset::from_seconds(0);
        assert_eq!(
            warmup_start(utc("2026-11-22T16:59:59Z"), &utc0),
            utc("2026-11-15T00:00:00Z")
        );
    }

    #[test]
    fn with_warmup_the_alerts_of_a_range_are_those_of_the_whole_history() {
        let fixes = track();
        let cases = [
            // Mid-run, mid-day, with an episode crossing the range's end.
            range("2026-11-24T06:20:00+07:00", "2026-11-24T09:47:30+07:00"),
            // The week's start exactly, and a day across the weekly limit.
            range("2026-11-23T00:00:00+07:00", "2026-11-24T00:00:00+07:00"),
            range("2026-11-25T12:00:00+07:00", "2026-11-26T12:00:00+07:00"),
            // Across the weekend's driver change and the week boundary.
            range("2026-11-21T13:30:00+07:00", "2026-11-23T08:10:00+07:00"),
            // A few minutes inside an overspeed minute and a continuous run.
            range("2026-11-26T08:16:00+07:00", "2026-11-26T08:17:10+07:00"),
        ];
        let kinds = |a: &[Alert]| {
            let mut k: Vec<&str> = a.iter().map(|a| a.kind.as_str()).collect();
            k.dedup();
            k.sort_unstable();
            k.dedup();
            k
        };
        let mut seen = Vec::new();
        for (i, r) in cases.iter().enumerate() {
            let expected = live(&fixes, r);
            let (got, after) = offline(&fixes, r, warmup_start(r.from, &config()));
            assert_eq!(got, expected, "{r:?}");
            if i == 0 {
                // Read on until the daily alert opened in the range closes: the next
                // day's first drive; not to the end of the data.
                assert!(after < fixes.len() / 9, "read {after} fixes past the range");
            }
            seen.extend(kinds(&expected));
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen,
            [
                "continuous_driving",
                "daily_driving",
                "overspeed",
                "weekly_driving"
            ],
            "the cases cover every driving-time alert"
        );
    }

    #[test]
    fn without_warmup_or_lookahead_the_alerts_differ() {
        let fixes = track();
        let r = range("2026-11-24T06:20:00+07:00", "2026-11-24T09:47:30+07:00");
        let expected = live(&fixes, &r);
        // From the range's start only: the day's first 20 minutes are missing, so the
        // daily limit is crossed later (another start, another id).
        let (cold, _) = offline(&fixes, &r, r.from);
        assert_ne!(cold, expected);
        // Stopping at the range's end: the overspeed minute at 09:47 is not an
        // alert yet, and the run in progress is still open.
        let mut rules = OfflineRules::new(engine(), r.clone());
        fixes
            .iter()
            .filter(|f| f.ts() >= warmup_start(r.from, &config()) && f.ts() < r.to)
            .for_each(|f| rules.push(f));
        assert_ne!(rules.finish(), expected);
    }

    fn row(id: &str) -> AlertRow {
        AlertRow {
            id: id.into(),
            kind: "overspeed".into(),
            level: "violation".into(),
            status: "closed".into(),
            start: utc("2026-11-24T01:00:00Z"),
            end: Some(utc("2026-11-24T01:01:00Z")),
            driver: None,
            severity: Some(2),
            lat: 10.95,
            lon: 106.6,
            details: serde_json::json!({"max_speed_kmh": 85.0}),
        }
    }

    #[test]
    fn comparison_names_what_differs() {
        let stored = vec![row("a"), row("b"), row("c")];
        assert!(compare(&stored, &stored).is_empty());
        let mut b = row("b");
        b.end = None;
        b.status = "open".into();
        let computed = vec![row("a"), b, row("d")];
        let d = compare(&computed, &stored);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(
            matches!(&d[0], Difference::Changed { fields, .. } if fields == &["status", "end"])
        );
        assert!(matches!(&d[1], Difference::OnlyStored(a) if a.id == "c"));
        assert!(matches!(&d[2], Difference::OnlyComputed(a) if a.id == "d"));
        let check = RulesCheck {
            computed,
            stored,
            differences: d,
            read_from: utc("2026-11-22T17:00:00Z"),
            read_until: None,
            fixes_read: 0,
            vehicles: vec![],
            geography: Geography::default(),
        };
        let text = render_differences(&check);
        assert!(text.starts_with("3 differences"), "{text}");
        assert!(text.contains("no_signal"), "{text}");
    }

    #[test]
    fn topics_from_the_pattern_or_a_template() {
        let (c, v) = (
            CooperativeId::parse("htx-r").unwrap(),
            VehicleId::parse(V).unwrap(),
        );
        let p = TopicChoice::new(None, "fleet/{cooperative}/{vehicle}/fix").unwrap();
        assert_eq!(p.topic(&c, &v), "fleet/HTX-R/51B-777.01/fix");
        let t = TopicChoice::new(Some("test/{vehicle}"), "x").unwrap();
        assert_eq!(t.topic(&c, &v), "test/51B-777.01");
        assert!(TopicChoice::new(Some("test/+/fix"), "x").is_err());
        assert!(TopicChoice::new(Some(""), "x").is_err());
    }
}
