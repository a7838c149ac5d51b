//! No data loss: the real `fleetwatch` binary is aborted after a commit but before its
//! acks, then killed mid-stream, then restarted; every published fix is stored once.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_before_ack_and_kill_mid_stream_lose_nothing_and_duplicate_nothing() {
    const N: usize = 20_000;
    let mosq = Mosquitto::start();
    let db = fresh_db().await;
    let dir = std::env::temp_dir().join(format!("fleetwatch-noloss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("fleetwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nurl = \"{}\"\nclient_id = \"fw-noloss\"\n\
             [database]\nurl = \"{db}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [batch]\nmax_records = 200\nmax_wait_ms = 20\n",
            mosq.url
        ),
    )
    .unwrap();

    // 1. Aborts right after its 5th commit, before acking that batch.
    let first = Instance::start(&config, Some(5));
    let msgs = track("HTX-NL", 50, N, base_time());
    let url = mosq.url.clone();
    let publisher = tokio::spawn(async move { publish_all(&url, &msgs).await });
    let status = tokio::task::spawn_blocking(move || {
        let mut first = first;
        first.child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(
        !status.success(),
        "fault injection aborted the process: {status}"
    );
    let after_abort = count(&db, "SELECT count(*) FROM fixes").await;
    assert!(
        after_abort >= 5 * 200 - 200,
        "five batches were committed: {after_abort}"
    );

    // 2. Restart, then SIGKILL as soon as it has made progress (mid-stream).
    let second = Instance::start(&config, None);
    wait_until("progress after restart", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await > after_abort }
    })
    .await;
    second.kill();
    publisher.await.unwrap();
    let after_kill = count(&db, "SELECT count(*) FROM fixes").await;
    eprintln!("stored after abort: {after_abort}, after kill: {after_kill} of {N}");
    assert!(after_kill < N as i64, "the kill came mid-stream");

    // 3. Restart and let it finish: the broker redelivers everything unacked.
    let third = Instance::start(&config, None);
    wait_until("all fixes stored", Duration::from_secs(60), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await >= N as i64 }
    })
    .await;
    // Clean stop on SIGTERM.
    let pid = nix::unistd::Pid::from_raw(third.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let mut third = third;
        third.child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");

    assert_eq!(
        count(&db, "SELECT count(*) FROM fixes").await,
        N as i64,
        "killed at {after_kill}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
