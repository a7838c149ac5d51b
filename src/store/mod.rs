//! PostgreSQL storage: connection, embedded migrations, batched writes, daily roll-ups.

pub mod incidents;
pub mod migrate;
pub mod outbox;
pub mod registry;
pub mod rollup;
pub mod writer;

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or lost the connection, or a statement failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// A migration failed.
    #[error("migration {version}: {source}")]
    Migration {
        version: i32,
        source: tokio_postgres::Error,
    },
}

impl StoreError {
    /// Whether retrying on a new connection may succeed (connection loss, server
    /// shutting down, serialization failure) as opposed to a problem with the data.
    pub fn is_transient(&self) -> bool {
        let e = match self {
            StoreError::Db(e) | StoreError::Migration { source: e, .. } => e,
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

/// Connects with a timeout and spawns the connection task; the task logs when the
/// connection ends so a database outage is visible.
pub async fn connect(url: &str) -> Result<Client, StoreError> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    cfg.connect_timeout(Duration::from_secs(5));
    cfg.application_name("fleetwatch");
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
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
