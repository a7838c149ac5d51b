//! Deliveries against real parts: a webhook receiver (a raw HTTP server in the test)
//! that checks signatures and idempotency keys, is down, then answers 503, then
//! recovers; a destination that hangs until parked while another is served on time;
//! a real SMTP server (aiosmtpd, STARTTLS and AUTH) whose mail Python's own email
//! package decodes; cooperative scoping of destinations and deliveries.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use fleetwatch::api::auth::{create_token, Role};
use fleetwatch::app::App;
use fleetwatch::config::Settings;
use fleetwatch::infra::broker::{free_port, EmbeddedBroker};
use hmac::{KeyInit, Mac};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::http;
use crate::support::*;

const SECRET: &str = "a-webhook-secret-of-32-characters";

/// A request the receiver got, and what it answered.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    answered: u16,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Checks the signature over timestamp + body under `SECRET`, independently of
    /// fleetwatch's code.
    fn signed(&self) -> bool {
        let (Some(ts), Some(sig)) = (
            self.header("x-fleetwatch-timestamp"),
            self.header("x-fleetwatch-signature"),
        ) else {
            return false;
        };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        let fresh = ts
            .parse::<i64>()
            .is_ok_and(|t| (Utc::now().timestamp() - t).abs() < 300);
        fresh && sig == format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// A webhook receiver: answers `status` (0: holds the connection without answering).
pub(crate) struct Receiver {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start(port: u16, status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (st, g) = (status.clone(), got.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (st, g) = (st.clone(), g.clone());
                tokio::spawn(serve(sock, st, g));
            }
        });
        Receiver {
            addr,
            status,
            got,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The requests answered 2xx, in arrival order.
    pub(crate) fn accepted(&self) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| (200..300).contains(&r.answered))
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The alerts' idempotency keys of the accepted requests, in arrival order (a
    /// request carries one alert, or several that queued together).
    pub(crate) fn alert_keys(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .flat_map(|r| {
                r.json()["alerts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["idempotency_key"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut sock: tokio::net::TcpStream,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Received>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, len) = loop {
        let Ok(n) = sock.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            break (i + 4, len);
        }
    };
    while buf.len() < head_end + len {
        let Ok(n) = sock.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let code = status.load(Ordering::SeqCst);
    got.lock().unwrap().push(Received {
        headers,
        body: buf[head_end..head_end + len].to_vec(),
        answered: code,
    });
    if code == 0 {
        // A destination that hangs: fleetwatch's timeout has to end it.
        tokio::time::sleep(Duration::from_secs(30)).await;
        return;
    }
    let reply = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = sock.write_all(reply.as_bytes()).await;
}

/// Settings with quick polls and backoff, loopback targets allowed.
fn deliver_settings(db: &str, broker: &str, id: &str) -> Settings {
    let mut s = settings(db, broker, id);
    s.disable_rules = true; // the alerts are written below, as the writer would
    s.deliveries.allow_private_targets = true;
    s.deliveries.poll_ms = 50;
    s.deliveries.backoff_initial_ms = 50;
    s.deliveries.backoff_max_s = 1;
    s.deliveries.timeout_s = 1;
    s.deliveries.public_url = "https://fleet.example.vn".into();
    s
}

async fn insert_alert(
    db: &str,
    id: &str,
    coop: &str,
    kind: &str,
    level: &str,
    start: DateTime<Utc>,
) {
    let c = fleetwatch::store::connect(db).await.unwrap();
    c.execute(
        "INSERT INTO alerts (alert_id, vehicle_id, cooperative_id, kind, level, status, severity,
                             start_ts, lat, lon, details)
         VALUES ($1, 'A-1', $2, $3, $4, 'open', CASE WHEN $3 = 'overspeed' THEN 2::int2 END, $5,
                 10.98, 106.65, '{\"max_speed_kmh\": 85, \"limit_kmh\": 70}')",
        &[&id, &coop, &kind, &level, &start],
    )
    .await
    .unwrap();
}

/// Closes an alert, as the writer's upsert does: a new revision.
async fn close_alert(db: &str, id: &str) {
    let c = fleetwatch::store::connect(db).await.unwrap();
    c.execute(
        "UPDATE alerts SET status = 'closed', end_ts = start_ts + interval '1 minute',
                updated_at = now(), published_at = NULL
         WHERE alert_id = $1",
        &[&id],
    )
    .await
    .unwrap();
}

pub(crate) struct Env {
    pub(crate) _broker: EmbeddedBroker,
    pub(crate) app: App,
    pub(crate) db: String,
    admin: String,
    pub(crate) coop_a: String,
    coop_b: String,
    regulator: String,
}

impl Env {
    pub(crate) async fn start(s: impl FnOnce(&mut Settings), id: &str) -> Env {
        let broker = EmbeddedBroker::start(0).unwrap();
        let db = fresh_db().await;
        let mut set = deliver_settings(&db, &broker.url(), id);
        s(&mut set);
        let app = start_app(set).await;
        let c = fleetwatch::store::connect(&db).await.unwrap();
        Env {
            admin: create_token(&c, Role::Admin, None, None).await.unwrap(),
            coop_a: create_token(&c, Role::Cooperative, Some("HTX-A"), None)
                .await
                .unwrap(),
            coop_b: create_token(&c, Role::Cooperative, Some("HTX-B"), None)
                .await
                .unwrap(),
            regulator: create_token(&c, Role::Regulator, None, None).await.unwrap(),
            _broker: broker,
            app,
            db,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> crate::api::Resp {
        let b = body.map(|b| b.to_string());
        http(self.app.http_addr, method, path, Some(token), b.as_deref()).await
    }

    /// Creates a destination with `token`; returns its id.
    pub(crate) async fn destination(&self, token: &str, body: Value) -> i64 {
        let r = self
            .call("POST", "/api/v1/destinations", token, Some(body))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_i64().unwrap()
    }

    pub(crate) async fn stop(self) {
        self.app.shutdown();
        self.app.wait().await;
    }
}

pub(crate) fn webhook(url: &str) -> Value {
    json!({ "name": "dispatch", "channel": "webhook", "url": url, "secret": SECRET })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_down_then_back_gets_everything_in_order_once_each() {
    let e = Env::start(|_| {}, "fw-deliver-hook").await;
    // The destination's server is not listening yet.
    let port = free_port().unwrap();
    let dest = e
        .destination(&e.coop_a, webhook(&format!("http://127.0.0.1:{port}/hook")))
        .await;
    let base = base_time();
    let ids: Vec<String> = (0..5).map(|i| format!("hook-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        insert_alert(
            &e.db,
            id,
            "HTX-A",
            "overspeed",
            "violation",
            base + TimeDelta::seconds(i as i64),
        )
        .await;
    }
    // Another cooperative's alert never reaches this destination.
    insert_alert(&e.db, "other-coop", "HTX-B", "overspeed", "violation", base).await;
    wait_until("failed attempts logged while down", Duration::from_secs(20), || async {
        count(&e.db, &format!("SELECT count(*) FROM reminder_log WHERE destination_id = {dest} AND status = 'failed'")).await >= 3
    })
    .await;
    // Up, but answering 503 for a while.
    let rx = Receiver::start(port, 503).await;
    wait_until("503s answered", Duration::from_secs(20), || async {
        rx.all().len() >= 2
    })
    .await;
    assert!(rx.accepted().is_empty());
    rx.status.store(200, Ordering::SeqCst);
    wait_until("five alerts delivered", Duration::from_secs(20), || async {
        rx.alert_keys().len() >= 5
    })
    .await;
    // A change of an alert is a new revision, with its own key.
    close_alert(&e.db, &ids[1]).await;
    wait_until("the closing delivered", Duration::from_secs(20), || async {
        rx.alert_keys().len() >= 6
    })
    .await;
    // Let any repeat show before judging.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let accepted = rx.accepted();
    let keys = rx.alert_keys();
    let mut want: Vec<String> = ids.iter().map(|id| format!("{id}:1")).collect();
    want.push(format!("{}:2", ids[1]));
    assert_eq!(keys, want, "in order, each once");
    for r in rx.all() {
        assert!(r.signed(), "bad signature: {:?}", r.headers);
    }
    // The five that queued while the destination was down went in fewer requests.
    assert!(accepted.len() < 6, "{} requests", accepted.len());
    for r in &accepted {
        let b = r.json();
        let header = r.header("idempotency-key").unwrap();
        assert_eq!(b["idempotency_key"], json!(header));
        let alerts = b["alerts"].as_array().unwrap();
        match alerts.as_slice() {
            [one] => assert_eq!(one["idempotency_key"], json!(header)),
            _ => assert!(header.starts_with(&format!("batch:{dest}:")), "{header}"),
        }
        assert_eq!(b["cooperative"], "HTX-A");
        assert_eq!(b["digest"], false);
        for a in alerts {
            assert!(a["map_url"]
                .as_str()
                .unwrap()
                .starts_with("https://fleet.example.vn/map#vehicle=A-1&t="));
        }
    }
    let closing = accepted.last().unwrap().json();
    let closing = closing["alerts"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(closing["status"], "closed");
    assert_eq!(closing["revision"], 2);
    // The legal log: every attempt, failed and delivered, with whom and what.
    let delivered = count(
        &e.db,
        &format!(
        "SELECT count(*) FROM reminder_log WHERE destination_id = {dest} AND status = 'delivered'
           AND channel = 'webhook' AND target LIKE 'http://127.0.0.1:%' AND detail = 'HTTP 200'"),
    )
    .await;
    assert_eq!(delivered, 6);
    let failed_503 = count(&e.db, &format!(
        "SELECT count(*) FROM reminder_log WHERE destination_id = {dest} AND status = 'failed' AND detail LIKE 'HTTP 503%'")).await;
    assert!(failed_503 >= 2, "{failed_503}");
    assert_eq!(
        count(
            &e.db,
            "SELECT count(*) FROM deliveries WHERE alert_id = 'other-coop'"
        )
        .await,
        0
    );
    // The API shows them, newest first.
    let r = e
        .call(
            "GET",
            &format!("/api/v1/deliveries?destination={dest}&status=delivered"),
            &e.coop_a,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json();
    assert_eq!(list["count"], 6);
    assert_eq!(list["deliveries"][0]["idempotency_key"], json!(want[5]));
    assert!(list["deliveries"][5]["attempts"].as_i64().unwrap() >= 3);
    let r = e
        .call(
            "GET",
            &format!("/api/v1/destinations/{dest}"),
            &e.coop_a,
            None,
        )
        .await;
    let d = r.json();
    assert_eq!(
        (
            d["status"].as_str(),
            d["consecutive_failures"].as_i64(),
            d["pending"].as_i64()
        ),
        (Some("active"), Some(0), Some(0))
    );
    assert!(
        d.get("secret").is_none() && !r.body.contains(SECRET),
        "the secret is never shown"
    );
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_destination_is_parked_and_slows_no_other() {
    let e = Env::start(
        |s| {
            s.deliveries.park_after_failures = 3;
            s.deliveries.timeout_s = 3;
        },
        "fw-deliver-park",
    )
    .await;
    // Hangs every request until fleetwatch's 3 s timeout.
    let slow = Receiver::start(0, 0).await;
    let good = Receiver::start(0, 200).await;
    let bad_id = e.destination(&e.admin, json!({ "cooperative": "HTX-A", "name": "slow", "channel": "webhook", "url": slow.url(), "secret": SECRET })).await;
    let good_id = e.destination(&e.coop_a, webhook(&good.url())).await;
    let base = base_time();
    for i in 0..5 {
        insert_alert(
            &e.db,
            &format!("park-{i}"),
            "HTX-A",
            "off_route",
            "violation",
            base + TimeDelta::seconds(i),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until(
        "the good destination served",
        Duration::from_secs(20),
        || async { good.alert_keys().len() == 5 },
    )
    .await;
    wait_until("the failing destination parked", Duration::from_secs(30), || async {
        count(&e.db, &format!("SELECT count(*) FROM delivery_destinations WHERE id = {bad_id} AND parked_at IS NOT NULL")).await == 1
    })
    .await;
    let c = fleetwatch::store::connect(&e.db).await.unwrap();
    // On time: each within 2 s of being enqueued (one attempt of the other takes 3 s),
    // all before the other was parked.
    let row = c
        .query_one(
            "SELECT max(extract(epoch FROM l.delivered_at - l.created_at))::float8,
                    bool_and(l.delivered_at < d.parked_at)
             FROM deliveries l, delivery_destinations d WHERE l.destination_id = $1 AND d.id = $2",
            &[&good_id, &bad_id],
        )
        .await
        .unwrap();
    let (lag_s, before): (f64, bool) = (row.get(0), row.get(1));
    assert!(lag_s < 2.0, "the good destination waited {lag_s} s");
    assert!(
        before,
        "the good destination was served while the other failed"
    );
    assert_eq!(slow.all().len(), 3, "no attempt after parking");
    // Parked with its reason, in the API and the metrics.
    let d = e
        .call(
            "GET",
            &format!("/api/v1/destinations/{bad_id}"),
            &e.coop_a,
            None,
        )
        .await
        .json();
    assert_eq!(d["status"], "parked");
    let reason = d["parked_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("3 consecutive failures; last: ") && reason.contains("timed out"),
        "{reason}"
    );
    assert_eq!(d["pending"], 5);
    let m = http(e.app.http_addr, "GET", "/metrics", None, None)
        .await
        .body;
    assert!(m.contains("fleetwatch_destinations_parked"), "metrics");
    assert!(
        m.contains("fleetwatch_deliveries_total{channel=\"webhook\",outcome=\"failed\"}"),
        "metrics"
    );
    assert!(m.contains("fleetwatch_delivery_lag_seconds"), "metrics");
    // Unparked once it works again: everything, in order.
    slow.status.store(200, Ordering::SeqCst);
    let r = e
        .call(
            "POST",
            &format!("/api/v1/destinations/{bad_id}/unpark"),
            &e.coop_a,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until(
        "the unparked destination served",
        Duration::from_secs(20),
        || async { slow.alert_keys().len() == 5 },
    )
    .await;
    let keys = slow.alert_keys();
    assert_eq!(
        keys,
        (0..5).map(|i| format!("park-{i}:1")).collect::<Vec<_>>()
    );
    e.stop().await;
}

/// An SMTP server (aiosmtpd) with STARTTLS required and one login; every message
/// is decoded by Python's email package and written as JSON.
const SMTP_SERVER: &str = r#"
import email, json, os, ssl, sys
from email import policy
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=policy.default)
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        doc = {
            "subject": str(msg["subject"]), "from": str(msg["from"]), "to": str(msg["to"]),
            "message_id": str(msg["message-id"]), "content_type": msg.get_content_type(),
            "text": text.get_content() if text else None, "html": html.get_content() if html else None,
            "charset": text.get_content_charset() if text else None,
            "tls": session.ssl is not None, "authenticated": bool(session.authenticated),
        }
        n = len([f for f in os.listdir(out) if f.endswith(".json")])
        path = os.path.join(out, "%04d" % n)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False)
        os.rename(path + ".tmp", path + ".json")
        return "250 OK"

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"fleet" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
c = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True,
               authenticator=authenticator, auth_require_tls=True)
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"#;

struct Smtp {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Smtp {
    fn start() -> Smtp {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!(
            "fleetwatch-smtp-{}-{}",
            std::process::id(),
            free_port().unwrap()
        ));
        std::fs::create_dir_all(dir.join("out")).unwrap();
        crate::tls::credentials(&dir);
        std::fs::write(dir.join("server.py"), SMTP_SERVER).unwrap();
        let port = free_port().unwrap();
        let python = ["/usr/bin/python3", "python3"].into_iter().find(|p| {
            std::process::Command::new(p)
                .args(["-c", "import aiosmtpd"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        let python = python
            .expect("aiosmtpd is installed (apt-get install python3-aiosmtpd; scripts/test does)");
        let mut child = std::process::Command::new(python)
            .arg(dir.join("server.py"))
            .arg(port.to_string())
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"))
            .arg(dir.join("out"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        Smtp { child, port, dir }
    }

    fn mails(&self) -> Vec<Value> {
        let mut names: Vec<_> = std::fs::read_dir(self.dir.join("out"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_starttls_with_login_in_vietnamese_and_english() {
    let smtp = Smtp::start();
    let (port, ca) = (smtp.port, smtp.dir.join("ca.pem"));
    let e = Env::start(
        |s| {
            s.deliveries.smtp.host = "127.0.0.1".into();
            s.deliveries.smtp.port = port;
            s.deliveries.smtp.username = "fleet".into();
            s.deliveries.smtp.password = "s3cret".into();
            s.deliveries.smtp.from = "Điều hành HTX <canhbao@htx-a.example.vn>".into();
            s.deliveries.smtp.ca_file = Some(ca);
        },
        "fw-deliver-mail",
    )
    .await;
    let vi = json!({ "name": "đội điều hành", "channel": "email", "email": "dieuhanh@htx-a.example.vn", "min_level": "warning" });
    e.destination(&e.coop_a, vi).await;
    let en = json!({ "name": "owner", "channel": "email", "email": "owner@htx-a.example.vn", "language": "en", "kinds": ["overspeed"] });
    e.destination(&e.coop_a, en).await;
    let start: DateTime<Utc> = "2026-11-24T01:15:03Z".parse().unwrap();
    insert_alert(&e.db, "mail-1", "HTX-A", "overspeed", "violation", start).await;
    // Below the first one's level, not of the second one's kind: nobody.
    insert_alert(&e.db, "mail-2", "HTX-A", "zone_enter", "info", start).await;
    wait_until("two mails", Duration::from_secs(30), || async {
        smtp.mails().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mails = smtp.mails();
    assert_eq!(mails.len(), 2, "{mails:?}");
    let to = |a: &str| {
        mails
            .iter()
            .find(|m| m["to"] == a)
            .unwrap_or_else(|| panic!("no mail to {a}: {mails:?}"))
    };
    let m = to("dieuhanh@htx-a.example.vn");
    assert_eq!(
        m["subject"],
        "[HTX-A] Vi phạm: Quá tốc độ — A-1 (đang diễn ra)"
    );
    assert_eq!(m["from"], "Điều hành HTX <canhbao@htx-a.example.vn>");
    assert_eq!(m["content_type"], "multipart/alternative");
    assert_eq!(m["charset"], "utf-8");
    assert_eq!(
        (m["tls"].as_bool(), m["authenticated"].as_bool()),
        (Some(true), Some(true))
    );
    let text = m["text"].as_str().unwrap();
    assert!(
        text.contains("Bắt đầu: 24/11/2026 08:15:03 (UTC+07:00)"),
        "{text}"
    );
    assert!(
        text.contains("Tốc độ: tối đa 85 km/h, giới hạn 70 km/h, mức 2"),
        "{text}"
    );
    assert!(
        text.contains(
            "Bản đồ: https://fleet.example.vn/map#vehicle=A-1&t=2026-11-24T01%3A15%3A03Z"
        ),
        "{text}"
    );
    let html = m["html"].as_str().unwrap();
    assert!(
        html.contains("<th align=\"left\">Vị trí</th><td>10.98000, 106.65000</td>"),
        "{html}"
    );
    assert!(html.contains("Quá tốc độ"), "{html}");
    assert_eq!(m["message_id"], "<mail-1.1.d1@fleetwatch>");
    let m = to("owner@htx-a.example.vn");
    assert_eq!(m["subject"], "[HTX-A] Violation: Overspeed — A-1 (ongoing)");
    assert!(m["text"]
        .as_str()
        .unwrap()
        .contains("Speed: max 85 km/h, limit 70 km/h, band 2"));
    assert!(m["html"].as_str().unwrap().contains("Overspeed"));
    assert_eq!(
        count(&e.db, "SELECT count(*) FROM reminder_log WHERE channel = 'email' AND status = 'delivered' AND detail LIKE 'SMTP 250%'").await,
        2
    );
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooperative_sees_and_manages_only_its_own_destinations_and_deliveries() {
    let e = Env::start(
        |s| s.deliveries.allow_private_targets = false,
        "fw-deliver-scope",
    )
    .await;
    let hook = |name: &str| json!({ "name": name, "channel": "webhook", "url": "https://hooks.example.vn/fleet", "secret": SECRET });
    let a = e.destination(&e.coop_a, hook("a")).await;
    let b = e.destination(&e.admin, json!({ "cooperative": "HTX-B", "name": "b", "channel": "email", "email": "b@htx-b.example.vn" })).await;
    // Refused: another cooperative, a regulator, no cooperative for an admin, a
    // duplicate name, a private address.
    let mut other = hook("x");
    other["cooperative"] = json!("HTX-B");
    assert_eq!(
        e.call("POST", "/api/v1/destinations", &e.coop_a, Some(other))
            .await
            .status,
        403
    );
    assert_eq!(
        e.call(
            "POST",
            "/api/v1/destinations",
            &e.regulator,
            Some(hook("r"))
        )
        .await
        .status,
        403
    );
    assert_eq!(
        e.call("POST", "/api/v1/destinations", &e.admin, Some(hook("n")))
            .await
            .status,
        400
    );
    assert_eq!(
        e.call("POST", "/api/v1/destinations", &e.coop_a, Some(hook("a")))
            .await
            .status,
        409
    );
    let mut private = hook("p");
    private["url"] = json!("http://169.254.169.254/latest");
    assert_eq!(
        e.call("POST", "/api/v1/destinations", &e.coop_a, Some(private))
            .await
            .status,
        400
    );

    let names = |v: Value| -> Vec<String> {
        v["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(
            e.call("GET", "/api/v1/destinations", &e.coop_a, None)
                .await
                .json()
        ),
        ["a"]
    );
    assert_eq!(
        names(
            e.call("GET", "/api/v1/destinations", &e.coop_b, None)
                .await
                .json()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            e.call("GET", "/api/v1/destinations", &e.regulator, None)
                .await
                .json()
        ),
        ["a", "b"]
    );
    // Another cooperative's destination does not exist for this token.
    for (m, p) in [
        ("GET", format!("/api/v1/destinations/{a}")),
        ("DELETE", format!("/api/v1/destinations/{a}")),
        ("POST", format!("/api/v1/destinations/{a}/unpark")),
    ] {
        assert_eq!(e.call(m, &p, &e.coop_b, None).await.status, 404, "{m} {p}");
    }
    assert_eq!(
        e.call(
            "PUT",
            &format!("/api/v1/destinations/{a}"),
            &e.coop_b,
            Some(hook("a2"))
        )
        .await
        .status,
        404
    );
    // Its own: changed, then deleted.
    let mut changed = hook("a2");
    changed["min_level"] = json!("violation");
    changed["quiet_hours"] = json!("22:00-06:00");
    let r = e
        .call(
            "PUT",
            &format!("/api/v1/destinations/{a}"),
            &e.coop_a,
            Some(changed),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["name"].as_str(), r.json()["quiet_hours"].as_str()),
        (Some("a2"), Some("22:00-06:00"))
    );

    // Deliveries: each sees its own.
    insert_alert(
        &e.db,
        "scope-a",
        "HTX-A",
        "overspeed",
        "violation",
        base_time(),
    )
    .await;
    insert_alert(
        &e.db,
        "scope-b",
        "HTX-B",
        "overspeed",
        "violation",
        base_time(),
    )
    .await;
    wait_until("fanned out", Duration::from_secs(20), || async {
        count(&e.db, "SELECT count(*) FROM deliveries").await == 2
    })
    .await;
    let alerts = |v: Value| -> Vec<String> {
        v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["alert_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        alerts(
            e.call("GET", "/api/v1/deliveries", &e.coop_a, None)
                .await
                .json()
        ),
        ["scope-a"]
    );
    assert_eq!(
        alerts(
            e.call("GET", "/api/v1/deliveries", &e.coop_b, None)
                .await
                .json()
        ),
        ["scope-b"]
    );
    assert!(alerts(
        e.call(
            "GET",
            &format!("/api/v1/deliveries?destination={a}"),
            &e.coop_b,
            None
        )
        .await
        .json()
    )
    .is_empty());
    assert!(alerts(
        e.call("GET", "/api/v1/deliveries?alert=scope-a", &e.coop_b, None)
            .await
            .json()
    )
    .is_empty());
    assert_eq!(
        alerts(
            e.call("GET", "/api/v1/deliveries", &e.admin, None)
                .await
                .json()
        )
        .len(),
        2
    );
    assert_eq!(
        e.call("GET", "/api/v1/deliveries?status=lost", &e.admin, None)
            .await
            .status,
        400
    );

    // Described in the OpenAPI document.
    let doc = http(e.app.http_addr, "GET", "/api/v1/openapi.json", None, None)
        .await
        .json();
    for p in [
        "/api/v1/destinations",
        "/api/v1/destinations/{id}",
        "/api/v1/destinations/{id}/unpark",
        "/api/v1/deliveries",
    ] {
        assert!(doc["paths"][p].is_object(), "{p}");
    }
    assert!(doc["components"]["schemas"]["Destination"]["properties"]["quiet_hours"].is_object());

    assert_eq!(
        e.call(
            "DELETE",
            &format!("/api/v1/destinations/{a}"),
            &e.coop_a,
            None
        )
        .await
        .status,
        204
    );
    assert!(names(
        e.call("GET", "/api/v1/destinations", &e.coop_a, None)
            .await
            .json()
    )
    .is_empty());
    assert_eq!(
        count(
            &e.db,
            "SELECT count(*) FROM deliveries WHERE alert_id = 'scope-a' AND status = 'cancelled'"
        )
        .await,
        1
    );
    assert_eq!(
        e.call("GET", &format!("/api/v1/destinations/{b}"), &e.coop_a, None)
            .await
            .status,
        404
    );
    e.stop().await;
}

/// A TLS server (openssl s_server) whose certificate the test CA signs, a CA the
/// webhook client does not trust.
struct TlsServer {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl TlsServer {
    async fn start() -> TlsServer {
        let port = free_port().unwrap();
        let dir =
            std::env::temp_dir().join(format!("fleetwatch-https-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        crate::tls::credentials(&dir);
        let child = std::process::Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-www",
                "-cert",
                "server.pem",
                "-key",
                "server.key",
            ])
            .arg("-accept")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_until(
            "openssl s_server listens",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        TlsServer { child, port, dir }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An https webhook goes through rustls (ring as the provider, installed by
/// fleetwatch): the handshake runs and the unknown issuer is refused and logged, no
/// plain-text fallback, no panic for want of a crypto provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhook_handshakes_and_refuses_an_untrusted_certificate() {
    let tls = TlsServer::start().await;
    let e = Env::start(|_| {}, "fw-deliver-https").await;
    let dest = e
        .destination(
            &e.coop_a,
            webhook(&format!("https://127.0.0.1:{}/hook", tls.port)),
        )
        .await;
    insert_alert(
        &e.db,
        "https-1",
        "HTX-A",
        "overspeed",
        "violation",
        base_time(),
    )
    .await;
    wait_until("a failed attempt logged", Duration::from_secs(20), || async {
        count(&e.db, &format!("SELECT count(*) FROM reminder_log WHERE destination_id = {dest} AND status = 'failed'")).await >= 1
    })
    .await;
    let c = fleetwatch::store::connect(&e.db).await.unwrap();
    let detail: String = c
        .query_one(
            "SELECT detail FROM reminder_log WHERE destination_id = $1 AND status = 'failed' ORDER BY 1 LIMIT 1",
            &[&dest],
        )
        .await
        .unwrap()
        .get(0);
    assert!(detail.contains("UnknownIssuer"), "{detail}");
    e.stop().await;
}

/// Failover: a leader that lost its lease neither queues, sends nor records a
/// delivery; the new leader does, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leader_queues_sends_and_records_no_delivery() {
    use fleetwatch::store::deliver::{self, fanout, DeliverError, DeliveriesConfig};
    use fleetwatch::store::lease::{self, HaConfig};
    use fleetwatch::store::StoreError;
    use tokio_util::sync::CancellationToken;

    // The app serves the API only: the deliveries below run under the test's fences.
    let e = Env::start(|s| s.deliveries.enabled = false, "fw-deliver-fence").await;
    let rx = Receiver::start(0, 200).await;
    let dest = e.destination(&e.coop_a, webhook(&rx.url())).await;
    let cfg = HaConfig {
        enabled: true,
        lease_s: 1,
        name: "deliveries".into(),
    };
    let never = CancellationToken::new();
    let mut c = fleetwatch::store::connect(&e.db).await.unwrap();
    let old = lease::acquire(&c, &cfg, "old", &never)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let c2 = fleetwatch::store::connect(&e.db).await.unwrap();
    // The new leader's lease outlasts the test (nobody renews it here).
    let long = HaConfig {
        lease_s: 120,
        ..cfg.clone()
    };
    let new = lease::acquire(&c2, &long, "new", &never)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((old.epoch(), new.epoch()), (1, 2));
    insert_alert(
        &e.db,
        "fence-1",
        "HTX-A",
        "overspeed",
        "violation",
        base_time(),
    )
    .await;

    // The old leader's fan-out is refused whole.
    let err = fanout::fan_out(&mut c, 7 * 3600, Some(&old))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DeliverError::Db(StoreError::Fenced {
                epoch: 1,
                current: Some(2)
            })
        ),
        "{err}"
    );
    assert!(old.lost().is_cancelled(), "the old leader steps down");
    let deliveries = "SELECT count(*) FROM deliveries";
    assert_eq!(count(&e.db, deliveries).await, 0, "nothing queued");
    let fanned = "SELECT count(*) FROM alerts WHERE fanned_out_revision IS NOT NULL";
    assert_eq!(count(&e.db, fanned).await, 0);
    assert_eq!(
        fanout::fan_out(&mut c, 7 * 3600, Some(&new)).await.unwrap(),
        1
    );
    assert_eq!(count(&e.db, deliveries).await, 1);

    let run = |fence: lease::Fence, stop: CancellationToken| {
        let cfg = DeliveriesConfig {
            allow_private_targets: true,
            poll_ms: 100,
            ..Default::default()
        };
        tokio::spawn(deliver::run(
            e.db.clone(),
            cfg,
            7 * 3600,
            Arc::new(tokio::sync::Notify::new()),
            Some(fence),
            stop,
        ))
    };
    // The old leader's workers send nothing and record nothing.
    let stop = CancellationToken::new();
    let task = run(old, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    task.await.unwrap();
    assert!(rx.all().is_empty(), "a stale leader sent {:?}", rx.all());
    let pending = "SELECT count(*) FROM deliveries WHERE status = 'pending' AND attempts = 0";
    assert_eq!(count(&e.db, pending).await, 1);
    let logged = format!("SELECT count(*) FROM reminder_log WHERE destination_id = {dest}");
    assert_eq!(count(&e.db, &logged).await, 0, "nothing recorded");

    // The leader delivers it, once.
    let stop = CancellationToken::new();
    let task = run(new, stop.clone());
    wait_until(
        "delivered by the leader",
        Duration::from_secs(20),
        || async { rx.alert_keys().len() == 1 },
    )
    .await;
    wait_until("recorded", Duration::from_secs(10), || async {
        count(&e.db, &format!("SELECT count(*) FROM reminder_log WHERE destination_id = {dest} AND status = 'delivered'")).await == 1
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(rx.alert_keys(), ["fence-1:1"]);
    e.stop().await;
}
