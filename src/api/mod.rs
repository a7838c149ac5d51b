//! HTTP: health, readiness and Prometheus metrics, and the `/api/v1` of live
//! positions, tracks, alerts and compliance reports behind bearer tokens.

pub mod alerts;
pub mod auth;
pub mod deliveries;
pub mod drivers;
pub mod error;
pub mod gtfs_rt;
pub mod map;
pub mod openapi;
pub mod reports;
pub mod route_reports;
pub mod stream;
pub mod time;
pub mod transit;
pub mod vehicles;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

pub use crate::health::Health;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Readiness flags.
    pub health: Arc<Health>,
    /// Renders the metrics.
    pub metrics: PrometheusHandle,
    /// Reloads routes and zones (`POST /admin/reload-geo`).
    pub reload_geo: Option<Arc<crate::app::GeoReloader>>,
    /// Connections for queries.
    pub db: deadpool_postgres::Pool,
    /// The settings the service runs with (local time offset, limits of the API).
    pub settings: Arc<crate::config::Settings>,
    /// The routes and zones in use (replaced on reload).
    pub geo: tokio::sync::watch::Receiver<Arc<crate::geo::GeoIndex>>,
    /// The registry the pipeline uses: the admin API sends it changes.
    pub registry: Arc<tokio::sync::watch::Sender<Arc<Vec<crate::domain::Vehicle>>>>,
    /// Heavy requests (track pages, reports) in progress per token.
    pub heavy: Arc<HeavyLimiter>,
    /// The devices the gateway has heard.
    pub devices: Arc<crate::sources::gateway::DeviceBook>,
    /// Changes of the live fleet for `GET /api/v1/stream` (fed by [`stream::run`]).
    pub live: Arc<stream::LiveFeed>,
}

/// Counts the heavy requests (track pages, compliance reports) each token has in
/// progress, and refuses one over the limit (429) instead of queueing it: one tenant
/// cannot take every database connection of the API, nor its memory.
#[derive(Debug)]
pub struct HeavyLimiter {
    max_per_token: usize,
    active: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl HeavyLimiter {
    /// At most `max_per_token` (at least 1) at once per token.
    pub fn new(max_per_token: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_token: max_per_token.max(1),
            active: Default::default(),
        })
    }

    /// A permit for one heavy request of `caller`, released when dropped.
    pub fn try_acquire(
        self: &Arc<Self>,
        caller: &auth::Caller,
    ) -> Result<HeavyPermit, error::ApiError> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let n = active.entry(caller.token_id.clone()).or_insert(0);
        if *n >= self.max_per_token {
            metrics::counter!("fleetwatch_api_throttled_total").increment(1);
            return Err(error::ApiError::TooManyRequests(format!(
                "at most {} track or report requests at once per token; retry when one has finished",
                self.max_per_token
            )));
        }
        *n += 1;
        Ok(HeavyPermit {
            limiter: self.clone(),
            token_id: caller.token_id.clone(),
        })
    }
}

/// One heavy request in progress (see [`HeavyLimiter`]).
#[derive(Debug)]
pub struct HeavyPermit {
    limiter: Arc<HeavyLimiter>,
    token_id: String,
}

impl Drop for HeavyPermit {
    fn drop(&mut self) {
        let mut active = self
            .limiter
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = active.get_mut(&self.token_id) {
            *n -= 1;
            if *n == 0 {
                active.remove(&self.token_id);
            }
        }
    }
}

/// A small pool of connections for the HTTP handlers, with the default timeouts.
pub fn pool(db_url: &str) -> Result<deadpool_postgres::Pool, crate::store::StoreError> {
    pool_with(db_url, &crate::config::DatabaseConfig::default())
}

/// A small pool of connections for the HTTP handlers: waiting for a connection,
/// opening and recycling one are bounded by `api_wait_timeout_ms` (then 503), every
/// statement by `api_statement_timeout_ms`.
pub fn pool_with(
    db_url: &str,
    db: &crate::config::DatabaseConfig,
) -> Result<deadpool_postgres::Pool, crate::store::StoreError> {
    let mut cfg: tokio_postgres::Config = db_url.parse()?;
    cfg.options(format!(
        "-c statement_timeout={}",
        db.api_statement_timeout_ms
    ));
    cfg.connect_timeout(std::time::Duration::from_millis(
        db.api_wait_timeout_ms.max(1),
    ));
    let wait = Some(std::time::Duration::from_millis(
        db.api_wait_timeout_ms.max(1),
    ));
    let mgr = deadpool_postgres::Manager::from_config(
        cfg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    Ok(deadpool_postgres::Pool::builder(mgr)
        .max_size(8)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(wait)
        .create_timeout(wait)
        .recycle_timeout(wait)
        .build()
        .expect("pool with the tokio runtime builds"))
}

/// Bounds every request: one still waiting (for a database that stopped answering)
/// after the statement and wait timeouts gets a 503 instead of hanging.
async fn bounded(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let limit = std::time::Duration::from_millis(
        s.settings.database.api_statement_timeout_ms + s.settings.database.api_wait_timeout_ms,
    );
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error::ApiError::Unavailable(format!(
            "no answer from the database within {} ms",
            limit.as_millis()
        ))
        .into_response(),
    }
}

/// The router; tests call it with `oneshot`, the app serves it.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/reload-geo", axum::routing::post(reload_geo))
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/api/v1/vehicles", get(vehicles::list))
        .route(
            "/api/v1/vehicles/{id}",
            axum::routing::put(vehicles::put).delete(vehicles::delete),
        )
        .route("/api/v1/vehicles/{id}/track", get(vehicles::track))
        .route("/api/v1/vehicles/{id}/trips", get(vehicles::trips))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/drivers/{id}", get(drivers::get))
        .route("/api/v1/stream", get(stream::stream))
        .route("/api/v1/alerts", get(alerts::list))
        .route("/api/v1/alerts/{id}/ack", axum::routing::post(alerts::ack))
        .route("/api/v1/reports/compliance", get(reports::compliance))
        .route("/api/v1/reports/routes", get(route_reports::routes))
        .route("/api/v1/trip-runs", get(transit::trip_runs))
        .route("/api/v1/stop-events", get(transit::stop_events))
        .route(
            "/api/v1/gtfs-rt/vehicle-positions",
            get(gtfs_rt::vehicle_positions_feed),
        )
        .route(
            "/api/v1/gtfs-rt/trip-updates",
            get(gtfs_rt::trip_updates_feed),
        )
        .route(
            "/api/v1/destinations",
            get(deliveries::list).post(deliveries::create),
        )
        .route(
            "/api/v1/destinations/{id}",
            get(deliveries::get)
                .put(deliveries::replace)
                .delete(deliveries::delete),
        )
        .route(
            "/api/v1/destinations/{id}/unpark",
            axum::routing::post(deliveries::unpark),
        )
        .route("/api/v1/deliveries", get(deliveries::deliveries))
        .route("/api/v1/geo", get(map::geo))
        .route("/api/v1/stops", get(map::stops))
        .route("/map", get(map::page))
        .route("/map/config.json", get(map::config))
        .route("/map/static/{*file}", get(map::static_file))
        .fallback(|| async { error::ApiError::NotFound("no such endpoint".into()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), bounded))
        .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    let mqtt = s.health.mqtt.load(Ordering::Relaxed) && s.health.subscribed.load(Ordering::Relaxed);
    let db = s.health.database.load(Ordering::Relaxed);
    let code = if mqtt && db {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("mqtt: {}\ndatabase: {}\n", up(mqtt), up(db)))
}

fn up(b: bool) -> &'static str {
    if b {
        "up"
    } else {
        "down"
    }
}

async fn metrics(State(s): State<AppState>) -> String {
    let mqtt = s.health.mqtt.load(Ordering::Relaxed) && s.health.subscribed.load(Ordering::Relaxed);
    crate::telemetry::readiness(mqtt, s.health.database.load(Ordering::Relaxed));
    s.metrics.render()
}

/// `GET /api/v1/devices`: the devices the gateway has heard since it started (an
/// admin or regulator sees every one, refused unknown devices included; a cooperative
/// its own).
async fn devices(State(s): State<AppState>, caller: auth::Caller) -> axum::Json<serde_json::Value> {
    let list = s.devices.list(caller.scope());
    axum::Json(serde_json::json!({ "devices": list }))
}

/// `POST /admin/reload-geo` (admin token).
async fn reload_geo(
    State(s): State<AppState>,
    caller: auth::Caller,
) -> Result<(StatusCode, String), error::ApiError> {
    caller.require_admin()?;
    Ok(reload_geo_now(&s))
}

fn reload_geo_now(s: &AppState) -> (StatusCode, String) {
    let Some(r) = &s.reload_geo else {
        return (StatusCode::NOT_FOUND, "no reloadable geography\n".into());
    };
    match r.reload() {
        Ok((routes, zones)) => (
            StatusCode::OK,
            format!("reloaded: {routes} routes, {zones} zones\n"),
        ),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload failed, keeping the current geography: {e}\n"),
        ),
    }
}
