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

/// A command's logs through a pipe (a file, journald, CI): no ANSI colour codes and no
/// PostgreSQL NOTICE lines (`schema_migrations` "already exists" on every start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_logs_have_no_colours_and_no_notices() {
    // An empty database (not the migrated template): the first run logs its work.
    let template = fresh_db().await;
    let admin = fleetwatch::store::connect(&template).await.unwrap();
    let name = format!("logs_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let (base, _) = template.rsplit_once('/').unwrap();
    let db = format!("{base}/{name}");
    let dir = std::env::temp_dir().join(format!("fleetwatch-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("fleetwatch.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{db}\"\n")).unwrap();
    // Twice: the second finds everything in place (where the NOTICE came from).
    for run in 0..2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
            .args(["migrate", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .output()
            .expect("fleetwatch migrate runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        if run == 0 {
            assert!(
                err.contains("applied migration"),
                "info logs expected:\n{err}"
            );
        }
        assert!(
            !out.stderr.contains(&0x1b),
            "ANSI escapes in piped logs:\n{err}"
        );
        assert!(
            !err.contains("NOTICE") && !err.contains("already exists"),
            "server notices in the logs:\n{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
