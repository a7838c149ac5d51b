//! The private PostgreSQL as a second process sees it.

use fleetwatch::infra::postgres::{EmbeddedPostgres, PgOptions};

use crate::support::*;

/// `fleetwatch token create` beside a running demo finds the demo's server running:
/// it uses it, and leaving must not stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_reuses_the_running_server_and_leaves_it_running() {
    let db = fresh_db().await;
    let opts = PgOptions {
        data_dir: cluster_dir(),
        fast_unsafe: true,
        timescaledb: true,
    };
    let second = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts))
        .await
        .unwrap()
        .expect("finds the running server");
    assert!(second.reused());
    drop(second);
    let c = fleetwatch::store::connect(&db)
        .await
        .expect("the server still runs");
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}
