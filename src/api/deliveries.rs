//! Delivery destinations (a cooperative's webhooks and mailboxes) and the deliveries
//! made to them. An admin manages any cooperative's, a cooperative token its own; a
//! regulator reads.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Caller, Role};
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::store::deliver::destinations::{self, Source};
use crate::store::deliver::spec::{is_private, DestinationInput, NewDestination, Target};

/// Deliveries per list request when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 100;
/// Most deliveries per list request.
pub const MAX_LIMIT: i64 = 1_000;
/// Delivery statuses.
pub const STATUSES: &[&str] = &["pending", "delivered", "cancelled"];

fn may_change(caller: &Caller) -> ApiResult<()> {
    match caller.role {
        Role::Regulator => Err(ApiError::Forbidden(
            "regulator tokens are read-only; the cooperative manages its destinations".into(),
        )),
        Role::Admin | Role::Cooperative => Ok(()),
    }
}

/// Checks a body: a cooperative token only for its own cooperative; an admin names it.
fn checked(s: &AppState, caller: &Caller, input: DestinationInput) -> ApiResult<NewDestination> {
    let own = caller.scope();
    if let (Some(own), Some(asked)) = (own, input.cooperative.as_deref()) {
        let asked = crate::domain::CooperativeId::parse(asked)
            .map_err(|e| ApiError::bad(format!("cooperative: {e}")))?;
        if asked.as_str() != own {
            return Err(ApiError::Forbidden(format!(
                "this token may only manage cooperative {own}"
            )));
        }
    }
    let d = input
        .validate(own)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    if let Target::Webhook { url, .. } = &d.target {
        // Names are checked again when resolved, at every attempt.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => is_private(ip.into()),
            Some(url::Host::Ipv6(ip)) => is_private(ip.into()),
            Some(url::Host::Domain(h)) => h.eq_ignore_ascii_case("localhost"),
            None => true,
        };
        if literal && !s.settings.deliveries.allow_private_targets {
            return Err(ApiError::bad(
                "url: a private or loopback address (deliveries.allow_private_targets is off)",
            ));
        }
    }
    Ok(d)
}

fn body(
    b: Result<Json<DestinationInput>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<DestinationInput> {
    Ok(b?.0)
}

/// `GET /api/v1/destinations`.
pub async fn list(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let db = s.db.get().await?;
    let list = destinations::list(&db, caller.scope()).await?;
    let items: Vec<Value> = list.iter().map(|d| d.json()).collect();
    Ok(Json(json!({ "count": items.len(), "destinations": items })))
}

/// `GET /api/v1/destinations/{id}`.
pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let db = s.db.get().await?;
    Ok(Json(
        destinations::get(&db, id, caller.scope()).await?.json(),
    ))
}

/// `POST /api/v1/destinations`: it gets the alerts that change from now on.
pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    b: Result<Json<DestinationInput>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    may_change(&caller)?;
    let d = checked(&s, &caller, body(b)?)?;
    let db = s.db.get().await?;
    let created = destinations::create(&db, &d, Source::Api).await?;
    Ok((StatusCode::CREATED, Json(created.json())))
}

/// `PUT /api/v1/destinations/{id}`: replaces target, filter and presentation.
pub async fn replace(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    b: Result<Json<DestinationInput>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    may_change(&caller)?;
    let db = s.db.get().await?;
    let mut input = body(b)?;
    if input.cooperative.is_none() {
        // The destination's own: an admin need not repeat it.
        input.cooperative = Some(
            destinations::get(&db, id, caller.scope())
                .await?
                .cooperative,
        );
    }
    let d = checked(&s, &caller, input)?;
    Ok(Json(
        destinations::replace(&db, id, caller.scope(), &d)
            .await?
            .json(),
    ))
}

/// `DELETE /api/v1/destinations/{id}`: pending deliveries are cancelled; the log stays.
pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    may_change(&caller)?;
    let mut db = s.db.get().await?;
    destinations::delete(&mut db, id, caller.scope()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/destinations/{id}/unpark`: attempts resume from the oldest pending.
pub async fn unpark(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    may_change(&caller)?;
    let db = s.db.get().await?;
    Ok(Json(
        destinations::unpark(&db, id, caller.scope()).await?.json(),
    ))
}

/// Filters of the delivery list; every one optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// A destination id.
    pub destination: Option<i64>,
    /// An alert id.
    pub alert: Option<String>,
    /// One of [`STATUSES`].
    pub status: Option<String>,
    /// Enqueued at or after.
    #[serde(default, deserialize_with = "super::time::opt")]
    pub from: Option<DateTime<Utc>>,
    /// Enqueued before.
    #[serde(default, deserialize_with = "super::time::opt")]
    pub to: Option<DateTime<Utc>>,
    /// At most this many (default 100, at most 1,000).
    pub limit: Option<i64>,
}

/// `GET /api/v1/deliveries`: newest first.
pub async fn deliveries(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<DeliveryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    if q.status
        .as_deref()
        .is_some_and(|st| !STATUSES.contains(&st))
    {
        return Err(ApiError::bad(format!(
            "status must be one of: {}",
            STATUSES.join(", ")
        )));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let db = s.db.get().await?;
    let rows = db
        .query(
            "SELECT l.id, l.destination_id, d.name, d.channel, d.cooperative_id, l.alert_id,
                    l.revision, l.status, l.digest, l.due_at, l.attempts, l.last_attempt_at,
                    l.last_error, l.created_at, l.delivered_at, l.batch_id
             FROM deliveries l JOIN delivery_destinations d ON d.id = l.destination_id
             WHERE ($1::text IS NULL OR d.cooperative_id = $1)
               AND ($2::int8 IS NULL OR l.destination_id = $2)
               AND ($3::text IS NULL OR l.alert_id = $3)
               AND ($4::text IS NULL OR l.status = $4)
               AND ($5::timestamptz IS NULL OR l.created_at >= $5)
               AND ($6::timestamptz IS NULL OR l.created_at < $6)
             ORDER BY l.id DESC LIMIT $7",
            &[
                &caller.scope(),
                &q.destination,
                &q.alert,
                &q.status,
                &q.from,
                &q.to,
                &limit,
            ],
        )
        .await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, i64>(0),
                "destination_id": r.get::<_, i64>(1),
                "destination": r.get::<_, String>(2),
                "channel": r.get::<_, String>(3),
                "cooperative": r.get::<_, String>(4),
                "alert_id": r.get::<_, String>(5),
                "revision": r.get::<_, i32>(6),
                "idempotency_key": format!("{}:{}", r.get::<_, String>(5), r.get::<_, i32>(6)),
                "status": r.get::<_, String>(7),
                "digest": r.get::<_, bool>(8),
                "due_at": r.get::<_, DateTime<Utc>>(9),
                "attempts": r.get::<_, i32>(10),
                "last_attempt_at": r.get::<_, Option<DateTime<Utc>>>(11),
                "last_error": r.get::<_, Option<String>>(12),
                "created_at": r.get::<_, DateTime<Utc>>(13),
                "delivered_at": r.get::<_, Option<DateTime<Utc>>>(14),
                "batch_id": r.get::<_, Option<i64>>(15),
            })
        })
        .collect();
    Ok(Json(json!({ "count": items.len(), "deliveries": items })))
}
