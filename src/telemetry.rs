//! Logs, metrics and the counters behind the terminal summary. Each observable event
//! is one function here that both records the metric and updates the summary, so the
//! two can never disagree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Process-wide counters for the live summary.
#[derive(Debug, Default)]
pub struct Stats {
    /// MQTT messages received.
    pub messages: AtomicU64,
    /// Fixes that passed validation.
    pub accepted: AtomicU64,
    /// Fixes newly stored.
    pub stored: AtomicU64,
    /// Fixes already stored before (redelivery or device resend).
    pub duplicates: AtomicU64,
    /// Alerts emitted by the rules.
    pub alerts: AtomicU64,
    /// Vehicles waiting for or undergoing a recomputation for late fixes.
    pub recomputing: AtomicU64,
    /// Stored fixes the recomputations replayed.
    pub replayed: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    /// Rejects by reason, sorted by reason.
    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        self.rejected.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// The process-wide counters.
pub fn stats() -> &'static Stats {
    static STATS: OnceLock<Stats> = OnceLock::new();
    STATS.get_or_init(Stats::default)
}

/// Histograms of lags (seconds), bucketed up to an hour.
const LAG_HISTOGRAMS: &[&str] = &[
    "fleetwatch_ingest_lag_seconds",
    "fleetwatch_delivery_lag_seconds",
    "fleetwatch_outbox_lag_seconds",
];

/// Installs the Prometheus recorder once per process; later calls return the same handle.
/// A thread drains histogram samples every 5 s (they pile up until then: without it
/// memory grows with every observation when nobody scrapes `/metrics`).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let secs = &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            let sizes = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0];
            // Lags go up to an hour: the alerting rules ask whether they exceed
            // 2 minutes, which needs a 120 s bucket (a full matcher wins over the suffix).
            let lags = &[
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                1800.0, 3600.0,
            ];
            let mut builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), secs)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_records".into()), sizes));
            for lag in LAG_HISTOGRAMS {
                builder = builder
                    .and_then(|b| b.set_buckets_for_metric(Matcher::Full((*lag).into()), lags));
            }
            let handle = builder
                .expect("static buckets are valid")
                .install_recorder()
                .expect("metrics recorder installed once");
            let h = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    h.run_upkeep();
                })
                .expect("spawn metrics upkeep thread");
            handle
        })
        .clone()
}

/// Sets up `tracing` logs on stderr (RUST_LOG, default info; the embedded broker is
/// kept quiet), coloured only on a terminal and without `NO_COLOR`.
pub fn init_logs() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off,rumqttc=warn"));
    let ansi = log_colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Whether logs carry ANSI colours: on a terminal, unless `NO_COLOR` is set to
/// anything non-empty (<https://no-color.org>).
fn log_colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// A message arrived from the broker.
pub fn message_received() {
    stats().messages.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("fleetwatch_messages_received_total").increment(1);
}

/// A fix passed validation; `flags` names its quality flags.
pub fn fix_accepted(flags: impl Iterator<Item = &'static str>) {
    stats().accepted.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("fleetwatch_fixes_received_total").increment(1);
    for f in flags {
        metrics::counter!("fleetwatch_fixes_flagged_total", "flag" => f).increment(1);
    }
}

/// A fix or message was rejected for `reason` (a fixed, low-cardinality label).
pub fn fix_rejected(reason: &'static str) {
    if let Ok(mut m) = stats().rejected.lock() {
        *m.entry(reason).or_default() += 1;
    }
    metrics::counter!("fleetwatch_fixes_rejected_total", "reason" => reason).increment(1);
}

/// What a committed batch stored: new fixes, duplicates, dead letters.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    /// New rows in `fixes`.
    pub stored: u64,
    /// Fixes already stored.
    pub duplicates: u64,
    /// New rows in `dead_letters`.
    pub dead_letters: u64,
}

/// A batch committed.
pub fn batch_committed(outcome: Committed, records: usize, commit_s: f64) {
    let s = stats();
    s.stored.fetch_add(outcome.stored, Ordering::Relaxed);
    s.duplicates
        .fetch_add(outcome.duplicates, Ordering::Relaxed);
    metrics::histogram!("fleetwatch_batch_commit_seconds").record(commit_s);
    metrics::histogram!("fleetwatch_batch_records").record(records as f64);
    metrics::counter!("fleetwatch_fixes_stored_total").increment(outcome.stored);
    metrics::counter!("fleetwatch_fixes_duplicate_total").increment(outcome.duplicates);
    metrics::counter!("fleetwatch_dead_letters_stored_total").increment(outcome.dead_letters);
}

/// The rules emitted an alert (open or closed) of `kind`.
pub fn alert_emitted(kind: &'static str) {
    stats().alerts.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("fleetwatch_alerts_total", "kind" => kind).increment(1);
}

/// `n` vehicles are waiting for or undergoing a recomputation for late fixes.
pub fn recompute_queued(n: usize) {
    stats().recomputing.store(n as u64, Ordering::Relaxed);
    metrics::gauge!("fleetwatch_recompute_queued").set(n as f64);
}

/// A recomputation replayed `n` stored fixes.
pub fn recompute_replayed(n: usize) {
    stats().replayed.fetch_add(n as u64, Ordering::Relaxed);
    metrics::counter!("fleetwatch_recompute_fixes_replayed_total").increment(n as u64);
}

/// `n` vehicles are silent (an open no-signal alert), refreshed at every rules tick.
pub fn vehicles_silent(n: usize) {
    metrics::gauge!("fleetwatch_vehicles_no_signal").set(n as f64);
}

/// Readiness as `/readyz` reports it (1 up, 0 down), set when `/metrics` is rendered.
pub fn readiness(mqtt: bool, database: bool) {
    metrics::gauge!("fleetwatch_mqtt_ready").set(f64::from(u8::from(mqtt)));
    metrics::gauge!("fleetwatch_database_ready").set(f64::from(u8::from(database)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(log_colours(true, None));
        assert!(log_colours(true, Some(OsStr::new(""))));
        assert!(!log_colours(true, Some(OsStr::new("1"))));
        assert!(!log_colours(false, None));
    }
}
