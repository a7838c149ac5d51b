//! Who may use the brokers: the embedded broker's generated credentials and ACLs, and
//! the shipped Mosquitto password and ACL sample.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetwatch::infra::broker::EmbeddedBroker;
use fleetwatch::infra::mqtt_gate::{AclTopics, BrokerCredentials};
use fleetwatch::pipeline::topic::TopicPattern;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};

use crate::support::*;

fn opts(url: &str, id: &str, login: Option<(&str, &str)>) -> MqttOptions {
    let u = url::Url::parse(url).unwrap();
    let mut o = MqttOptions::new(id, u.host_str().unwrap(), u.port().unwrap());
    o.set_keep_alive(Duration::from_secs(30));
    match login {
        Some((user, pass)) => {
            o.set_credentials(user, pass);
        }
        None if !u.username().is_empty() => {
            o.set_credentials(u.username(), u.password().unwrap_or_default());
        }
        None => {}
    }
    o
}

/// The first connection event: Ok(()) on a successful ConnAck, else the error.
async fn connect(o: MqttOptions) -> Result<(), ConnectionError> {
    let (_c, mut ev) = AsyncClient::new(o, 10);
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Subscribes to each filter; returns whether each was granted, and what arrives.
async fn subscriber(o: MqttOptions, filters: &[&str]) -> (Vec<bool>, Arc<Mutex<Vec<String>>>) {
    let (client, mut ev) = AsyncClient::new(o, 100);
    for f in filters {
        client.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
    }
    let mut granted = Vec::new();
    while granted.len() < filters.len() {
        if let Event::Incoming(Packet::SubAck(a)) = ev.poll().await.unwrap() {
            granted.extend(
                a.return_codes
                    .iter()
                    .map(|c| matches!(c, SubscribeReasonCode::Success(_))),
            );
        }
    }
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(e) = ev.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                g.lock().unwrap().push(p.topic.clone());
            }
        }
    });
    (granted, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_admits_only_credentials_and_enforces_their_acls() {
    fleetwatch::telemetry::init_logs();
    let dir = std::env::temp_dir().join(format!("fw-broker-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut creds = BrokerCredentials::load_or_create(&dir).unwrap();
    // Generated at first start, readable by its owner only, and kept.
    let file = fleetwatch::infra::mqtt_gate::credentials_path(&dir);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(BrokerCredentials::load_or_create(&dir).unwrap(), creds);
    let (dev_a, pass_a) = creds.create_device("HTX-A", None).unwrap();
    let (dev_b1, pass_b1) = creds.create_device("HTX-B", Some("51B-1")).unwrap();
    let (coop_b, pass_coop_b) = creds.create_device("HTX-B", None).unwrap();
    assert!(
        !std::fs::read_to_string(&file).unwrap().contains(&pass_a),
        "only hashes are kept"
    );
    let topics = AclTopics {
        fix: TopicPattern::parse("fleet/{cooperative}/{vehicle}/fix").unwrap(),
        alert: "fleet/{cooperative}/{vehicle}/alert".into(),
    };
    let broker = EmbeddedBroker::start_with(0, creds, topics).unwrap();
    let devices = broker.device_url();

    // No credentials, or wrong ones: refused, on the devices' port and on the private one.
    let no_login = |url: &str| {
        let u = url::Url::parse(url).unwrap();
        MqttOptions::new("intruder", u.host_str().unwrap(), u.port().unwrap())
    };
    assert!(
        connect(no_login(&devices)).await.is_err(),
        "anonymous on the devices' port"
    );
    assert!(
        connect(no_login(&broker.url())).await.is_err(),
        "anonymous on the private port"
    );
    assert!(connect(opts(&devices, "x", Some((&dev_a, "wrong"))))
        .await
        .is_err());
    let r = connect(opts(&devices, "x", Some((&dev_a, &pass_a)))).await;
    assert!(r.is_ok(), "{r:?}");

    let db = fresh_db().await;
    let app = start_app(settings(&db, &broker.url(), "fw-acl")).await;

    // A cooperative's client: `#` and another cooperative's alerts are refused; its own
    // alerts are granted.
    let (granted_all, got_all) = subscriber(
        opts(&devices, "b-all", Some((&coop_b, &pass_coop_b))),
        &["#"],
    )
    .await;
    let (granted, got) = subscriber(
        opts(&devices, "b-alerts", Some((&coop_b, &pass_coop_b))),
        &["fleet/HTX-A/+/alert"],
    )
    .await;
    let (granted_own, got_own) = subscriber(
        opts(&devices, "b-own", Some((&coop_b, &pass_coop_b))),
        &["fleet/HTX-B/+/alert"],
    )
    .await;
    assert_eq!(
        (granted_all, granted, granted_own),
        (vec![false], vec![false], vec![true])
    );

    // Spoofed fixes are dropped; allowed ones are stored. Each device's allowed fix is
    // published after its spoofed ones, on the same connection (relayed in order).
    let base = base_time();
    let a = |user: &str, pass: &str| {
        let (u, p) = (user.to_string(), pass.to_string());
        move |o: &mut MqttOptions| {
            o.set_credentials(u, p);
        }
    };
    publish_all_with(
        &devices,
        &[
            (
                topic("HTX-B", "51B-9"),
                fix("51B-9", base, 10.9, 106.7, 30.0),
            ),
            (
                topic("HTX-A", "51A-1"),
                fix("51A-1", base, 10.9, 106.7, 30.0),
            ),
        ],
        a(&dev_a, &pass_a),
    )
    .await;
    publish_all_with(
        &devices,
        &[
            (
                topic("HTX-B", "51B-2"),
                fix("51B-2", base, 10.9, 106.7, 30.0),
            ),
            (
                topic("HTX-A", "51A-7"),
                fix("51A-7", base, 10.9, 106.7, 30.0),
            ),
            (
                topic("HTX-B", "51B-1"),
                fix("51B-1", base, 10.9, 106.7, 30.0),
            ),
        ],
        a(&dev_b1, &pass_b1),
    )
    .await;
    // Forged alerts are not relayed either.
    publish_all_with(
        &devices,
        &[(
            "fleet/HTX-B/51B-1/alert".to_string(),
            br#"{"forged":true}"#.to_vec(),
        )],
        a(&dev_a, &pass_a),
    )
    .await;
    wait_until("allowed fixes stored", Duration::from_secs(20), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await >= 2 }
    })
    .await;
    // fleetwatch's own client (the internal credential) may publish any alert.
    publish_all(
        &broker.url(),
        &[
            ("fleet/HTX-A/51A-1/alert".to_string(), b"{}".to_vec()),
            ("fleet/HTX-B/51B-1/alert".to_string(), b"{}".to_vec()),
        ],
    )
    .await;
    wait_until("own alert received", Duration::from_secs(10), || {
        let n = got_own.lock().unwrap().len();
        async move { n >= 1 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.shutdown();
    app.wait().await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let stored: Vec<String> = c
        .query("SELECT vehicle_id FROM fixes ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, ["51A-1", "51B-1"]);
    assert_eq!(
        *got_own.lock().unwrap(),
        ["fleet/HTX-B/51B-1/alert"],
        "no forged alert"
    );
    assert!(got_all.lock().unwrap().is_empty());
    assert!(got.lock().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shipped Mosquitto ACL sample with a password file: a cooperative's account
/// cannot publish another cooperative's fixes, nor read its alerts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mosquitto_acl_sample_keeps_cooperatives_apart() {
    let acl =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/mosquitto-acl.conf");
    let mosq = Mosquitto::start_with("", |dir| {
        let passwd = dir.join("passwd");
        for (i, (user, pass)) in [
            ("fleetwatch", "fw-pass"),
            ("HTX-A", "a-pass"),
            ("HTX-B", "b-pass"),
        ]
        .iter()
        .enumerate()
        {
            let mut cmd = std::process::Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let ok = cmd
                .arg("-b")
                .arg(&passwd)
                .arg(user)
                .arg(pass)
                .status()
                .unwrap();
            assert!(ok.success(), "mosquitto_passwd");
        }
        format!(
            "password_file {}\nacl_file {}\n",
            passwd.display(),
            acl.display()
        )
    });
    let db = fresh_db().await;
    let mut s = settings(&db, &mosq.url, "fw-mosq-acl");
    s.mqtt.username = Some("fleetwatch".into());
    s.mqtt.password = Some("fw-pass".into());
    let app = start_app(s).await;

    let (granted_all, got_all) =
        subscriber(opts(&mosq.url, "b-all", Some(("HTX-B", "b-pass"))), &["#"]).await;
    let (_, got_other) = subscriber(
        opts(&mosq.url, "b-other", Some(("HTX-B", "b-pass"))),
        &["fleet/HTX-A/+/alert"],
    )
    .await;
    let (granted_own, got_own) = subscriber(
        opts(&mosq.url, "b-own", Some(("HTX-B", "b-pass"))),
        &["fleet/HTX-B/+/alert"],
    )
    .await;
    assert_eq!(granted_own, [true]);
    let base = base_time();
    // Mosquitto acks a denied QoS 1 publish with "not authorized" and then drops the
    // connection (eclipse-mosquitto/mosquitto#2579), so the spoofing publisher may fail.
    let url = mosq.url.clone();
    let spoof = tokio::spawn(async move {
        publish_all_with(
            &url,
            &[(
                topic("HTX-B", "51B-9"),
                fix("51B-9", base, 10.9, 106.7, 30.0),
            )],
            |o| {
                o.set_credentials("HTX-A", "a-pass");
            },
        )
        .await
    });
    let _ = spoof.await;
    publish_all_with(
        &mosq.url,
        &[(
            topic("HTX-A", "51A-1"),
            fix("51A-1", base, 10.9, 106.7, 30.0),
        )],
        |o| {
            o.set_credentials("HTX-A", "a-pass");
        },
    )
    .await;
    wait_until("own fix stored", Duration::from_secs(20), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM fixes").await >= 1 }
    })
    .await;
    publish_all_with(
        &mosq.url,
        &[
            ("fleet/HTX-A/51A-1/alert".to_string(), b"{}".to_vec()),
            ("fleet/HTX-B/51B-1/alert".to_string(), b"{}".to_vec()),
        ],
        |o| {
            o.set_credentials("fleetwatch", "fw-pass");
        },
    )
    .await;
    wait_until("own alert received", Duration::from_secs(10), || {
        let n = got_own.lock().unwrap().len();
        async move { n >= 1 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.shutdown();
    app.wait().await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let stored: Vec<String> = c
        .query("SELECT vehicle_id FROM fixes", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, ["51A-1"], "the spoofed fix is not stored");
    assert_eq!(*got_own.lock().unwrap(), ["fleet/HTX-B/51B-1/alert"]);
    assert!(
        got_other.lock().unwrap().is_empty(),
        "another cooperative's alert"
    );
    // Mosquitto grants `#` but delivers only what the account may read: its own alerts,
    // no fixes, nothing of another cooperative.
    let all = got_all.lock().unwrap().clone();
    assert_eq!(
        all,
        ["fleet/HTX-B/51B-1/alert"],
        "`#` (granted: {granted_all:?})"
    );
}

/// `fleetwatch simulate` (and `replay`, which shares the lookup) against the
/// embedded broker of a local fleetwatch: it takes fleetwatch's own credential from
/// the data directory and its fixes are stored; from another data directory it has
/// none and the broker refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_uses_the_local_fleetwatch_credential_of_the_embedded_broker() {
    let db = fresh_db().await;
    let dir = std::env::temp_dir().join(format!("fleetwatch-sim-cred-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut s = settings(&db, "", "fw-sim-cred");
    s.database.data_dir = dir.clone();
    s.embedded_broker.port = 0;
    let app = start_app(s).await;
    // The broker's address as a user would type it: no credentials.
    let mut plain = url::Url::parse(&app.mqtt_url).unwrap();
    plain.set_username("").unwrap();
    plain.set_password(None).unwrap();
    let simulate = |data_dir: &std::path::Path, secs: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
            .args(["simulate", "--broker", plain.as_str(), "--vehicles", "3"])
            .args(["--count", "30", "--rate", "200", "--duration-s", secs])
            .env("FLEETWATCH__DATABASE__DATA_DIR", data_dir)
            .env("RUST_LOG", "warn")
            .output()
            .expect("fleetwatch runs")
    };
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let refused = simulate(&elsewhere, "3");
    assert!(
        !refused.status.success() || count(&db, "SELECT count(*) FROM fixes").await == 0,
        "no credential, nothing stored"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM fixes").await, 0);
    let out = simulate(&dir, "30");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the simulated fixes stored",
        Duration::from_secs(20),
        || {
            let db = db.clone();
            async move { count(&db, "SELECT count(*) FROM fixes").await == 30 }
        },
    )
    .await;
    app.shutdown();
    app.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}
