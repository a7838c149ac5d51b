//! HTTP: health, readiness and Prometheus metrics, and the `/api/v1` of live
//! positions, tracks, alerts and compliance reports behind bearer tokens.

pub mod alerts;
pub mod auth;
pub mod error;
pub mod map;
pub mod openapi;
pub mod reports;
pub mod sha256;
pub mod vehicles;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

/// Readiness of the parts the service needs.
#[derive(Debug, Default)]
pub struct Health {
    /// Connected to the broker (ConnAck received, not lost since).
    pub mqtt: AtomicBool,
    /// The subscription was confirmed (SubAck) on the current connection.
    pub subscribed: AtomicBool,
    /// Messages this instance received from the broker.
    pub messages: AtomicU64,
    /// Broker connections made (ConnAcks received), all consumer connections together.
    pub mqtt_connects: AtomicU64,
    /// Times the broker came back without the session fleetwatch expected.
    pub mqtt_sessions_lost: AtomicU64,
    /// The writer holds a working database connection.
    pub database: AtomicBool,
}

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
}

/// A small pool of connections for the HTTP handlers.
pub fn pool(db_url: &str) -> Result<deadpool_postgres::Pool, crate::store::StoreError> {
    let cfg: tokio_postgres::Config = db_url.parse()?;
    let mgr = deadpool_postgres::Manager::from_config(
        cfg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    Ok(deadpool_postgres::Pool::builder(mgr)
        .max_size(8)
        .build()
        .expect("pool without a runtime-specific timeout builds"))
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
        .route("/api/v1/alerts", get(alerts::list))
        .route("/api/v1/alerts/{id}/ack", axum::routing::post(alerts::ack))
        .route("/api/v1/reports/compliance", get(reports::compliance))
        .route("/api/v1/geo", get(map::geo))
        .route("/map", get(map::page))
        .route("/map/config.json", get(map::config))
        .route("/map/static/{*file}", get(map::static_file))
        .fallback(|| async { error::ApiError::NotFound("no such endpoint".into()) })
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
    s.metrics.render()
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
