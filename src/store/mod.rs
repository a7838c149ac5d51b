//! PostgreSQL storage: connection, embedded migrations, batched writes, daily roll-ups,
//! and the sinks after them: the alert outbox (MQTT) and deliveries (webhook, email).

pub mod deliver;
pub mod devices;
pub mod geo_versions;
pub mod incidents;
pub mod lease;
pub mod migrate;
pub mod outbox;
pub mod probe;
pub mod recompute;
pub mod registry;
pub mod rollup;
pub mod writer;

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or lost the connection, or a statement failed.
    #[error("database: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// A migration failed.
    #[error("migration {version}: {}", describe(.source))]
    Migration {
        version: i32,
        source: tokio_postgres::Error,
    },
    /// Failover: another instance took over leadership; this commit was refused.
    #[error("ha: leadership lost (this instance led at epoch {epoch}, the database holds {current:?}); commit refused")]
    Fenced {
        /// The epoch this instance led at.
        epoch: i64,
        /// The epoch in the database (`None`: no leadership row).
        current: Option<i64>,
    },
}

impl StoreError {
    /// Whether retrying on a new connection may succeed (connection loss, server
    /// shutting down, serialization failure) as opposed to a problem with the data.
    pub fn is_transient(&self) -> bool {
        let e = match self {
            StoreError::Db(e) | StoreError::Migration { source: e, .. } => e,
            StoreError::Fenced { .. } => return false,
        };
        if e.is_closed() {
            return true;
        }
        match e.code() {
            // No SQLSTATE: I/O or protocol error on the connection.
            None => true,
            Some(code) => {
                let c = code.code();
                // 08 connection, 40 rollback, 53 resources, 57 operator intervention.
                ["08", "40", "53", "57", "58"]
                    .iter()
                    .any(|p| c.starts_with(p))
            }
        }
    }
}

impl StoreError {
    /// Whether PostgreSQL refused the data itself (SQLSTATE class 22 data exception,
    /// 23 integrity constraint violation, 54 program limit exceeded such as an index
    /// row too large): the same rows would be refused again, however often retried.
    pub fn is_content(&self) -> bool {
        let e = match self {
            StoreError::Db(e) | StoreError::Migration { source: e, .. } => e,
            StoreError::Fenced { .. } => return false,
        };
        e.code()
            .is_some_and(|c| ["22", "23", "54"].iter().any(|p| c.code().starts_with(p)))
    }
}

/// A driver error with what the server said (SQLSTATE, message, detail, constraint):
/// `tokio_postgres::Error`'s own text is only "db error".
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("{} {}: {}", d.severity(), d.code().code(), d.message());
            if let Some(detail) = d.detail() {
                s.push_str(&format!(" ({detail})"));
            }
            if let Some(c) = d.constraint() {
                s.push_str(&format!(" [constraint {c}]"));
            }
            s
        }
        None => {
            use std::error::Error;
            match e.source() {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
        }
    }
}

/// Connects with a timeout and spawns the connection task; the task logs when the
/// connection ends so a database outage is visible.
pub async fn connect(url: &str) -> Result<Client, StoreError> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    cfg.connect_timeout(Duration::from_secs(5));
    cfg.application_name("fleetwatch");
    let (client, mut conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        use futures_util::StreamExt;
        // Driving the connection as a stream (not as a future, which logs every
        // server notice at info) lets notices such as "already exists" go to debug.
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => log_notice(&n),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "postgres connection ended");
                    return;
                }
            }
        }
    });
    Ok(client)
}

/// A server notice: warnings stay warnings, the rest (NOTICE, INFO, ...) is debug.
fn log_notice(n: &tokio_postgres::error::DbError) {
    if n.severity() == "WARNING" {
        tracing::warn!(code = n.code().code(), "postgres: {}", n.message());
    } else {
        tracing::debug!(
            severity = n.severity(),
            code = n.code().code(),
            "postgres: {}",
            n.message()
        );
    }
}

/// Stable 64-bit FNV-1a, for ids that must not change across runs or Rust versions.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// PostgreSQL text cannot hold NUL; replace it so a hostile payload cannot make a
/// dead letter unstorable.
pub fn pg_text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}
