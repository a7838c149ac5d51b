//! Failover: leadership held as a lease row on the shared database (`leadership`).
//!
//! An advisory lock is not enough: a SIGSTOPped leader keeps its TCP session and so
//! its lock. A lease expires on the database's clock whatever the holder's state:
//! the leader renews it every third of the lease; a standby takes over once it has
//! passed, by bumping the epoch in one statement. Each write transaction of the
//! leader checks the epoch (`FOR SHARE`) before it commits ([`Fence::check`]), so a
//! paused old leader's commit fails once a standby has taken over: the takeover
//! waits for a commit holding the share lock, and a commit after the takeover sees
//! the new epoch.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Transaction};
use tokio_util::sync::CancellationToken;

use super::{connect, StoreError};

/// `[ha]`: active/standby failover on one broker and one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// Hold leadership on the database; only the leader connects to the broker and writes.
    pub enabled: bool,
    /// Lease length, seconds: a standby takes over this long after the leader's last
    /// renewal (renewed every third of it).
    pub lease_s: u64,
    /// Leadership group: instances with the same name (and `mqtt.client_id`) fail over
    /// to each other.
    pub name: String,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            lease_s: 10,
            name: "default".into(),
        }
    }
}

impl HaConfig {
    /// The lease length (at least one second).
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_s.max(1))
    }
}

/// Leadership won at `epoch`; `lost` fires when it is lost (renewal found another
/// epoch, a commit was fenced, the broker gate refused).
#[derive(Debug, Clone)]
pub struct Fence {
    name: String,
    epoch: i64,
    lease: Duration,
    lost: CancellationToken,
}

/// This process's name in `leadership.holder`: host, pid, start time.
pub fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!(
        "{host}:{}:{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    )
}

/// One attempt to take leadership: wins when the group has no row yet or its lease
/// has passed (database clock); returns the new epoch.
pub async fn try_acquire(
    client: &Client,
    cfg: &HaConfig,
    holder: &str,
) -> Result<Option<i64>, StoreError> {
    let lease_s = cfg.lease().as_secs_f64();
    let row = client
        .query_opt(
            "INSERT INTO leadership (name, epoch, holder, lease_until)
             VALUES ($1, 1, $2, now() + make_interval(secs => $3))
             ON CONFLICT (name) DO UPDATE SET epoch = leadership.epoch + 1,
                 holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until, since = now()
             WHERE leadership.lease_until < now()
             RETURNING epoch",
            &[&cfg.name, &holder, &lease_s],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Waits until this process leads (trying every third of the lease), or `None` when
/// `stop` fires first.
pub async fn acquire(
    client: &Client,
    cfg: &HaConfig,
    holder: &str,
    stop: &CancellationToken,
) -> Result<Option<Fence>, StoreError> {
    let mut announced = false;
    loop {
        if let Some(epoch) = try_acquire(client, cfg, holder).await? {
            tracing::info!(name = %cfg.name, epoch, holder, "ha: leadership acquired");
            metrics::gauge!("fleetwatch_ha_leader").set(1.0);
            return Ok(Some(Fence {
                name: cfg.name.clone(),
                epoch,
                lease: cfg.lease(),
                lost: CancellationToken::new(),
            }));
        }
        if !announced {
            announced = true;
            metrics::gauge!("fleetwatch_ha_leader").set(0.0);
            tracing::info!(name = %cfg.name, "ha: standby, another instance leads; waiting for its lease to pass");
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.lease() / 3) => {}
            _ = stop.cancelled() => return Ok(None),
        }
    }
}

impl Fence {
    /// The epoch this process leads at.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Fires when leadership is lost.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Marks leadership lost (stepping down).
    fn lose(&self, why: &str, current: Option<i64>) {
        if !self.lost.is_cancelled() {
            tracing::error!(name = %self.name, epoch = self.epoch, ?current, why,
                "ha: leadership lost; stepping down (no more writes, no broker reconnection)");
            metrics::gauge!("fleetwatch_ha_leader").set(0.0);
            self.lost.cancel();
        }
    }

    /// Prepares a writing connection: a transaction left idle longer than the lease
    /// (a paused process) is ended by the server, so its row locks cannot hold up the
    /// next leader.
    pub async fn prepare(&self, client: &Client) -> Result<(), StoreError> {
        let ms = self.lease.as_millis();
        client
            .batch_execute(&format!("SET idle_in_transaction_session_timeout = {ms}"))
            .await?;
        Ok(())
    }

    /// In a write transaction, right before its commit: fails (and steps down) when
    /// another instance has taken over. One query; its share lock orders this commit
    /// before any takeover.
    pub async fn check(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let current: Option<i64> = tx
            .query_opt(
                "SELECT epoch FROM leadership WHERE name = $1 FOR SHARE",
                &[&self.name],
            )
            .await?
            .map(|r| r.get(0));
        if current == Some(self.epoch) {
            return Ok(());
        }
        metrics::counter!("fleetwatch_ha_fenced_commits_total").increment(1);
        tracing::error!(
            epoch = self.epoch,
            ?current,
            "ha: commit refused by the fence"
        );
        self.lose("a commit was fenced", current);
        Err(StoreError::Fenced {
            epoch: self.epoch,
            current,
        })
    }

    /// Whether this process still leads with an unexpired lease (asked afresh before
    /// reconnecting to the broker, so a stale leader cannot take the session back);
    /// `false` steps down.
    pub async fn confirm(&self, client: &Client) -> Result<bool, StoreError> {
        let row = client
            .query_opt(
                "SELECT epoch, lease_until > now() FROM leadership WHERE name = $1",
                &[&self.name],
            )
            .await?;
        match row {
            Some(r) if r.get::<_, i64>(0) == self.epoch && r.get::<_, bool>(1) => Ok(true),
            r => {
                self.lose(
                    "the lease passed or was taken over",
                    r.map(|r| r.get::<_, i64>(0)),
                );
                Ok(false)
            }
        }
    }

    /// Renews the lease every third of it until `stop` fires (then gives it up, so a
    /// standby takes over at once) or leadership is lost.
    pub async fn keep(self, url: String, stop: CancellationToken) {
        let mut client: Option<Client> = None;
        let lease_s = self.lease.as_secs_f64();
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
                _ = self.lost.cancelled() => return,
            }
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = connect(&url).await.ok();
            }
            let Some(c) = client.as_ref() else {
                tracing::warn!("ha: database unreachable; lease not renewed");
                continue;
            };
            let r = c
                .query_opt(
                    "UPDATE leadership SET lease_until = now() + make_interval(secs => $3)
                     WHERE name = $1 AND epoch = $2 RETURNING epoch",
                    &[&self.name, &self.epoch, &lease_s],
                )
                .await;
            match r {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let current = c
                        .query_opt(
                            "SELECT epoch FROM leadership WHERE name = $1",
                            &[&self.name],
                        )
                        .await
                        .ok()
                        .flatten()
                        .map(|r| r.get(0));
                    self.lose("renewal found another leader", current);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ha: lease renewal failed; retrying");
                    client = None;
                }
            }
        }
        if self.lost.is_cancelled() {
            return;
        }
        // Clean stop: hand over now rather than after the lease.
        if let Some(c) = client.as_ref() {
            let r = c
                .execute(
                    "UPDATE leadership SET lease_until = '-infinity' WHERE name = $1 AND epoch = $2",
                    &[&self.name, &self.epoch],
                )
                .await;
            match r {
                Ok(_) => tracing::info!(epoch = self.epoch, "ha: leadership released"),
                Err(e) => tracing::warn!(error = %e, "ha: could not release the lease"),
            }
        }
    }
}
