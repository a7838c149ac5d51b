//! The database probe behind `/readyz`: a `SELECT 1` with a timeout at a fixed
//! interval, so an outage between batches and a hung server are both noticed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// Probes until `stop`; sets `health.database` after every probe.
pub async fn run(
    url: String,
    every: Duration,
    timeout: Duration,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let mut client: Option<Client> = None;
    loop {
        let ok = tokio::time::timeout(timeout, probe(&url, &mut client)).await;
        let up = matches!(ok, Ok(Ok(())));
        if !up {
            // A hung or broken connection is not reused: the next probe opens a new one.
            client = None;
        }
        let was = health.database.swap(up, Ordering::Relaxed);
        match (was, up, ok) {
            (true, false, Err(_)) => tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "database probe: no answer; not ready"
            ),
            (true, false, Ok(Err(e))) => {
                tracing::warn!(error = %e, "database probe failed; not ready")
            }
            (false, true, _) => tracing::info!("database probe: answering again"),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn probe(url: &str, client: &mut Option<Client>) -> Result<(), super::StoreError> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(super::connect(url).await?);
    }
    let c = client.as_ref().expect("connected above");
    c.simple_query("SELECT 1").await?;
    Ok(())
}
