//! Batched writer: accepted fixes by binary COPY into a staging table, then one
//! conflict-ignoring insert (idempotent on redelivery); dead letters and the vehicle
//! list in the same transaction. Acks go out only after the commit. The daily
//! roll-ups of reports are kept in the same transaction too (see [`super::rollup`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use futures_util::pin_mut;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, Type};

use crate::domain::Fix;
use tokio_postgres::{Client, Transaction};
use tokio_util::sync::CancellationToken;

use super::lease::Fence;
use super::rollup::{self, Plan};
use super::{connect, fnv1a64, pg_text, StoreError};
use crate::domain::alert::{Alert, AlertId, AlertKind};
use crate::domain::fix::deg_to_e7;
use crate::domain::live::LiveState;
use crate::domain::trip::{StopEvent, Trip, TripRun};
use crate::domain::VehicleId;
use crate::domain::{Record, Rejected};
use crate::health::Health;

/// Batching settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A batch closes at this many records.
    pub max_records: usize,
    /// A batch closes this long after its first record, milliseconds.
    pub max_wait_ms: u64,
    /// Longest wait between reconnect attempts during a database outage, milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: 2_000,
            max_wait_ms: 5,
            max_backoff_ms: 5_000,
        }
    }
}

/// One received message (or a rules tick): what to store and the token that
/// acknowledges it.
#[derive(Debug)]
pub struct Item<A> {
    /// One record per fix or element of the message.
    pub records: Vec<Record>,
    /// What the rules derived.
    pub derived: Derived,
    /// Acknowledges the message to the broker; `None` when there is nothing to ack.
    pub ack: Option<A>,
    /// When the message was received.
    pub received_at: DateTime<Utc>,
}

/// Rule output stored in the same transaction as the fixes it came from.
#[derive(Debug, Default)]
pub struct Derived {
    /// Alerts open at the snapshot a recomputation starts from, as they stood then:
    /// written before `alerts`, even over a closed version (the wrong order's).
    pub restated: Vec<Alert>,
    /// Alerts opened or closed (data gaps go to `data_gaps`).
    pub alerts: Vec<Alert>,
    /// Completed trips.
    pub trips: Vec<Trip>,
    /// Runs of scheduled (GTFS) trips that ended.
    pub trip_runs: Vec<TripRun>,
    /// Stop events of scheduled trips.
    pub stop_events: Vec<StopEvent>,
    /// Rule state of every vehicle, reflecting all items before this one.
    pub checkpoint: Vec<Checkpoint>,
    /// Spans the rules recomputed (late fixes): their alerts are reconciled.
    pub recomputed: Vec<Recomputed>,
    /// Driving-time state after the newest fix of each vehicle (kept in
    /// `driver_state` and the `vehicles.live_*` columns).
    pub live: Vec<LiveState>,
}

/// A vehicle's rule state as the rules saved it, stored so a restart resumes from it.
#[derive(Debug)]
pub struct Checkpoint {
    /// The vehicle.
    pub vehicle: VehicleId,
    /// The rules' state, serialised (JSON).
    pub state: Box<serde_json::value::RawValue>,
    /// Newest fix time the state reflects.
    pub watermark: Option<DateTime<Utc>>,
}

/// A vehicle's span recomputed in event-time order: the stored alerts of the
/// vehicle emitted at or after `after` that the recomputation did not produce (`keep`)
/// are retracted, its trips and data gaps ending at or after `after` that it did not
/// produce are deleted (see [`super::recompute`]).
#[derive(Debug, Clone)]
pub struct Recomputed {
    /// The vehicle.
    pub vehicle: VehicleId,
    /// Start of the span (inclusive).
    pub after: DateTime<Utc>,
    /// Alerts the recomputation produced (data gaps aside).
    pub keep: Vec<AlertId>,
    /// Starts of the trips it produced.
    pub trips: Vec<DateTime<Utc>>,
    /// Starts of the data gaps it produced.
    pub gaps: Vec<DateTime<Utc>>,
    /// Starts of the trip runs it produced.
    pub runs: Vec<DateTime<Utc>>,
    /// Keys of the stop events it produced.
    pub stop_events: Vec<StopEventKey>,
}

impl Derived {
    /// Whether there is nothing to store.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
            && self.trips.is_empty()
            && self.trip_runs.is_empty()
            && self.stop_events.is_empty()
            && self.checkpoint.is_empty()
            && self.recomputed.is_empty()
            && self.live.is_empty()
    }
}

/// Sends acknowledgements after a commit.
///
/// The writer never waits for room to ack while it has work: the MQTT event loop may
/// itself be waiting for the pipeline, which waits for the writer. So acks are tried
/// without waiting, and those that find no room are kept and retried.
pub trait Acker: Send + Sync {
    /// The token type carried by [`Item`].
    type Token: Send;
    /// Queues one ack without waiting; gives the token back when there is no room.
    fn try_ack(&self, token: Self::Token) -> Result<(), Self::Token>;
    /// Queues one ack, waiting for room (shutdown: the event loop is still running).
    fn ack(&self, token: Self::Token) -> impl std::future::Future<Output = ()> + Send;
}

/// What one committed batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// New rows in `fixes`.
    pub stored: u64,
    /// Fixes already stored (same vehicle and timestamp).
    pub duplicates: u64,
    /// New rows in `dead_letters`.
    pub dead_letters: u64,
    /// Alerts inserted or changed (queued for publishing).
    pub alerts_changed: u64,
}

/// Binary COPY types of [`FIX_COLUMNS`], in order.
pub const FIX_TYPES: [Type; 14] = [
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::INT4,
    Type::INT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::TEXT,
    Type::BOOL,
    Type::INT2,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::INT2,
    Type::TIMESTAMPTZ,
];

/// Columns of `fixes` written by the writer, in COPY order.
pub const FIX_COLUMNS: &str =
    "vehicle_id, ts, cooperative_id, lat_e7, lon_e7, speed_kmh, heading_deg, \
     driver_id, ignition, satellites, hdop, odometer_m, flags, received_at";

/// Prepares a connection for [`write_batch`] (session-local staging table) and reads
/// how the daily roll-ups are kept (`None`: never built, not kept).
pub async fn prepare(client: &Client) -> Result<Option<Plan>, StoreError> {
    // No JIT: the roll-up statements' row estimates (set-returning day split, CTEs)
    // can pass jit_above_cost, and compiling costs far more than a batch's run.
    client
        .batch_execute(
            "SET jit = off;
             CREATE TEMP TABLE IF NOT EXISTS fixes_stage
                 (LIKE fixes INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
        )
        .await?;
    rollup::plan(client).await
}

/// [`prepare`], plus the failover fence's session settings when there is one.
async fn prepare_fenced(
    client: &Client,
    fence: Option<&Fence>,
) -> Result<Option<Plan>, StoreError> {
    if let Some(f) = fence {
        f.prepare(client).await?;
    }
    prepare(client).await
}

/// Writes items in one transaction, with the roll-ups of `plan`. Safe to repeat: a
/// repeated batch stores nothing new and counts nothing twice.
///
/// When PostgreSQL refuses the batch for its content ([`StoreError::is_content`]),
/// the batch is bisected to find the records (or rule output) at fault: they are kept
/// as dead letters (`rejected_by_database`, the database's error as detail) and the
/// rest is committed. Any other error is returned, nothing of the batch settled: the
/// caller retries it (what the split committed already is not stored twice).
pub async fn write_batch<A>(
    client: &mut Client,
    plan: Option<&Plan>,
    items: &[Item<A>],
) -> Result<BatchOutcome, StoreError> {
    write_batch_fenced(client, plan, items, None).await
}

/// [`write_batch`], each transaction checked by the failover `fence` before its
/// commit (a fenced batch fails with [`StoreError::Fenced`], nothing of it stored).
pub async fn write_batch_fenced<A>(
    client: &mut Client,
    plan: Option<&Plan>,
    items: &[Item<A>],
    fence: Option<&Fence>,
) -> Result<BatchOutcome, StoreError> {
    let parts = parts_of(items);
    let first = match write_parts(client, plan, &parts, fence).await {
        Err(e) if e.is_content() => e,
        other => return other,
    };
    tracing::warn!(error = %first, parts = parts.len(),
        "the database refused the batch's content; splitting it to find the rows at fault");
    let mut outcome = BatchOutcome::default();
    let mut refused: Vec<(Part<'_>, String)> = Vec::new();
    // Ranges still to write, the next on top: left halves before right halves, so
    // what the split commits keeps the batch's order (alert versions, checkpoints).
    let mut todo: Vec<(std::ops::Range<usize>, Option<StoreError>)> =
        vec![(0..parts.len(), Some(first))];
    while let Some((range, known)) = todo.pop() {
        let err = match known {
            Some(e) => e,
            None => match write_parts(client, plan, &parts[range.clone()], fence).await {
                Ok(o) => {
                    outcome.add(&o);
                    continue;
                }
                Err(e) if e.is_content() => e,
                Err(e) => return Err(e),
            },
        };
        if range.len() == 1 {
            refused.push((parts[range.start], err.to_string()));
            continue;
        }
        let mid = range.start + range.len() / 2;
        todo.push((mid..range.end, None));
        todo.push((range.start..mid, None));
    }
    let dead: Vec<Record> = refused
        .iter()
        .map(|(p, e)| Record::Rejected(refused_letter(*p, e)))
        .collect();
    for (p, e) in &refused {
        tracing::warn!(part = %part_label(*p), error = %e, "the database refused a record; kept as a dead letter");
        telemetry_refused(*p);
    }
    // Each letter alone, so one the database refuses too cannot take the others along.
    for d in &dead {
        let o = match write_parts(client, plan, &[Part::Record(d)], fence).await {
            Err(e) if e.is_content() => {
                let Record::Rejected(r) = d else {
                    unreachable!("only dead letters here")
                };
                let escaped = Record::Rejected(escaped_letter(r, &e.to_string()));
                match write_parts(client, plan, &[Part::Record(&escaped)], fence).await {
                    Err(e2) if e2.is_content() => {
                        // Nothing storable is left: the log keeps it (escaped).
                        tracing::error!(topic = %r.topic.escape_debug(), payload = %hex(&r.payload),
                            error = %e2, "dead letter refused by the database even escaped; logged only");
                        metrics::counter!("fleetwatch_dead_letters_unstorable_total").increment(1);
                        continue;
                    }
                    other => other?,
                }
            }
            other => other?,
        };
        outcome.add(&o);
    }
    Ok(outcome)
}

impl BatchOutcome {
    fn add(&mut self, o: &BatchOutcome) {
        self.stored += o.stored;
        self.duplicates += o.duplicates;
        self.dead_letters += o.dead_letters;
        self.alerts_changed += o.alerts_changed;
    }
}

/// Reason of a dead letter the database refused.
pub const REJECTED_BY_DATABASE: &str = "rejected_by_database";

/// The dead letter of a part the database refused, with its error.
fn refused_letter(p: Part<'_>, error: &str) -> Rejected {
    match p {
        Part::Record(Record::Accepted(a)) => Rejected {
            topic: a.source.0.clone(),
            payload: a.source.1.clone(),
            reason: REJECTED_BY_DATABASE,
            detail: error.to_string(),
            received_at: a.received_at,
        },
        // A dead letter refused as it was: the escaped form is all that is left.
        Part::Record(Record::Rejected(r)) => escaped_letter(r, error),
        Part::Derived(d) => Rejected {
            topic: "fleetwatch/derived".into(),
            payload: serde_json::to_vec(&serde_json::json!({
                "alerts": d.alerts, "trips": d.trips,
            }))
            .unwrap_or_default()
            .into(),
            reason: REJECTED_BY_DATABASE,
            detail: format!("rule output refused: {error}"),
            received_at: Utc::now(),
        },
    }
}

/// A dead letter in plain ASCII (topic and detail escaped, the payload as hex text),
/// for one the database refused as it was.
fn escaped_letter(r: &Rejected, error: &str) -> Rejected {
    Rejected {
        topic: r.topic.escape_default().to_string(),
        payload: hex(&r.payload).into_bytes().into(),
        reason: REJECTED_BY_DATABASE,
        detail: format!(
            "dead letter ({}: {}) refused: {}; payload stored as hex",
            r.reason,
            r.detail.escape_default(),
            error.escape_default()
        ),
        received_at: r.received_at,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn part_label(p: Part<'_>) -> String {
    match p {
        Part::Record(Record::Accepted(a)) => format!("fix {} at {}", a.fix.vehicle(), a.fix.ts()),
        Part::Record(Record::Rejected(r)) => format!("dead letter ({})", r.reason),
        Part::Derived(_) => "rule output".into(),
    }
}

fn telemetry_refused(p: Part<'_>) {
    if let Part::Record(Record::Accepted(_)) = p {
        crate::telemetry::fix_rejected(REJECTED_BY_DATABASE);
    }
}

/// What a split can isolate: one record, or the rule output of one item.
#[derive(Debug, Clone, Copy)]
enum Part<'a> {
    Record(&'a Record),
    Derived(&'a Derived),
}

/// The parts of `items`, in order (each item's records, then what the rules derived).
fn parts_of<A>(items: &[Item<A>]) -> Vec<Part<'_>> {
    let mut parts = Vec::new();
    for i in items {
        parts.extend(i.records.iter().map(Part::Record));
        if !i.derived.is_empty() {
            parts.push(Part::Derived(&i.derived));
        }
    }
    parts
}

/// Writes `parts` in one transaction (see [`write_batch`]).
async fn write_parts(
    client: &mut Client,
    plan: Option<&Plan>,
    parts: &[Part<'_>],
    fence: Option<&Fence>,
) -> Result<BatchOutcome, StoreError> {
    let mut records: Vec<&Record> = Vec::new();
    let mut derived: Vec<&Derived> = Vec::new();
    for p in parts {
        match p {
            Part::Record(r) => records.push(r),
            Part::Derived(d) => derived.push(d),
        }
    }
    let tx = client.transaction().await?;
    let mut outcome = BatchOutcome::default();
    let mut fixes = 0u64;
    let mut vehicles: HashMap<&str, (&str, DateTime<Utc>, &Fix)> = HashMap::new();
    let mut dead: Vec<&Rejected> = Vec::new();

    let sink = tx
        .copy_in(&format!(
            "COPY fixes_stage ({FIX_COLUMNS}) FROM STDIN BINARY"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &FIX_TYPES);
    pin_mut!(writer);
    for r in &records {
        match r {
            Record::Accepted(a) => {
                let f = &a.fix;
                let driver = f.driver().map(|d| d.as_str());
                writer
                    .as_mut()
                    .write(&[
                        &f.vehicle().as_str(),
                        &f.ts(),
                        &a.cooperative.as_str(),
                        &deg_to_e7(f.lat()),
                        &deg_to_e7(f.lon()),
                        &f.speed_kmh(),
                        &f.heading_deg(),
                        &driver,
                        &f.ignition(),
                        &f.satellites(),
                        &f.hdop(),
                        &f.odometer_m(),
                        &a.flags.0,
                        &a.received_at,
                    ])
                    .await?;
                fixes += 1;
                let e = vehicles.entry(f.vehicle().as_str()).or_insert((
                    a.cooperative.as_str(),
                    a.received_at,
                    f,
                ));
                e.1 = e.1.max(a.received_at);
                if f.ts() > e.2.ts() {
                    e.2 = f;
                }
            }
            Record::Rejected(r) => dead.push(r),
        }
    }
    writer.finish().await?;
    // Before the fixes: the row locks this takes (to the commit) keep another writer
    // from inserting fixes of the same vehicles meanwhile, which the distance roll-up's
    // neighbour lookups need (`rollup::fixes_insert_sql`).
    if !vehicles.is_empty() {
        let n = vehicles.len();
        let (mut ids, mut coops, mut seen, mut last_ts) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut lat, mut lon, mut speed, mut heading, mut driver) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        // In id order, so writers lock rows in one order (no deadlock between them).
        let mut sorted: Vec<_> = vehicles.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (id, (coop, at, f)) in sorted {
            ids.push(*id);
            coops.push(*coop);
            seen.push(*at);
            last_ts.push(f.ts());
            lat.push(f.lat());
            lon.push(f.lon());
            speed.push(f.speed_kmh());
            heading.push(f.heading_deg());
            driver.push(f.driver().map(|d| d.as_str()));
        }
        tx.execute(
            VEHICLES_UPSERT.as_str(),
            &[
                &ids, &coops, &seen, &last_ts, &lat, &lon, &speed, &heading, &driver,
            ],
        )
        .await?;
    }
    if fixes > 0 {
        outcome.stored = match plan {
            // Only the rows really inserted reach the roll-up: redelivery adds nothing.
            Some(p) => {
                let sql = if p.fixes {
                    &*FIXES_WITH_ROLLUP
                } else {
                    &*FIXES_WITH_DISTANCE
                };
                let n: i64 = tx.query_one(sql.as_str(), &[&p.offset_s]).await?.get(0);
                n as u64
            }
            None => {
                tx.execute(
                    &format!(
                        "INSERT INTO fixes ({FIX_COLUMNS}) SELECT {FIX_COLUMNS} FROM fixes_stage
                         ON CONFLICT DO NOTHING"
                    ),
                    &[],
                )
                .await?
            }
        };
        outcome.duplicates = fixes - outcome.stored;
    }
    if !dead.is_empty() {
        let keys: Vec<i64> = dead
            .iter()
            .map(|d| fnv1a64(&[d.topic.as_bytes(), &d.payload]) as i64)
            .collect();
        let at: Vec<DateTime<Utc>> = dead.iter().map(|d| d.received_at).collect();
        let topics: Vec<String> = dead.iter().map(|d| pg_text(&d.topic)).collect();
        let payloads: Vec<&[u8]> = dead.iter().map(|d| &d.payload[..]).collect();
        let reasons: Vec<&str> = dead.iter().map(|d| d.reason).collect();
        let details: Vec<String> = dead.iter().map(|d| pg_text(&d.detail)).collect();
        outcome.dead_letters = tx
            .execute(
                "INSERT INTO dead_letters (dedup_key, received_at, topic, payload, reason, detail)
                 SELECT * FROM unnest($1::int8[], $2::timestamptz[], $3::text[], $4::bytea[],
                                      $5::text[], $6::text[])
                 ON CONFLICT (dedup_key) DO NOTHING",
                &[&keys, &at, &topics, &payloads, &reasons, &details],
            )
            .await?;
    }
    outcome.alerts_changed = write_derived(&tx, plan, &derived).await?;
    // Last, so the share lock it takes is held only for the commit.
    if let Some(f) = fence {
        f.check(&tx).await?;
    }
    tx.commit().await?;
    Ok(outcome)
}

/// The vehicle list upsert: first/last seen, and the latest position, which moves only
/// forward in event time (a late fix is stored but does not become the live position).
/// A row's cooperative is never changed here: it is the vehicle's owner (registered, or
/// first to send), and a row of another cooperative is left alone (the validator
/// already refuses such fixes; this keeps one cooperative's position out of another's
/// live list whatever happens).
static VEHICLES_UPSERT: LazyLock<String> = LazyLock::new(|| {
    let position = [
        "last_lat",
        "last_lon",
        "last_speed_kmh",
        "last_heading_deg",
        "last_driver_id",
    ]
    .map(|c| {
        format!(
            "{c} = CASE WHEN vehicles.last_fix_ts IS NULL
                              OR EXCLUDED.last_fix_ts >= vehicles.last_fix_ts
                         THEN EXCLUDED.{c} ELSE vehicles.{c} END"
        )
    })
    .join(",\n");
    format!(
        "INSERT INTO vehicles (vehicle_id, cooperative_id, first_seen, last_seen, last_fix_ts,
                               last_lat, last_lon, last_speed_kmh, last_heading_deg,
                               last_driver_id)
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $3::timestamptz[],
                              $4::timestamptz[], $5::float8[], $6::float8[], $7::float4[],
                              $8::float4[], $9::text[])
         ON CONFLICT (vehicle_id) DO UPDATE SET
             first_seen = COALESCE(vehicles.first_seen, EXCLUDED.first_seen),
             last_seen = GREATEST(vehicles.last_seen, EXCLUDED.last_seen),
             last_fix_ts = GREATEST(vehicles.last_fix_ts, EXCLUDED.last_fix_ts),
             {position}
         WHERE vehicles.cooperative_id = EXCLUDED.cooperative_id"
    )
});

/// The fix insert with its roll-ups ($1: offset, s); one row: fixes inserted.
static FIXES_WITH_ROLLUP: LazyLock<String> =
    LazyLock::new(|| rollup::fixes_insert_sql(&FIXES_INSERT_RETURNING, true));
/// The same when a TimescaleDB continuous aggregate counts the fixes.
static FIXES_WITH_DISTANCE: LazyLock<String> =
    LazyLock::new(|| rollup::fixes_insert_sql(&FIXES_INSERT_RETURNING, false));
static FIXES_INSERT_RETURNING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO fixes ({FIX_COLUMNS}) SELECT {FIX_COLUMNS} FROM fixes_stage
         ON CONFLICT DO NOTHING
         RETURNING vehicle_id, cooperative_id, ts, lat_e7, lon_e7, driver_id, flags, received_at"
    )
});

/// The batch's recomputed spans, each also keeping what outputs after it in the batch
/// wrote for its vehicle: spans are reconciled once the whole batch is upserted, and
/// a later output (the next recomputation, live fixes) is newer than the span.
fn spans_in_batch(derived: &[&Derived]) -> Vec<Recomputed> {
    let mut spans = Vec::new();
    for (i, d) in derived.iter().enumerate() {
        for span in &d.recomputed {
            let mut span = span.clone();
            for later in &derived[i + 1..] {
                let alerts = later.restated.iter().chain(&later.alerts);
                for a in alerts.filter(|a| a.vehicle == span.vehicle) {
                    if a.kind == AlertKind::DataGap {
                        span.gaps.push(a.start);
                    } else {
                        span.keep.push(a.id.clone());
                    }
                }
                let trips = later.trips.iter().filter(|t| t.vehicle == span.vehicle);
                span.trips.extend(trips.map(|t| t.start));
                let runs = later.trip_runs.iter().filter(|t| t.vehicle == span.vehicle);
                span.runs.extend(runs.map(|t| t.start));
                let events = later
                    .stop_events
                    .iter()
                    .filter(|e| e.vehicle == span.vehicle);
                span.stop_events.extend(events.map(stop_event_key));
            }
            spans.push(span);
        }
    }
    spans
}

/// The key of a stop event under its vehicle: trip, scheduled arrival, stop sequence.
pub type StopEventKey = (String, DateTime<Utc>, i32);

/// The key a stop event is stored under (with its vehicle).
pub fn stop_event_key(e: &StopEvent) -> StopEventKey {
    (
        e.trip_id.clone(),
        e.scheduled_arrival,
        i32::try_from(e.stop_sequence).unwrap_or(i32::MAX),
    )
}

/// Trip runs and stop events, upserted by key (a recomputation states them again).
async fn write_transit(tx: &Transaction<'_>, derived: &[&Derived]) -> Result<(), StoreError> {
    let runs: Vec<&TripRun> = derived.iter().flat_map(|d| d.trip_runs.iter()).collect();
    if !runs.is_empty() {
        let col = |f: &dyn Fn(&TripRun) -> i16| runs.iter().map(|r| f(r)).collect::<Vec<i16>>();
        let vehicles: Vec<&str> = runs.iter().map(|r| r.vehicle.as_str()).collect();
        let starts: Vec<DateTime<Utc>> = runs.iter().map(|r| r.start).collect();
        let ends: Vec<DateTime<Utc>> = runs.iter().map(|r| r.end).collect();
        let coops: Vec<Option<&str>> = runs
            .iter()
            .map(|r| r.cooperative.as_ref().map(|c| c.as_str()))
            .collect();
        let trips: Vec<&str> = runs.iter().map(|r| r.trip_id.as_str()).collect();
        let routes: Vec<&str> = runs.iter().map(|r| r.route_id.as_str()).collect();
        let dates: Vec<chrono::NaiveDate> = runs.iter().map(|r| r.service_date).collect();
        let sched: Vec<DateTime<Utc>> = runs.iter().map(|r| r.scheduled_start).collect();
        let conf = col(&|r| i16::from(r.confidence));
        let done: Vec<bool> = runs.iter().map(|r| r.completed).collect();
        let served = col(&|r| r.stops_served as i16);
        let skipped = col(&|r| r.stops_skipped as i16);
        let total = col(&|r| r.stops_total as i16);
        let delay: Vec<Option<i32>> = runs.iter().map(|r| r.last_delay_s).collect();
        let dist: Vec<Option<f64>> = runs.iter().map(|r| r.distance_m).collect();
        tx.execute(
            "INSERT INTO trip_runs (vehicle_id, start_ts, end_ts, cooperative_id, trip_id, route_id,
                                    service_date, scheduled_start, confidence, completed,
                                    stops_served, stops_skipped, stops_total, last_delay_s,
                                    distance_m)
             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[],
                                  $5::text[], $6::text[], $7::date[], $8::timestamptz[],
                                  $9::int2[], $10::bool[], $11::int2[], $12::int2[], $13::int2[],
                                  $14::int4[], $15::float8[])
             ON CONFLICT (vehicle_id, start_ts) DO UPDATE SET
                 end_ts = EXCLUDED.end_ts, trip_id = EXCLUDED.trip_id, route_id = EXCLUDED.route_id,
                 service_date = EXCLUDED.service_date, scheduled_start = EXCLUDED.scheduled_start,
                 confidence = EXCLUDED.confidence, completed = EXCLUDED.completed,
                 stops_served = EXCLUDED.stops_served, stops_skipped = EXCLUDED.stops_skipped,
                 stops_total = EXCLUDED.stops_total, last_delay_s = EXCLUDED.last_delay_s,
                 distance_m = EXCLUDED.distance_m",
            &[
                &vehicles, &starts, &ends, &coops, &trips, &routes, &dates, &sched, &conf, &done,
                &served, &skipped, &total, &delay, &dist,
            ],
        )
        .await?;
    }
    // The last version of each stop event wins: one statement updates a row once.
    let mut seen: HashMap<(&str, StopEventKey), usize> = HashMap::new();
    let mut events: Vec<&StopEvent> = Vec::new();
    for e in derived.iter().flat_map(|d| d.stop_events.iter()) {
        match seen.entry((e.vehicle.as_str(), stop_event_key(e))) {
            std::collections::hash_map::Entry::Occupied(o) => events[*o.get()] = e,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(events.len());
                events.push(e);
            }
        }
    }
    if !events.is_empty() {
        let vehicles: Vec<&str> = events.iter().map(|e| e.vehicle.as_str()).collect();
        let trips: Vec<&str> = events.iter().map(|e| e.trip_id.as_str()).collect();
        let sa: Vec<DateTime<Utc>> = events.iter().map(|e| e.scheduled_arrival).collect();
        let seq: Vec<i32> = events.iter().map(|e| stop_event_key(e).2).collect();
        let coops: Vec<Option<&str>> = events
            .iter()
            .map(|e| e.cooperative.as_ref().map(|c| c.as_str()))
            .collect();
        let dates: Vec<chrono::NaiveDate> = events.iter().map(|e| e.service_date).collect();
        let stops: Vec<&str> = events.iter().map(|e| e.stop_id.as_str()).collect();
        let observed: Vec<DateTime<Utc>> = events.iter().map(|e| e.observed).collect();
        let sd: Vec<DateTime<Utc>> = events.iter().map(|e| e.scheduled_departure).collect();
        let arr: Vec<Option<DateTime<Utc>>> = events.iter().map(|e| e.arrival).collect();
        let dep: Vec<Option<DateTime<Utc>>> = events.iter().map(|e| e.departure).collect();
        let dwell: Vec<Option<f64>> = events.iter().map(|e| e.dwell_s).collect();
        let dev: Vec<Option<i32>> = events.iter().map(|e| e.deviation_s).collect();
        let skipped: Vec<bool> = events.iter().map(|e| e.skipped).collect();
        tx.execute(
            "INSERT INTO stop_events (vehicle_id, trip_id, scheduled_arrival, stop_sequence,
                                      cooperative_id, service_date, stop_id, observed_ts,
                                      scheduled_departure, arrival_ts, departure_ts, dwell_s,
                                      deviation_s, skipped)
             SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int4[],
                                  $5::text[], $6::date[], $7::text[], $8::timestamptz[],
                                  $9::timestamptz[], $10::timestamptz[], $11::timestamptz[],
                                  $12::float8[], $13::int4[], $14::bool[])
             ON CONFLICT (vehicle_id, trip_id, scheduled_arrival, stop_sequence) DO UPDATE SET
                 cooperative_id = EXCLUDED.cooperative_id, service_date = EXCLUDED.service_date,
                 stop_id = EXCLUDED.stop_id, observed_ts = EXCLUDED.observed_ts,
                 scheduled_departure = EXCLUDED.scheduled_departure,
                 arrival_ts = EXCLUDED.arrival_ts, departure_ts = EXCLUDED.departure_ts,
                 dwell_s = EXCLUDED.dwell_s, deviation_s = EXCLUDED.deviation_s,
                 skipped = EXCLUDED.skipped",
            &[
                &vehicles, &trips, &sa, &seq, &coops, &dates, &stops, &observed, &sd, &arr, &dep,
                &dwell, &dev, &skipped,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Alerts (upsert, never back from closed to open), data gaps, trips and the last
/// checkpoint of each vehicle in the batch, with their roll-ups. Returns alerts
/// inserted or changed.
async fn write_derived(
    tx: &Transaction<'_>,
    plan: Option<&Plan>,
    derived: &[&Derived],
) -> Result<u64, StoreError> {
    // The last version of each alert wins: one statement cannot update a row twice.
    let mut alerts: Vec<&Alert> = Vec::new();
    let mut gaps: Vec<&Alert> = Vec::new();
    // Whether the version kept is a restatement: it may reopen a closed alert.
    let mut restated: Vec<bool> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let versions = derived.iter().flat_map(|d| {
        let r = d.restated.iter().map(|a| (a, true));
        r.chain(d.alerts.iter().map(|a| (a, false)))
    });
    for (a, r) in versions {
        if a.kind == AlertKind::DataGap {
            gaps.push(a);
            continue;
        }
        match seen.get(a.id.as_str()) {
            Some(&i) => (alerts[i], restated[i]) = (a, r),
            None => {
                seen.insert(a.id.as_str(), alerts.len());
                alerts.push(a);
                restated.push(r);
            }
        }
    }
    let mut changed = 0;
    if !alerts.is_empty() {
        let col =
            |f: &dyn Fn(&Alert) -> Option<String>| alerts.iter().map(|a| f(a)).collect::<Vec<_>>();
        let ids = col(&|a| Some(a.id.to_string()));
        let vehicles = col(&|a| Some(a.vehicle.to_string()));
        let coops = col(&|a| a.cooperative.as_ref().map(|c| c.to_string()));
        let drivers = col(&|a| a.driver.as_ref().map(|d| d.to_string()));
        let kinds = col(&|a| Some(a.kind.as_str().to_string()));
        let levels = col(&|a| Some(a.level.as_str().to_string()));
        let statuses = col(&|a| Some(a.status.as_str().to_string()));
        let severity: Vec<Option<i16>> = alerts.iter().map(|a| a.severity.map(i16::from)).collect();
        let starts: Vec<DateTime<Utc>> = alerts.iter().map(|a| a.start).collect();
        let ends: Vec<Option<DateTime<Utc>>> = alerts.iter().map(|a| a.end).collect();
        let lats: Vec<f64> = alerts.iter().map(|a| a.lat).collect();
        let lons: Vec<f64> = alerts.iter().map(|a| a.lon).collect();
        let details: Vec<&serde_json::Value> = alerts.iter().map(|a| &a.details).collect();
        let emitted: Vec<Option<DateTime<Utc>>> = alerts.iter().map(|a| a.emitted).collect();
        let reopen: Vec<&str> = alerts
            .iter()
            .zip(&restated)
            .filter(|(_, &r)| r)
            .map(|(a, _)| a.id.as_str())
            .collect();
        let upserted = tx
            .query(
                "INSERT INTO alerts (alert_id, vehicle_id, cooperative_id, driver_id, kind, level,
                                     status, severity, start_ts, end_ts, lat, lon, details,
                                     emitted_ts)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::int2[], $9::timestamptz[], $10::timestamptz[],
                     $11::float8[], $12::float8[], $13::jsonb[], $14::timestamptz[])
                 ON CONFLICT (alert_id) DO UPDATE SET
                     status = EXCLUDED.status, end_ts = EXCLUDED.end_ts,
                     severity = EXCLUDED.severity, details = EXCLUDED.details,
                     driver_id = EXCLUDED.driver_id, updated_at = now(), published_at = NULL,
                     retracted_at = NULL, retraction_reason = NULL, emitted_ts = EXCLUDED.emitted_ts
                 WHERE (NOT (alerts.status = 'closed' AND EXCLUDED.status = 'open')
                        OR alerts.retracted_at IS NOT NULL OR EXCLUDED.alert_id = ANY ($15::text[]))
                   AND (alerts.status, alerts.end_ts, alerts.severity, alerts.details,
                        alerts.driver_id, alerts.retracted_at IS NULL)
                       IS DISTINCT FROM
                       (EXCLUDED.status, EXCLUDED.end_ts, EXCLUDED.severity, EXCLUDED.details,
                        EXCLUDED.driver_id, true)
                 RETURNING vehicle_id, start_ts, kind",
                &[
                    &ids, &vehicles, &coops, &drivers, &kinds, &levels, &statuses, &severity,
                    &starts, &ends, &lats, &lons, &details, &emitted, &reopen,
                ],
            )
            .await?;
        changed = upserted.len() as u64;
        // An unchanged alert keeps its row (not published again), but the emission
        // time is the latest computation's: a recomputation after a late fix may emit
        // the same version from an earlier fix, and reconciles by that time.
        tx.execute(
            "UPDATE alerts a SET emitted_ts = u.emitted
             FROM unnest($1::text[], $2::timestamptz[]) AS u(id, emitted)
             WHERE a.alert_id = u.id AND a.emitted_ts IS DISTINCT FROM u.emitted",
            &[&ids, &emitted],
        )
        .await?;
        if let Some(p) = plan {
            // The stored row's vehicle and start (an update keeps them): the days whose
            // counts may have changed are recomputed from `alerts`.
            let mut keys: Vec<(String, chrono::NaiveDate)> = Vec::with_capacity(upserted.len());
            let mut drivers = false;
            for r in &upserted {
                keys.push((r.get(0), rollup::local_day(r.get(1), p.offset_s)));
                drivers |= matches!(
                    r.get::<_, &str>(2),
                    "continuous_driving" | "daily_driving" | "weekly_driving"
                );
            }
            keys.sort_unstable();
            keys.dedup();
            let (vehicles, days): (Vec<String>, Vec<chrono::NaiveDate>) = keys.into_iter().unzip();
            rollup::refresh_alert_days(tx, p.offset_s, &vehicles, &days, drivers).await?;
        }
    }
    if !gaps.is_empty() {
        let vehicles: Vec<&str> = gaps.iter().map(|g| g.vehicle.as_str()).collect();
        let starts: Vec<DateTime<Utc>> = gaps.iter().map(|g| g.start).collect();
        let ends: Vec<DateTime<Utc>> = gaps.iter().map(|g| g.end.unwrap_or(g.start)).collect();
        let coops: Vec<Option<&str>> = gaps
            .iter()
            .map(|g| g.cooperative.as_ref().map(|c| c.as_str()))
            .collect();
        let details: Vec<&serde_json::Value> = gaps.iter().map(|g| &g.details).collect();
        // A redelivered gap is the same row; a recomputation may end it elsewhere.
        let insert = "INSERT INTO data_gaps (vehicle_id, start_ts, end_ts, cooperative_id, details)
             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::jsonb[])
             ON CONFLICT (vehicle_id, start_ts) DO UPDATE SET
                 end_ts = EXCLUDED.end_ts, details = EXCLUDED.details
             WHERE (data_gaps.end_ts, data_gaps.details) IS DISTINCT FROM (EXCLUDED.end_ts, EXCLUDED.details)";
        match plan {
            Some(p) => {
                // New gaps are added to the roll-up; the days of changed ones recounted.
                let sql = format!(
                    "WITH ins AS ({insert} RETURNING vehicle_id, cooperative_id, start_ts, end_ts,
                                                  xmax = 0 AS inserted),
                     added AS ({})
                     SELECT vehicle_id, start_ts FROM ins WHERE NOT inserted",
                    rollup::gaps_sql("(SELECT * FROM ins WHERE inserted) i", "$6")
                );
                let changed = tx
                    .query(
                        &sql,
                        &[&vehicles, &starts, &ends, &coops, &details, &p.offset_s],
                    )
                    .await?;
                if !changed.is_empty() {
                    let (v, d): (Vec<String>, Vec<chrono::NaiveDate>) = changed
                        .iter()
                        .map(|r| (r.get(0), rollup::local_day(r.get(1), p.offset_s)))
                        .unzip();
                    rollup::refresh_trip_gap_days(tx, p.offset_s, &v, &d).await?;
                }
            }
            None => {
                tx.execute(insert, &[&vehicles, &starts, &ends, &coops, &details])
                    .await?;
            }
        }
    }
    let trips: Vec<&Trip> = derived.iter().flat_map(|d| d.trips.iter()).collect();
    if !trips.is_empty() {
        let vehicles: Vec<&str> = trips.iter().map(|t| t.vehicle.as_str()).collect();
        let starts: Vec<DateTime<Utc>> = trips.iter().map(|t| t.start).collect();
        let ends: Vec<DateTime<Utc>> = trips.iter().map(|t| t.end).collect();
        let coops: Vec<Option<&str>> = trips
            .iter()
            .map(|t| t.cooperative.as_ref().map(|c| c.as_str()))
            .collect();
        let drivers: Vec<Option<&str>> = trips
            .iter()
            .map(|t| t.driver.as_ref().map(|d| d.as_str()))
            .collect();
        let dist: Vec<f64> = trips.iter().map(|t| t.distance_m).collect();
        let vmax: Vec<f64> = trips.iter().map(|t| t.max_speed_kmh).collect();
        // A redelivered trip is the same row; a recomputation may end it elsewhere (the
        // count by start day stays: only new trips are added to the roll-up).
        let insert = "INSERT INTO trips (vehicle_id, start_ts, end_ts, cooperative_id, driver_id, distance_m, max_speed_kmh)
             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[],
                                  $5::text[], $6::float8[], $7::float8[])
             ON CONFLICT (vehicle_id, start_ts) DO UPDATE SET
                 end_ts = EXCLUDED.end_ts, driver_id = EXCLUDED.driver_id,
                 distance_m = EXCLUDED.distance_m, max_speed_kmh = EXCLUDED.max_speed_kmh
             WHERE (trips.end_ts, trips.driver_id, trips.distance_m, trips.max_speed_kmh)
                   IS DISTINCT FROM
                   (EXCLUDED.end_ts, EXCLUDED.driver_id, EXCLUDED.distance_m, EXCLUDED.max_speed_kmh)";
        match plan {
            Some(p) => {
                let sql = format!(
                    "WITH ins AS ({insert} RETURNING vehicle_id, cooperative_id, start_ts, distance_m,
                                                  xmax = 0 AS inserted) {}",
                    rollup::trips_sql("(SELECT * FROM ins WHERE inserted) i", "$8")
                );
                tx.execute(
                    &sql,
                    &[
                        &vehicles,
                        &starts,
                        &ends,
                        &coops,
                        &drivers,
                        &dist,
                        &vmax,
                        &p.offset_s,
                    ],
                )
                .await?
            }
            None => {
                tx.execute(
                    insert,
                    &[&vehicles, &starts, &ends, &coops, &drivers, &dist, &vmax],
                )
                .await?
            }
        };
    }
    write_transit(tx, derived).await?;
    let spans = spans_in_batch(derived);
    if !spans.is_empty() {
        changed += super::recompute::retract(tx, plan, &spans).await?;
    }
    write_live(tx, derived).await?;
    // Only the newest checkpoint in the batch matters.
    if let Some(cp) = derived
        .iter()
        .rev()
        .map(|d| &d.checkpoint)
        .find(|c| !c.is_empty())
    {
        let ids: Vec<&str> = cp.iter().map(|c| c.vehicle.as_str()).collect();
        // JSON text as the rules wrote it: no value tree, which for thousands of
        // vehicles costs many times the text's size.
        let states: Vec<Json<&serde_json::value::RawValue>> =
            cp.iter().map(|c| Json(&*c.state)).collect();
        let marks: Vec<Option<DateTime<Utc>>> = cp.iter().map(|c| c.watermark).collect();
        tx.execute(
            "INSERT INTO rule_state (vehicle_id, state, watermark, updated_at)
             SELECT v, s, w, now() FROM unnest($1::text[], $2::jsonb[], $3::timestamptz[]) AS u(v, s, w)
             ON CONFLICT (vehicle_id) DO UPDATE SET state = EXCLUDED.state,
                 watermark = EXCLUDED.watermark, updated_at = now()",
            &[&ids, &states, &marks],
        )
        .await?;
    }
    Ok(changed)
}

/// The scheduled trip of each of `lives` (sorted by vehicle) to `vehicles.live_trip_*`,
/// cleared when it runs none; as the driving state, only over an older fix's.
async fn write_live_trips(tx: &Transaction<'_>, lives: &[&LiveState]) -> Result<(), StoreError> {
    fn trip<'a>(l: &&'a LiveState) -> Option<&'a crate::domain::live::LiveTrip> {
        l.trip.as_deref()
    }
    let vehicles: Vec<&str> = lives.iter().map(|l| l.vehicle.as_str()).collect();
    let as_of: Vec<DateTime<Utc>> = lives.iter().map(|l| l.as_of).collect();
    let ids: Vec<Option<&str>> = lives
        .iter()
        .map(|l| trip(l).map(|t| t.trip_id.as_str()))
        .collect();
    let routes: Vec<Option<&str>> = lives
        .iter()
        .map(|l| trip(l).map(|t| t.route_id.as_str()))
        .collect();
    let dates: Vec<Option<chrono::NaiveDate>> = lives
        .iter()
        .map(|l| trip(l).map(|t| t.service_date))
        .collect();
    let starts: Vec<Option<DateTime<Utc>>> = lives
        .iter()
        .map(|l| trip(l).map(|t| t.scheduled_start))
        .collect();
    let dirs: Vec<Option<i16>> = lives
        .iter()
        .map(|l| trip(l).and_then(|t| t.direction).map(i16::from))
        .collect();
    let heads: Vec<Option<&str>> = lives
        .iter()
        .map(|l| trip(l).and_then(|t| t.headsign.as_deref()))
        .collect();
    let stops: Vec<Option<&str>> = lives
        .iter()
        .map(|l| trip(l).and_then(|t| t.next_stop_id.as_deref()))
        .collect();
    let seqs: Vec<Option<i32>> = lives
        .iter()
        .map(|l| trip(l).and_then(|t| t.next_stop_sequence).map(|q| q as i32))
        .collect();
    let names: Vec<Option<&str>> = lives
        .iter()
        .map(|l| trip(l).and_then(|t| t.next_stop_name.as_deref()))
        .collect();
    let delays: Vec<Option<i32>> = lives
        .iter()
        .map(|l| trip(l).and_then(|t| t.delay_s))
        .collect();
    let confs: Vec<Option<i16>> = lives
        .iter()
        .map(|l| trip(l).map(|t| i16::from(t.confidence)))
        .collect();
    tx.execute(
        "UPDATE vehicles v SET live_trip_id = u.trip, live_trip_route_id = u.route,
             live_trip_service_date = u.day, live_trip_start_ts = u.start,
             live_trip_direction = u.dir, live_trip_headsign = u.head, live_next_stop_id = u.stop,
             live_next_stop_sequence = u.seq, live_next_stop_name = u.name, live_delay_s = u.delay,
             live_trip_confidence = u.conf
         FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::date[],
                     $6::timestamptz[], $7::int2[], $8::text[], $9::text[], $10::int4[],
                     $11::text[], $12::int4[], $13::int2[])
              AS u(vehicle, as_of, trip, route, day, start, dir, head, stop, seq, name, delay, conf)
         WHERE v.vehicle_id = u.vehicle AND v.live_as_of_ts = u.as_of",
        &[
            &vehicles, &as_of, &ids, &routes, &dates, &starts, &dirs, &heads, &stops, &seqs,
            &names, &delays, &confs,
        ],
    )
    .await?;
    Ok(())
}

/// Keeps the live driving-time state: the newest state of each vehicle in the batch
/// goes to its `vehicles.live_*` columns and, with a driver, to `driver_state`, each
/// only when no newer fix's state is stored (a recomputation's intermediate pages
/// are older; its last state, after the newest fix, replaces the stored one).
async fn write_live(tx: &Transaction<'_>, derived: &[&Derived]) -> Result<(), StoreError> {
    let mut newest: HashMap<&str, &LiveState> = HashMap::new();
    for l in derived.iter().flat_map(|d| d.live.iter()) {
        let e = newest.entry(l.vehicle.as_str()).or_insert(l);
        if l.as_of >= e.as_of {
            *e = l;
        }
    }
    if newest.is_empty() {
        return Ok(());
    }
    let mut lives: Vec<&LiveState> = newest.into_values().collect();
    // In id order, as the vehicles upsert locks them.
    lives.sort_unstable_by(|a, b| a.vehicle.cmp(&b.vehicle));
    let vehicles: Vec<&str> = lives.iter().map(|l| l.vehicle.as_str()).collect();
    let drivers: Vec<Option<&str>> = lives
        .iter()
        .map(|l| l.driver.as_ref().map(|d| d.as_str()))
        .collect();
    let since: Vec<Option<DateTime<Utc>>> = lives.iter().map(|l| l.driver_since).collect();
    let as_of: Vec<DateTime<Utc>> = lives.iter().map(|l| l.as_of).collect();
    let moving: Vec<bool> = lives.iter().map(|l| l.moving).collect();
    let cont: Vec<f64> = lives.iter().map(|l| l.continuous_s).collect();
    let end: Vec<Option<DateTime<Utc>>> = lives.iter().map(|l| l.last_drive_end).collect();
    let day: Vec<chrono::NaiveDate> = lives.iter().map(|l| l.day).collect();
    let daily: Vec<f64> = lives.iter().map(|l| l.daily_s).collect();
    let weekly: Vec<f64> = lives.iter().map(|l| l.weekly_s).collect();
    let on_route: Vec<Option<bool>> = lives.iter().map(|l| l.on_route).collect();
    tx.execute(
        "UPDATE vehicles v SET live_as_of_ts = u.as_of, live_driver_id = u.driver,
             live_driver_since_ts = u.since, live_moving = u.moving, live_continuous_s = u.cont,
             live_last_drive_end_ts = u.drive_end, live_day = u.day, live_daily_s = u.daily,
             live_weekly_s = u.weekly, live_on_route = u.on_route
         FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::bool[],
                     $6::float8[], $7::timestamptz[], $8::date[], $9::float8[], $10::float8[],
                     $11::bool[])
              AS u(vehicle, driver, since, as_of, moving, cont, drive_end, day, daily, weekly, on_route)
         WHERE v.vehicle_id = u.vehicle
           AND (v.live_as_of_ts IS NULL OR u.as_of >= v.live_as_of_ts)",
        &[
            &vehicles, &drivers, &since, &as_of, &moving, &cont, &end, &day, &daily, &weekly,
            &on_route,
        ],
    )
    .await?;
    write_live_trips(tx, &lives).await?;
    // One row per driver: a driver in two vehicles of the batch keeps the newer.
    let mut by_driver: HashMap<&str, usize> = HashMap::new();
    for (i, l) in lives.iter().enumerate() {
        let Some(d) = &l.driver else { continue };
        let e = by_driver.entry(d.as_str()).or_insert(i);
        if l.as_of > lives[*e].as_of {
            *e = i;
        }
    }
    if by_driver.is_empty() {
        return Ok(());
    }
    let mut picked: Vec<(&str, usize)> = by_driver.into_iter().collect();
    picked.sort_unstable();
    let pick = |f: &dyn Fn(usize) -> Option<String>| -> Vec<Option<String>> {
        picked.iter().map(|&(_, i)| f(i)).collect()
    };
    let ids: Vec<&str> = picked.iter().map(|p| p.0).collect();
    let dv = pick(&|i| Some(vehicles[i].to_string()));
    let ix: Vec<usize> = picked.iter().map(|p| p.1).collect();
    let sel = |v: &dyn Fn(usize) -> f64| ix.iter().map(|&i| v(i)).collect::<Vec<f64>>();
    let d_since: Vec<Option<DateTime<Utc>>> = ix.iter().map(|&i| since[i]).collect();
    let d_as_of: Vec<DateTime<Utc>> = ix.iter().map(|&i| as_of[i]).collect();
    let d_moving: Vec<bool> = ix.iter().map(|&i| moving[i]).collect();
    let d_end: Vec<Option<DateTime<Utc>>> = ix.iter().map(|&i| end[i]).collect();
    let d_day: Vec<chrono::NaiveDate> = ix.iter().map(|&i| day[i]).collect();
    let (d_cont, d_daily, d_weekly) = (sel(&|i| cont[i]), sel(&|i| daily[i]), sel(&|i| weekly[i]));
    tx.execute(
        "INSERT INTO driver_state (driver_id, vehicle_id, since_ts, as_of_ts, moving, continuous_s,
                                   last_drive_end_ts, day, daily_s, weekly_s)
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                              $5::bool[], $6::float8[], $7::timestamptz[], $8::date[],
                              $9::float8[], $10::float8[])
         ON CONFLICT (driver_id) DO UPDATE SET vehicle_id = EXCLUDED.vehicle_id,
             since_ts = EXCLUDED.since_ts, as_of_ts = EXCLUDED.as_of_ts, moving = EXCLUDED.moving,
             continuous_s = EXCLUDED.continuous_s, last_drive_end_ts = EXCLUDED.last_drive_end_ts,
             day = EXCLUDED.day, daily_s = EXCLUDED.daily_s, weekly_s = EXCLUDED.weekly_s,
             updated_at = now()
         WHERE EXCLUDED.as_of_ts >= driver_state.as_of_ts",
        &[
            &ids, &dv, &d_since, &d_as_of, &d_moving, &d_cont, &d_end, &d_day, &d_daily, &d_weekly,
        ],
    )
    .await?;
    tx.execute(
        "INSERT INTO driver_cooperatives (driver_id, cooperative_id)
         SELECT u.d, v.cooperative_id FROM unnest($1::text[], $2::text[]) AS u(d, vehicle)
         JOIN vehicles v ON v.vehicle_id = u.vehicle
         ON CONFLICT DO NOTHING",
        &[&ids, &dv],
    )
    .await?;
    Ok(())
}

/// Wakes the readers of committed alerts (the MQTT outbox, the deliveries' fan-out)
/// when a batch changed alerts, so an alert goes out at once rather than at their
/// next poll. A wake while one is busy is kept for its next wait.
#[derive(Clone, Default)]
pub struct AlertsReady {
    /// The outbox publishing alerts on the alert topic.
    pub outbox: Arc<tokio::sync::Notify>,
    /// The fan-out into the deliveries' outbox.
    pub deliveries: Arc<tokio::sync::Notify>,
}

impl AlertsReady {
    fn notify(&self) {
        self.outbox.notify_one();
        self.deliveries.notify_one();
    }
}

/// Runs the writer until `rx` closes (the consumer stopped) and every item in it is
/// committed and acked. A database outage makes it retry the same batch with backoff:
/// nothing is acked, so the broker keeps the messages and backpressure reaches it.
// Each argument is a separate hand-off from the app's wiring.
#[allow(clippy::too_many_arguments)]
pub async fn run<K: Acker>(
    url: String,
    cfg: BatchConfig,
    mut rx: mpsc::Receiver<Item<K::Token>>,
    acker: K,
    shutdown: CancellationToken,
    health: Arc<Health>,
    alerts_ready: AlertsReady,
    fence: Option<Fence>,
) {
    let mut client: Option<Client> = None;
    let mut plan: Option<Plan> = None;
    let mut backoff = Duration::from_millis(100);
    let max_wait = Duration::from_millis(cfg.max_wait_ms);
    let mut pending: Vec<Item<K::Token>> = Vec::new();
    let mut unacked: VecDeque<K::Token> = VecDeque::new();
    loop {
        // Gather a batch: wait for the first item (retrying leftover acks meanwhile),
        // then take more until full or late.
        while pending.is_empty() {
            flush_acks(&acker, &mut unacked);
            let retry = tokio::time::sleep(Duration::from_millis(2));
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => pending.push(item),
                    None => {
                        for t in unacked.drain(..) {
                            acker.ack(t).await;
                        }
                        return;
                    }
                },
                _ = retry, if !unacked.is_empty() => {}
            }
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut n: usize = pending.iter().map(|i| i.records.len()).sum();
        while n < cfg.max_records {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => {
                    n += item.records.len();
                    pending.push(item);
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Commit, retrying on a fresh connection until it lands or we are told to stop
        // waiting for the database (then the unacked messages are redelivered later).
        let n_records: usize = pending.iter().map(|i| i.records.len()).sum();
        let started = Instant::now();
        let outcome = loop {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = match connect(&url).await {
                    Ok(c) => match prepare_fenced(&c, fence.as_ref()).await {
                        Ok(p) => {
                            plan = p;
                            Some(c)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "preparing writer connection failed");
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "database unreachable; retrying");
                        None
                    }
                };
            }
            if let Some(c) = client.as_mut() {
                match write_batch_fenced(c, plan.as_ref(), &pending, fence.as_ref()).await {
                    Ok(o) => {
                        health.database.store(true, Ordering::Relaxed);
                        break Some(o);
                    }
                    Err(e @ StoreError::Fenced { .. }) => {
                        // Another instance leads: its session has these messages now.
                        tracing::error!(error = %e, messages = pending.len(),
                            "writer stopping: batch not committed (the new leader gets it from the broker)");
                        return;
                    }
                    Err(e) => {
                        health.database.store(false, Ordering::Relaxed);
                        metrics::counter!("fleetwatch_store_errors_total",
                            "kind" => if e.is_transient() { "transient" } else { "data" })
                        .increment(1);
                        tracing::warn!(error = %e, records = n_records, "batch commit failed; retrying");
                        client = None;
                    }
                }
            }
            if shutdown.is_cancelled()
                && rx.is_closed()
                && backoff >= Duration::from_millis(cfg.max_backoff_ms)
            {
                // Shutting down during an outage: give up this batch, unacked.
                break None;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(cfg.max_backoff_ms));
        };
        let Some(outcome) = outcome else {
            tracing::warn!(
                messages = pending.len(),
                "stopping with an uncommitted batch; the broker will redeliver it"
            );
            return;
        };
        backoff = Duration::from_millis(100);
        let elapsed = started.elapsed();
        let now = Utc::now();
        let committed = crate::telemetry::Committed {
            stored: outcome.stored,
            duplicates: outcome.duplicates,
            dead_letters: outcome.dead_letters,
        };
        crate::telemetry::batch_committed(committed, n_records, elapsed.as_secs_f64());
        if outcome.alerts_changed > 0 {
            alerts_ready.notify();
        }
        let lag = metrics::histogram!("fleetwatch_ingest_lag_seconds");
        for item in pending.drain(..) {
            lag.record((now - item.received_at).num_microseconds().unwrap_or(0) as f64 / 1e6);
            unacked.extend(item.ack);
        }
        fault::after_commit();
        flush_acks(&acker, &mut unacked);
    }
}

/// Queues as many kept acks as there is room for, in order.
fn flush_acks<K: Acker>(acker: &K, unacked: &mut VecDeque<K::Token>) {
    while let Some(t) = unacked.pop_front() {
        if let Err(t) = acker.try_ack(t) {
            unacked.push_front(t);
            metrics::gauge!("fleetwatch_acks_waiting").set(unacked.len() as f64);
            return;
        }
    }
    metrics::gauge!("fleetwatch_acks_waiting").set(0.0);
}

/// Fault injection for the no-loss tests: `FLEETWATCH_FAULT_ABORT_AFTER_COMMITS=N`
/// aborts the process right after the N-th commit, before its acks are sent.
mod fault {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static COMMITS: AtomicU64 = AtomicU64::new(0);

    pub fn after_commit() {
        let limit = LIMIT.get_or_init(|| {
            std::env::var("FLEETWATCH_FAULT_ABORT_AFTER_COMMITS")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(limit) = limit {
            if COMMITS.fetch_add(1, Ordering::SeqCst) + 1 >= *limit {
                eprintln!("fault injection: aborting after commit, before ack");
                std::process::abort();
            }
        }
    }
}
