//! The stored destinations: the configuration file's (applied at start), the API's
//! (created, replaced, deleted, unparked), scoped to a cooperative where asked.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_postgres::Client;

use super::spec::{DestinationInput, NewDestination, Spec, Target};
use super::DeliverError;

/// Who made a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[[deliveries.destinations]]`: the file wins at every start; the API may only
    /// unpark it.
    Config,
    /// `POST /api/v1/destinations`.
    Api,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Api => "api",
        }
    }
}

/// A stored destination with its delivery state.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Its id.
    pub id: i64,
    /// Whose alerts.
    pub cooperative: String,
    /// Its name.
    pub name: String,
    /// Where to.
    pub target: Target,
    /// Which alerts, how.
    pub spec: Spec,
    /// Config or API.
    pub source: Source,
    /// Failed attempts since the last success.
    pub consecutive_failures: i32,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// When it was parked (no attempts until unparked).
    pub parked_at: Option<DateTime<Utc>>,
    /// Why.
    pub parked_reason: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed by a person (the workers restart a destination changed since).
    pub updated_at: DateTime<Utc>,
    /// Deliveries waiting.
    pub pending: i64,
}

const COLUMNS: &str = "d.id, d.cooperative_id, d.name, d.channel, d.target, d.secret, d.spec,
    d.source, d.consecutive_failures, d.last_error, d.parked_at, d.parked_reason, d.created_at,
    d.updated_at, (SELECT count(*) FROM deliveries p WHERE p.destination_id = d.id AND p.status = 'pending')";

fn from_row(r: &tokio_postgres::Row) -> Result<Destination, DeliverError> {
    let channel: String = r.get(3);
    let target: String = r.get(4);
    let secret: Option<String> = r.get(5);
    let target = Target::from_stored(&channel, &target, secret.as_deref())
        .map_err(|e| DeliverError::Stored(format!("destination {}: {e}", r.get::<_, i64>(0))))?;
    let spec: Spec = serde_json::from_value(r.get(6)).map_err(|e| {
        DeliverError::Stored(format!("destination {}: spec: {e}", r.get::<_, i64>(0)))
    })?;
    Ok(Destination {
        id: r.get(0),
        cooperative: r.get(1),
        name: r.get(2),
        target,
        spec,
        source: match r.get::<_, &str>(7) {
            "config" => Source::Config,
            _ => Source::Api,
        },
        consecutive_failures: r.get(8),
        last_error: r.get(9),
        parked_at: r.get(10),
        parked_reason: r.get(11),
        created_at: r.get(12),
        updated_at: r.get(13),
        pending: r.get(14),
    })
}

impl Destination {
    /// As JSON for the API: the secret is never shown.
    pub fn json(&self) -> Value {
        let (url, email) = match &self.target {
            Target::Webhook { url, .. } => (Some(url.to_string()), None),
            Target::Email { to } => (None, Some(to.to_string())),
        };
        json!({
            "id": self.id,
            "cooperative": self.cooperative,
            "name": self.name,
            "channel": self.target.channel(),
            "url": url,
            "email": email,
            "secret_set": matches!(self.target, Target::Webhook { .. }),
            "kinds": self.spec.kinds,
            "min_level": self.spec.min_level,
            "min_severity": self.spec.min_severity,
            "vehicles": self.spec.vehicles,
            "quiet_hours": self.spec.quiet_hours,
            "digest": self.spec.digest,
            "language": self.spec.language,
            "source": self.source.as_str(),
            "status": if self.parked_at.is_some() { "parked" } else { "active" },
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "parked_at": self.parked_at,
            "parked_reason": self.parked_reason,
            "pending": self.pending,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

fn stored(d: &NewDestination) -> (String, Option<String>, Value) {
    let secret = match &d.target {
        Target::Webhook { secret, .. } => {
            Some(String::from_utf8_lossy(secret.expose()).into_owned())
        }
        Target::Email { .. } => None,
    };
    let spec = serde_json::to_value(&d.spec).expect("a spec serialises");
    (d.target.address(), secret, spec)
}

fn conflict(e: tokio_postgres::Error, d: &NewDestination) -> DeliverError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        DeliverError::Conflict(format!(
            "cooperative {} already has a destination named {:?}",
            d.cooperative.as_str(),
            d.name
        ))
    } else {
        DeliverError::Db(e.into())
    }
}

/// Every live destination (of `scope`'s cooperative only, when given), by id.
pub async fn list(db: &Client, scope: Option<&str>) -> Result<Vec<Destination>, DeliverError> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLUMNS} FROM delivery_destinations d
                 WHERE d.deleted_at IS NULL AND ($1::text IS NULL OR d.cooperative_id = $1)
                 ORDER BY d.id"
            ),
            &[&scope],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// One live destination; another cooperative's is `NotFound` alike.
pub async fn get(db: &Client, id: i64, scope: Option<&str>) -> Result<Destination, DeliverError> {
    let row = db
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM delivery_destinations d
                 WHERE d.id = $1 AND d.deleted_at IS NULL AND ($2::text IS NULL OR d.cooperative_id = $2)"
            ),
            &[&id, &scope],
        )
        .await?
        .ok_or(DeliverError::NotFound(id))?;
    from_row(&row)
}

/// Stores a new destination; it gets the alerts that change from now on.
pub async fn create(
    db: &Client,
    d: &NewDestination,
    source: Source,
) -> Result<Destination, DeliverError> {
    let (target, secret, spec) = stored(d);
    let id: i64 = db
        .query_one(
            "INSERT INTO delivery_destinations (cooperative_id, name, channel, target, secret, spec, source)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &d.cooperative.as_str(),
                &d.name,
                &d.target.channel().as_str(),
                &target,
                &secret,
                &spec,
                &source.as_str(),
            ],
        )
        .await
        .map_err(|e| conflict(e, d))?
        .get(0);
    get(db, id, None).await
}

/// Replaces an API destination's target and spec (its pending deliveries stay and go
/// to the new target); a configuration file's is refused.
pub async fn replace(
    db: &Client,
    id: i64,
    scope: Option<&str>,
    d: &NewDestination,
) -> Result<Destination, DeliverError> {
    let old = get(db, id, scope).await?;
    if old.source == Source::Config {
        return Err(DeliverError::Conflict(format!(
            "destination {id} is defined in the configuration file: change it there"
        )));
    }
    if old.cooperative != d.cooperative.as_str() {
        return Err(DeliverError::Conflict(
            "a destination cannot change cooperative".into(),
        ));
    }
    let (target, secret, spec) = stored(d);
    db.execute(
        "UPDATE delivery_destinations SET name = $2, channel = $3, target = $4, secret = $5,
                spec = $6, updated_at = now()
         WHERE id = $1",
        &[
            &id,
            &d.name,
            &d.target.channel().as_str(),
            &target,
            &secret,
            &spec,
        ],
    )
    .await
    .map_err(|e| conflict(e, d))?;
    get(db, id, scope).await
}

/// Deletes an API destination: its pending deliveries are cancelled, its log stays.
pub async fn delete(db: &mut Client, id: i64, scope: Option<&str>) -> Result<(), DeliverError> {
    let old = get(db, id, scope).await?;
    if old.source == Source::Config {
        return Err(DeliverError::Conflict(format!(
            "destination {id} is defined in the configuration file: remove it there"
        )));
    }
    let tx = db.transaction().await?;
    tx.execute(
        "UPDATE deliveries SET status = 'cancelled' WHERE destination_id = $1 AND status = 'pending'",
        &[&id],
    )
    .await?;
    tx.execute(
        "UPDATE delivery_destinations SET deleted_at = now(), updated_at = now() WHERE id = $1",
        &[&id],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Unparks a destination: attempts start again at once, from its oldest pending
/// delivery.
pub async fn unpark(
    db: &Client,
    id: i64,
    scope: Option<&str>,
) -> Result<Destination, DeliverError> {
    get(db, id, scope).await?;
    db.execute(
        "UPDATE delivery_destinations SET parked_at = NULL, parked_reason = NULL,
                consecutive_failures = 0, updated_at = now()
         WHERE id = $1",
        &[&id],
    )
    .await?;
    get(db, id, scope).await
}

/// Applies the configuration file's destinations: each is created or updated by
/// (cooperative, name); one no longer in the file is deleted (pending cancelled).
pub async fn apply_config(
    db: &mut Client,
    inputs: &[DestinationInput],
) -> Result<(), DeliverError> {
    let mut checked = Vec::with_capacity(inputs.len());
    for input in inputs {
        let name = input.name.clone();
        let d = input
            .clone()
            .validate(None)
            .map_err(|e| DeliverError::Config(format!("deliveries.destinations {name:?}: {e}")))?;
        checked.push(d);
    }
    let tx = db.transaction().await?;
    let mut keep_coops = Vec::new();
    let mut keep_names = Vec::new();
    for d in &checked {
        let (target, secret, spec) = stored(d);
        tx.execute(
            "INSERT INTO delivery_destinations AS d (cooperative_id, name, channel, target, secret, spec, source)
             VALUES ($1, $2, $3, $4, $5, $6, 'config')
             ON CONFLICT (cooperative_id, name) WHERE deleted_at IS NULL DO UPDATE SET
                 channel = EXCLUDED.channel, target = EXCLUDED.target, secret = EXCLUDED.secret,
                 spec = EXCLUDED.spec, source = 'config', updated_at = now()
             WHERE (d.channel, d.target, d.secret, d.spec, d.source)
                   IS DISTINCT FROM (EXCLUDED.channel, EXCLUDED.target, EXCLUDED.secret, EXCLUDED.spec, 'config')",
            &[
                &d.cooperative.as_str(),
                &d.name,
                &d.target.channel().as_str(),
                &target,
                &secret,
                &spec,
            ],
        )
        .await?;
        keep_coops.push(d.cooperative.as_str().to_string());
        keep_names.push(d.name.clone());
    }
    let gone = "SELECT id FROM delivery_destinations
                WHERE source = 'config' AND deleted_at IS NULL
                  AND (cooperative_id, name) NOT IN (SELECT * FROM unnest($1::text[], $2::text[]))";
    tx.execute(
        &format!("UPDATE deliveries SET status = 'cancelled' WHERE status = 'pending' AND destination_id IN ({gone})"),
        &[&keep_coops, &keep_names],
    )
    .await?;
    tx.execute(
        &format!("UPDATE delivery_destinations SET deleted_at = now(), updated_at = now() WHERE id IN ({gone})"),
        &[&keep_coops, &keep_names],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
