//! mqtts with a private CA and username/password against a real Mosquitto: fixes
//! arrive and are stored; a wrong password never gets a subscription.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::TimeDelta;
use fleetwatch::app::App;
use fleetwatch::infra::broker::free_port;

use crate::support::*;

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate it signs for localhost; a password file with `fleet`.
pub(crate) fn credentials(dir: &Path) {
    let ext = dir.join("san.ext");
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(
        dir,
        &[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=fleetwatch test CA",
        ],
    );
    run(
        dir,
        &[
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    run(
        dir,
        &[
            "openssl",
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "san.ext",
        ],
    );
    run(
        dir,
        &["mosquitto_passwd", "-c", "-b", "passwd", "fleet", "s3cret"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_username_and_password() {
    let tls_port = free_port().unwrap();
    // Anonymous plain listener for the test's publisher; TLS with passwords for the app.
    let mosq = Mosquitto::start_with("per_listener_settings true", |dir| {
        credentials(dir);
        let d = dir.display();
        format!(
            "listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {d}/passwd\n\
             cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
        )
    });
    let ca = mosq.dir.join("ca.pem");
    let db = fresh_db().await;
    let url = format!("mqtts://localhost:{tls_port}");

    let mut bad = settings(&db, &url, "fw-tls-bad");
    bad.mqtt.username = Some("fleet".into());
    bad.mqtt.password = Some("wrong".into());
    bad.mqtt.ca_file = Some(ca.clone());
    let rejected = App::start(bad).await.expect("starts and keeps retrying");

    let mut s = settings(&db, &url, "fw-tls");
    s.mqtt.username = Some("fleet".into());
    s.mqtt.password = Some("s3cret".into());
    s.mqtt.ca_file = Some(ca);
    let app = start_app(s).await;
    let base = base_time();
    let msgs: Vec<_> = (0..50)
        .map(|i| {
            let ts = base + TimeDelta::seconds(i);
            (topic("HTX", "TLS-1"), fix("TLS-1", ts, 10.9, 106.7, 30.0))
        })
        .collect();
    publish_all(&mosq.url, &msgs).await;
    wait_until("50 fixes over mqtts", Duration::from_secs(30), || async {
        count(&db, "SELECT count(*) FROM fixes WHERE vehicle_id = 'TLS-1'").await == 50
    })
    .await;
    assert!(
        !rejected.health.subscribed.load(Ordering::Relaxed),
        "a wrong password must not get a subscription"
    );
    for a in [app, rejected] {
        a.shutdown();
        a.wait().await;
    }
}
