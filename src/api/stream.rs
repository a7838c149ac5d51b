//! `GET /api/v1/stream`: server-sent events of what changed in the live fleet, for
//! the console instead of polling the whole list.
//!
//! One poller for all clients reads, once a second, the vehicles heard and the
//! alerts changed since its last read (with an overlap, so a batch committed late
//! is not missed) and broadcasts what differs from what it sent before. Polling the
//! database rather than a channel fed by the writer keeps the writer untouched, sees
//! what every instance writes, and reuses the live list's own query (status, open
//! alerts, driving figures), so the stream says exactly what `GET /api/v1/vehicles`
//! would. Each connection filters the broadcast by its caller's cooperative.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::alerts::{alert_json, SELECT_ALERT};
use super::auth::Caller;
use super::error::ApiResult;
use super::vehicles::live_vehicles;
use super::AppState;

/// Updates buffered per connection (one per second at most): a client this far
/// behind is dropped rather than buffered without bound.
pub const STREAM_BUFFER: usize = 16;
/// Alerts in the snapshot sent on connect (newest first), as the console lists them.
pub const SNAPSHOT_ALERTS: i64 = 200;
/// Rows changed up to this long before the last read are read again: a batch that
/// committed after the read but was received before it is still seen.
const OVERLAP_S: f64 = 15.0;

/// One second's changes, each entry with the cooperative it belongs to.
#[derive(Debug, Default)]
pub struct Changes {
    /// Vehicles whose entry of the live list changed.
    pub vehicles: Vec<(String, Arc<Value>)>,
    /// Alerts new or changed (cooperative `None`: an alert of no listed vehicle).
    pub alerts: Vec<(Option<String>, Arc<Value>)>,
}

/// The broadcast of changes the stream connections subscribe to.
pub struct LiveFeed {
    tx: broadcast::Sender<Arc<Changes>>,
    stop: CancellationToken,
}

impl LiveFeed {
    /// A feed whose connections end when `stop` is cancelled (shutdown).
    pub fn new(stop: CancellationToken) -> Arc<Self> {
        let (tx, _) = broadcast::channel(STREAM_BUFFER);
        Arc::new(Self { tx, stop })
    }
}

/// What the columns that change a vehicle's entry without an alert said at the last
/// read: when the writer last heard it, and its driving figures (a recomputation
/// rewrites them without a new fix).
type Print = (
    Option<DateTime<Utc>>,
    Option<f64>,
    Option<f64>,
    Option<bool>,
);

/// A vehicle's [`Print`], the entry sent (none yet), and when it was last read.
type SentVehicle = (Print, Option<Arc<Value>>, DateTime<Utc>);

/// What the poller sent last, by id, with when it was last read (entries that left
/// the overlap window are forgotten: a later change reads them again anyway).
#[derive(Default)]
struct Sent {
    vehicles: HashMap<String, SentVehicle>,
    alerts: HashMap<String, (Arc<Value>, DateTime<Utc>)>,
}

/// Runs the poller until `shutdown`: once a second, the changes to the feed (paused
/// while no one is connected; it then resumes from where it was, so a client that
/// connects meanwhile misses nothing between its snapshot and its first update).
pub async fn run(feed: Arc<LiveFeed>, state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = Sent::default();
    let mut since: Option<DateTime<Utc>> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if feed.tx.receiver_count() == 0 {
            continue;
        }
        match poll(&state, &mut sent, since).await {
            Ok((at, changes)) => {
                since = Some(at);
                if !changes.vehicles.is_empty() || !changes.alerts.is_empty() {
                    let _ = feed.tx.send(Arc::new(changes));
                }
            }
            Err(e) => tracing::warn!(error = %e, "live stream poll failed; retrying"),
        }
    }
}

/// Reads what changed since `since` (the database clock of the previous read; `None`:
/// the last seconds) and returns the read's clock and the entries that differ from
/// `sent`. Cheap columns are compared first: only the vehicles whose columns or
/// alerts changed get their entry built.
async fn poll(
    s: &AppState,
    sent: &mut Sent,
    since: Option<DateTime<Utc>>,
) -> Result<(DateTime<Utc>, Changes), super::error::ApiError> {
    let db = s.db.get().await?;
    let at: DateTime<Utc> = db.query_one("SELECT now()", &[]).await?.get(0);
    let from = since.unwrap_or(at) - chrono::Duration::milliseconds((OVERLAP_S * 1000.0) as i64);
    let mut changes = Changes::default();
    let mut touched: std::collections::HashSet<String> = Default::default();
    let rows = db
        .query(
            &format!(
                "{} WHERE a.updated_at > $1
                    OR a.alert_id IN (SELECT l.alert_id FROM reminder_log l
                                      WHERE l.status = 'acknowledged' AND l.at > $1)
                 ORDER BY a.start_ts",
                *SELECT_ALERT_ACKED
            ),
            &[&from],
        )
        .await?;
    for r in &rows {
        let value = Arc::new(alert_value(r));
        let id = value["id"].as_str().unwrap_or_default().to_string();
        if sent.alerts.get(&id).is_some_and(|(old, _)| *old == value) {
            sent.alerts.insert(id, (value, at));
            continue;
        }
        sent.alerts.insert(id, (value.clone(), at));
        if let Some(v) = value["vehicle_id"].as_str() {
            touched.insert(v.to_string());
        }
        let coop = value["cooperative_id"].as_str().map(str::to_string);
        changes.alerts.push((coop, value));
    }
    let prints = db
        .query(
            "SELECT vehicle_id, last_seen, live_continuous_s, live_daily_s, live_on_route
             FROM vehicles WHERE last_seen > $1",
            &[&from],
        )
        .await?;
    for r in &prints {
        let id: String = r.get(0);
        let print: Print = (r.get(1), r.get(2), r.get(3), r.get(4));
        match sent.vehicles.get_mut(&id) {
            Some((p, _, t)) if *p == print => *t = at,
            _ => {
                touched.insert(id.clone());
                let old = sent.vehicles.remove(&id).and_then(|e| e.1);
                sent.vehicles.insert(id, (print, old, at));
            }
        }
    }
    if !touched.is_empty() {
        let ids: Vec<String> = touched.into_iter().collect();
        for v in live_vehicles(&db, None, Some(&ids), &s.settings, Utc::now()).await? {
            let coop = v.cooperative_id.clone();
            let value = Arc::new(serde_json::to_value(&v).unwrap_or(Value::Null));
            let e = sent.vehicles.entry(v.vehicle_id.clone()).or_insert((
                (None, None, None, None),
                None,
                at,
            ));
            e.2 = at;
            if e.1.as_ref().is_some_and(|old| *old == value) {
                continue;
            }
            e.1 = Some(value.clone());
            changes.vehicles.push((coop, value));
        }
    }
    let keep = at - chrono::Duration::seconds(OVERLAP_S as i64 * 2);
    sent.vehicles.retain(|_, e| e.2 >= keep);
    sent.alerts.retain(|_, (_, t)| *t >= keep);
    Ok((at, changes))
}

/// [`SELECT_ALERT`] with whether the alert was acknowledged (column 15).
static SELECT_ALERT_ACKED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    SELECT_ALERT.replacen(
        "a.retraction_reason",
        "a.retraction_reason, EXISTS (SELECT 1 FROM reminder_log l
             WHERE l.alert_id = a.alert_id AND l.status = 'acknowledged')",
        1,
    )
});

fn alert_value(r: &tokio_postgres::Row) -> Value {
    let mut v = alert_json(r);
    v["acknowledged"] = json!(r.get::<_, bool>(15));
    v
}

/// `GET /api/v1/stream`: `snapshot` on connect (the live list and the newest alerts of
/// the caller's scope), then `update` events with only the vehicles and alerts that
/// changed, at most one a second; a comment every 15 s keeps idle connections open.
/// A client that falls [`STREAM_BUFFER`] updates behind is disconnected (it reconnects
/// and gets a new snapshot).
pub async fn stream(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    // Subscribed before the snapshot is read: nothing between the two is missed (an
    // update may repeat what the snapshot has, which is harmless).
    let rx = s.live.tx.subscribe();
    let scope = caller.scope().map(str::to_string);
    let db = s.db.get().await?;
    let vehicles = live_vehicles(&db, scope.as_deref(), None, &s.settings, Utc::now()).await?;
    let alerts = db
        .query(
            &format!(
                "{} WHERE ($1::text IS NULL OR COALESCE(a.cooperative_id, v.cooperative_id) = $1)
                   AND a.retracted_at IS NULL
                 ORDER BY a.start_ts DESC, a.alert_id LIMIT $2",
                *SELECT_ALERT_ACKED
            ),
            &[&scope, &SNAPSHOT_ALERTS],
        )
        .await?;
    drop(db);
    let alerts: Vec<Value> = alerts.iter().map(alert_value).collect();
    let snapshot = Event::default()
        .event("snapshot")
        .json_data(json!({ "vehicles": vehicles, "alerts": alerts }))
        .unwrap_or_default();
    metrics::gauge!("fleetwatch_stream_connections").increment(1.0);
    let state = Conn {
        first: Some(snapshot),
        rx,
        scope,
        stop: s.live.stop.clone(),
    };
    let events = events(state);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A connection's events: its snapshot, then its scope's updates, until shutdown or
/// until it falls [`STREAM_BUFFER`] updates behind (then it ends: the client is dropped).
fn events(conn: Conn) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(conn, |mut c| async move {
        if let Some(e) = c.first.take() {
            return Some((Ok(e), c));
        }
        loop {
            let changes = tokio::select! {
                _ = c.stop.cancelled() => return None,
                r = c.rx.recv() => match r {
                    Ok(ch) => ch,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        metrics::counter!("fleetwatch_stream_dropped_total").increment(1);
                        tracing::info!(missed = n, "stream client too slow; disconnected");
                        return None;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            if let Some(e) = c.event(&changes) {
                return Some((Ok(e), c));
            }
        }
    })
}

/// One connection's state.
struct Conn {
    first: Option<Event>,
    rx: broadcast::Receiver<Arc<Changes>>,
    scope: Option<String>,
    stop: CancellationToken,
}

impl Conn {
    /// The `update` event of `changes` in this caller's scope (`None`: nothing of it).
    fn event(&self, changes: &Changes) -> Option<Event> {
        let mine = |coop: Option<&str>| self.scope.as_deref().is_none_or(|s| coop == Some(s));
        let vehicles: Vec<&Value> = changes
            .vehicles
            .iter()
            .filter(|(c, _)| mine(Some(c)))
            .map(|(_, v)| &**v)
            .collect();
        let alerts: Vec<&Value> = changes
            .alerts
            .iter()
            .filter(|(c, _)| mine(c.as_deref()))
            .map(|(_, v)| &**v)
            .collect();
        if vehicles.is_empty() && alerts.is_empty() {
            return None;
        }
        Event::default()
            .event("update")
            .json_data(json!({ "vehicles": vehicles, "alerts": alerts }))
            .ok()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        metrics::gauge!("fleetwatch_stream_connections").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn change(coop: &str, id: &str) -> Arc<Changes> {
        Arc::new(Changes {
            vehicles: vec![(coop.into(), Arc::new(json!({ "vehicle_id": id })))],
            alerts: Vec::new(),
        })
    }

    fn conn(feed: &LiveFeed, scope: Option<&str>) -> Conn {
        Conn {
            first: Some(Event::default().event("snapshot").data("{}")),
            rx: feed.tx.subscribe(),
            scope: scope.map(str::to_string),
            stop: feed.stop.clone(),
        }
    }

    #[tokio::test]
    async fn a_client_sees_its_scope_and_is_dropped_when_too_far_behind() {
        let feed = LiveFeed::new(CancellationToken::new());
        // Keeping up: the snapshot, then only its cooperative's changes.
        let mut a = Box::pin(events(conn(&feed, Some("HTX-A"))));
        feed.tx.send(change("HTX-B", "B-1")).unwrap();
        feed.tx.send(change("HTX-A", "A-1")).unwrap();
        assert!(a.next().await.is_some(), "the snapshot");
        let e = a.next().await.expect("A's update");
        assert!(format!("{e:?}").contains("A-1") && !format!("{e:?}").contains("B-1"));
        // Not reading while more than STREAM_BUFFER updates go by: the stream ends
        // instead of buffering them.
        let mut slow = Box::pin(events(conn(&feed, None)));
        assert!(slow.next().await.is_some(), "the snapshot");
        for i in 0..=STREAM_BUFFER {
            feed.tx.send(change("HTX-A", &format!("A-{i}"))).unwrap();
        }
        assert!(
            slow.next().await.is_none(),
            "a client too far behind is dropped"
        );
        // Shutdown ends the others.
        feed.stop.cancel();
        while let Some(e) = a.next().await {
            let _ = e;
        }
    }
}
