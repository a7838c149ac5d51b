//! The device gateway over real sockets into real PostgreSQL: devices log in, send
//! positions in their own protocols, and get each reply only once what the frame
//! carried is committed; bad frames are kept as dead letters and never stop the
//! listener; unknown devices are refused and listed.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use fleetwatch::api::auth::{create_token, Role};
use fleetwatch::app::App;
use fleetwatch::config::Settings;
use fleetwatch::domain::{CooperativeId, Vehicle, VehicleClass, VehicleId};
use fleetwatch::sources::device::{gt06, jt808, teltonika, Scan};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const COOP: &str = "coop-gw";

fn vehicle(id: &str, device: &str) -> Vehicle {
    Vehicle {
        id: VehicleId::parse(id).unwrap(),
        plate: None,
        cooperative: CooperativeId::parse(COOP).unwrap(),
        class: VehicleClass::Container,
        route: None,
        device_id: Some(device.to_string()),
    }
}

fn gateway_settings(db: &str, mqtt: &str, client: &str) -> Settings {
    let mut s = settings(db, mqtt, client);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.gateway.gt06.listen = Some(any);
    s.gateway.jt808.listen = Some(any);
    s.gateway.teltonika.listen = Some(any);
    s.gateway.osmand.listen = Some(any);
    s.gateway.jt808_auth_secret = Some("test secret".into());
    s.vehicles = vec![
        vehicle("GW-JT", "013912345678"),
        vehicle("GW-GT", "868120145233604"),
        vehicle("GW-GT2", "868120145233605"),
        vehicle("GW-TE", "356307042441013"),
        vehicle("GW-OS", "phone-7"),
    ];
    s
}

fn addr(app: &App, protocol: &str) -> SocketAddr {
    app.gateway
        .iter()
        .find(|(p, _)| *p == protocol)
        .map(|(_, a)| *a)
        .unwrap_or_else(|| panic!("{protocol} listener runs"))
}

/// Reads one whole frame as `scan` delimits it (5 s at most).
async fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>, scan: fn(&[u8]) -> Scan) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Scan::Frame(n) = scan(buf) {
                return buf.drain(..n).collect();
            }
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed while waiting for a frame");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a reply within 5 s")
}

/// Whether the peer closed the connection (within 5 s).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn bcd_time(t: DateTime<Utc>, offset_s: i64) -> Vec<u8> {
    let l = t + chrono::TimeDelta::seconds(offset_s);
    let d = |v: u32| (((v / 10) << 4) | (v % 10)) as u8;
    vec![
        d((l.year() % 100) as u32),
        d(l.month()),
        d(l.day()),
        d(l.hour()),
        d(l.minute()),
        d(l.second()),
    ]
}

/// A JT/T 808 0x0200 body: positioned, ignition on, at `t` (GMT+8 local time).
fn jt_location(t: DateTime<Utc>, lat: f64, lon: f64, speed_kmh: f64) -> Vec<u8> {
    jt_location_at(t, 8 * 3600, lat, lon, speed_kmh)
}

/// [`jt_location`] from a terminal set to `offset_s` from UTC.
fn jt_location_at(t: DateTime<Utc>, offset_s: i64, lat: f64, lon: f64, speed_kmh: f64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0u32.to_be_bytes()); // alarms
    b.extend_from_slice(&0x03u32.to_be_bytes()); // ACC on, positioned
    b.extend_from_slice(&((lat * 1e6) as u32).to_be_bytes());
    b.extend_from_slice(&((lon * 1e6) as u32).to_be_bytes());
    b.extend_from_slice(&12u16.to_be_bytes()); // altitude
    b.extend_from_slice(&((speed_kmh * 10.0) as u16).to_be_bytes());
    b.extend_from_slice(&90u16.to_be_bytes());
    b.extend_from_slice(&bcd_time(t, offset_s));
    b.extend_from_slice(&[0x01, 4]); // mileage, 0.1 km
    b.extend_from_slice(&1234u32.to_be_bytes());
    b
}

/// A JT/T 808 2013 registration body with terminal id `FW-T1`.
fn jt_register() -> Vec<u8> {
    let mut b = vec![0, 44, 0, 1]; // province, city
    b.extend_from_slice(b"MAKER");
    b.extend_from_slice(b"FW-M7\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    b.extend_from_slice(b"FW-T1\0\0");
    b.push(1);
    b.extend_from_slice(b"61C12345");
    b
}

fn jt_reply_body(frame: &[u8]) -> (u16, Vec<u8>) {
    let f = jt808::parse(frame).expect("a valid reply");
    (f.msg_id, f.body)
}

async fn stored_at(db: &str, vehicle: &str, t: DateTime<Utc>) -> i64 {
    let c = fleetwatch::store::connect(db).await.unwrap();
    c.query_one(
        "SELECT count(*) FROM fixes WHERE vehicle_id = $1 AND ts = $2",
        &[&vehicle, &t],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jt808_terminal_registers_authenticates_and_each_reply_follows_its_commit() {
    let db = fresh_db().await;
    let app = start_app(gateway_settings(&db, "", "fw-gw-jt")).await;
    let phone = "013912345678";
    let mut s = TcpStream::connect(addr(&app, "jt808")).await.unwrap();
    let mut buf = Vec::new();
    let e = jt808::Edition::V2013;

    // Register: the reply carries the auth code.
    s.write_all(&jt808::encode(jt808::REGISTER, e, phone, 1, &jt_register()))
        .await
        .unwrap();
    let (id, body) = jt_reply_body(&read_frame(&mut s, &mut buf, jt808::scan).await);
    assert_eq!(id, jt808::REGISTER_RESPONSE);
    assert_eq!(&body[..3], &[0, 1, 0], "answers serial 1 with success");
    let code = String::from_utf8(body[3..].to_vec()).unwrap();
    assert_eq!(code.len(), 16);

    // A wrong code is refused (and kept); the right one accepted.
    s.write_all(&jt808::encode(jt808::AUTH, e, phone, 2, b"not-the-code"))
        .await
        .unwrap();
    let (id, body) = jt_reply_body(&read_frame(&mut s, &mut buf, jt808::scan).await);
    assert_eq!((id, body[4]), (jt808::PLATFORM_RESPONSE, 1), "failure");
    s.write_all(&jt808::encode(jt808::AUTH, e, phone, 3, code.as_bytes()))
        .await
        .unwrap();
    let (id, body) = jt_reply_body(&read_frame(&mut s, &mut buf, jt808::scan).await);
    assert_eq!((id, body[4]), (jt808::PLATFORM_RESPONSE, 0), "success");

    // Positions: each general response comes after its fix is stored.
    let t0 = base_time();
    for k in 0..5u16 {
        let t = t0 + chrono::TimeDelta::seconds(i64::from(k) * 10);
        let body = jt_location(t, 10.98 + f64::from(k) * 1e-3, 106.65, 42.5);
        s.write_all(&jt808::encode(jt808::LOCATION, e, phone, 10 + k, &body))
            .await
            .unwrap();
        let (id, reply) = jt_reply_body(&read_frame(&mut s, &mut buf, jt808::scan).await);
        assert_eq!(id, jt808::PLATFORM_RESPONSE);
        assert_eq!(
            &reply[..],
            &[0, 10 + k as u8, 0x02, 0x00, 0],
            "answers serial, message id, success"
        );
        assert_eq!(
            stored_at(&db, "GW-JT", t).await,
            1,
            "stored before the reply"
        );
    }
    // A blind-area batch of three, one answer after all three are stored.
    let mut batch = vec![0, 3, 1];
    for k in 0..3 {
        let t = t0 - chrono::TimeDelta::seconds(600 - k * 10);
        let item = jt_location(t, 10.97, 106.64, 30.0);
        batch.extend_from_slice(&(item.len() as u16).to_be_bytes());
        batch.extend_from_slice(&item);
    }
    s.write_all(&jt808::encode(jt808::BATCH, e, phone, 20, &batch))
        .await
        .unwrap();
    let (_, reply) = jt_reply_body(&read_frame(&mut s, &mut buf, jt808::scan).await);
    assert_eq!(reply[4], 0);
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let r = c
        .query_one(
            "SELECT count(*), min(ts), max(odometer_m), max(speed_kmh)::float8 FROM fixes WHERE vehicle_id = 'GW-JT'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 8);
    assert_eq!(
        r.get::<_, DateTime<Utc>>(1),
        t0 - chrono::TimeDelta::seconds(600),
        "BCD local time at GMT+8 is stored as UTC"
    );
    assert_eq!(
        r.get::<_, Option<f64>>(2),
        Some(123_400.0),
        "mileage item, 0.1 km"
    );
    assert_eq!(r.get::<_, f64>(3), 42.5);

    // The devices list shows it, with the terminal id from its registration.
    let list = app_devices(&app).await;
    let d = list
        .iter()
        .find(|d| d["device_id"] == phone)
        .expect("listed");
    assert_eq!(d["vehicle"], "GW-JT");
    assert_eq!(d["status"], "registered");
    assert_eq!(d["model"], "FW-M7");
    assert_eq!(d["positions"], 8);
    assert_eq!(d["connected"], true);
    app.shutdown();
    app.wait().await;
}

/// `GET /api/v1/devices` with a fresh admin token.
async fn app_devices(app: &App) -> Vec<serde_json::Value> {
    let c = fleetwatch::store::connect(&app.db_url).await.unwrap();
    let token = create_token(&c, Role::Admin, None, None).await.unwrap();
    let body = crate::api::get(app.http_addr, "/api/v1/devices", &token)
        .await
        .json();
    body["devices"].as_array().unwrap().clone()
}

/// A GT06 GPS (0x10) body at `t`, positioned, north and east.
fn gt_position(t: DateTime<Utc>, lat: f64, lon: f64, speed_kmh: u8) -> Vec<u8> {
    let mut b = vec![
        (t.year() - 2000) as u8,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        0xc9, // 12 satellites
    ];
    b.extend_from_slice(&((lat * 1_800_000.0) as u32).to_be_bytes());
    b.extend_from_slice(&((lon * 1_800_000.0) as u32).to_be_bytes());
    b.push(speed_kmh);
    let flags: u16 = 0x1000 | 0x0400 | 180; // positioned, north, course 180
    b.extend_from_slice(&flags.to_be_bytes());
    b
}

/// A GT06 login of `imei`, serial 1 (the simulator's encoder).
fn gt_login(imei: &str) -> Vec<u8> {
    let imei = fleetwatch::sim::devices::Imei::new(imei).expect("15 digits");
    fleetwatch::sim::devices::gt06_login(&imei, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gt06_bad_frames_are_kept_and_the_listener_keeps_serving() {
    let db = fresh_db().await;
    let mut cfg = gateway_settings(&db, "", "fw-gw-gt");
    cfg.gateway.max_buffer_bytes = 2048;
    let app = start_app(cfg).await;
    let at = addr(&app, "gt06");
    let t0 = base_time();

    // A frame before login: kept, connection closed.
    let mut early = TcpStream::connect(at).await.unwrap();
    early
        .write_all(&gt06::encode(
            false,
            gt06::GPS,
            &gt_position(t0, 10.9, 106.6, 10),
            1,
        ))
        .await
        .unwrap();
    assert!(
        closed(&mut early).await,
        "closed after a frame before login"
    );

    // A device that sends garbage and a corrupted frame between good ones.
    let mut a = TcpStream::connect(at).await.unwrap();
    let mut buf = Vec::new();
    a.write_all(&gt_login("868120145233604")).await.unwrap();
    let login_ack = read_frame(&mut a, &mut buf, gt06::scan).await;
    assert_eq!(
        gt06::parse(&login_ack).unwrap().protocol,
        gt06::LOGIN,
        "login answered"
    );
    let mut stream = Vec::new();
    stream.extend_from_slice(&gt06::encode(
        false,
        gt06::GPS,
        &gt_position(t0, 10.9, 106.6, 30),
        2,
    ));
    stream.extend_from_slice(b"\x01\x02noise\xff");
    let mut bad = gt06::encode(
        false,
        gt06::GPS,
        &gt_position(t0 + chrono::TimeDelta::seconds(10), 10.9, 106.6, 31),
        3,
    );
    let n = bad.len();
    bad[n - 4] ^= 0xff; // CRC
    stream.extend_from_slice(&bad);
    stream.extend_from_slice(&gt06::encode(
        false,
        gt06::GPS,
        &gt_position(t0 + chrono::TimeDelta::seconds(20), 10.9001, 106.6, 32),
        4,
    ));
    a.write_all(&stream).await.unwrap();

    // Meanwhile another device on its own connection is served.
    let mut b = TcpStream::connect(at).await.unwrap();
    let mut bbuf = Vec::new();
    b.write_all(&gt_login("868120145233605")).await.unwrap();
    read_frame(&mut b, &mut bbuf, gt06::scan).await;
    b.write_all(&gt06::encode(
        false,
        gt06::GPS,
        &gt_position(t0, 10.8, 106.7, 50),
        2,
    ))
    .await
    .unwrap();

    wait_until("good GT06 fixes stored", Duration::from_secs(10), || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT count(*) FROM fixes WHERE vehicle_id IN ('GW-GT', 'GW-GT2')",
            )
            .await
                == 3
        }
    })
    .await;
    wait_until("bad frames kept", Duration::from_secs(10), || {
        let db = db.clone();
        async move { count(&db, "SELECT count(*) FROM dead_letters").await == 3 }
    })
    .await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let rows = c
        .query(
            "SELECT topic, reason, detail FROM dead_letters ORDER BY reason",
            &[],
        )
        .await
        .unwrap();
    let reasons: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        reasons,
        vec![
            (
                "gt06/868120145233604".to_string(),
                "bad_checksum".to_string()
            ),
            ("gt06@127.0.0.1".to_string(), "before_login".to_string()),
            ("gt06/868120145233604".to_string(), "garbage".to_string()),
        ]
    );
    assert!(rows[0].get::<_, String>(2).contains("from 127.0.0.1:"));
    let speed: f64 = c
        .query_one(
            "SELECT speed_kmh::float8 FROM fixes WHERE vehicle_id = 'GW-GT' ORDER BY ts DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(speed, 32.0, "the frame after the bad ones is read");

    // More bytes than max_buffer_bytes without a whole frame: kept, closed.
    let mut flood = vec![0x78, 0x78, 0xff];
    flood.extend(std::iter::repeat_n(0u8, 4000));
    let mut f = TcpStream::connect(at).await.unwrap();
    f.write_all(&gt_login("868120145233605")).await.unwrap();
    let mut fbuf = Vec::new();
    read_frame(&mut f, &mut fbuf, gt06::scan).await;
    let _ = f.write_all(&flood).await;
    // An unknown device is refused.
    let mut u = TcpStream::connect(at).await.unwrap();
    u.write_all(&gt_login("111111111111111")).await.unwrap();
    assert!(closed(&mut u).await, "unknown device refused");
    wait_until("unusable bytes kept", Duration::from_secs(10), || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT count(*) FROM dead_letters WHERE reason IN ('frame_too_long', 'garbage') AND topic = 'gt06/868120145233605'",
            )
            .await
                >= 1
        }
    })
    .await;
    // Still serving.
    b.write_all(&gt06::encode(
        false,
        gt06::GPS,
        &gt_position(t0 + chrono::TimeDelta::seconds(30), 10.8, 106.7, 51),
        3,
    ))
    .await
    .unwrap();
    wait_until("listener still serves", Duration::from_secs(10), || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT count(*) FROM fixes WHERE vehicle_id = 'GW-GT2'",
            )
            .await
                == 2
        }
    })
    .await;
    // An SOS alarm packet: answered once stored, and an alert for the dispatcher.
    let t_sos = t0 + chrono::TimeDelta::seconds(40);
    let mut sos = gt_position(t_sos, 10.8, 106.7, 0);
    sos.extend_from_slice(&[9, 1, 0xc4, 4, 0x30, 0x39, 0x00, 0x3f, 0x12]); // LBS, own length
    sos.extend_from_slice(&[0x02, 4, 3, 0x01, 0x02]); // ACC on, voltage, GSM, SOS, language
    b.write_all(&gt06::encode(false, gt06::GPS_LBS_STATUS_1, &sos, 4))
        .await
        .unwrap();
    let ack = read_frame(&mut b, &mut bbuf, gt06::scan).await;
    let ack = gt06::parse(&ack).unwrap();
    assert_eq!((ack.protocol, ack.serial), (gt06::GPS_LBS_STATUS_1, 4));
    assert_eq!(
        stored_at(&db, "GW-GT2", t_sos).await,
        1,
        "stored before the answer"
    );
    wait_until("SOS alert", Duration::from_secs(10), || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT count(*) FROM alerts WHERE vehicle_id = 'GW-GT2' AND kind = 'device_alarm'
                 AND level = 'warning' AND details->>'alarm' = 'sos'",
            )
            .await
                == 1
        }
    })
    .await;
    let list = app_devices(&app).await;
    let refused = list
        .iter()
        .find(|d| d["device_id"] == "111111111111111")
        .expect("refused device listed");
    assert_eq!(refused["status"], "refused");
    // A cooperative sees its own devices only; another sees none of them.
    let c = fleetwatch::store::connect(&app.db_url).await.unwrap();
    for (coop, expected) in [(COOP, 2), ("coop-other", 0)] {
        let token = create_token(&c, Role::Cooperative, Some(coop), None)
            .await
            .unwrap();
        let body = crate::api::get(app.http_addr, "/api/v1/devices", &token)
            .await
            .json();
        let seen = body["devices"].as_array().unwrap();
        assert_eq!(seen.len(), expected, "{coop}: {seen:?}");
        assert!(seen.iter().all(|d| d["cooperative"] == COOP.to_uppercase()));
    }
    app.shutdown();
    app.wait().await;
}

/// A Teltonika Codec 8 packet of `fixes` (time, lat, lon, speed), ignition on.
fn te_packet(fixes: &[(DateTime<Utc>, f64, f64, u16)]) -> Vec<u8> {
    let mut data = vec![teltonika::CODEC_8, fixes.len() as u8];
    for (t, lat, lon, speed) in fixes {
        data.extend_from_slice(&(t.timestamp_millis() as u64).to_be_bytes());
        data.push(0); // priority
        data.extend_from_slice(&((lon * 1e7) as i32).to_be_bytes());
        data.extend_from_slice(&((lat * 1e7) as i32).to_be_bytes());
        data.extend_from_slice(&10u16.to_be_bytes()); // altitude
        data.extend_from_slice(&90u16.to_be_bytes()); // angle
        data.push(9); // satellites
        data.extend_from_slice(&speed.to_be_bytes());
        data.extend_from_slice(&[0, 1, 1, 239, 1, 0, 0, 0]); // IO: ignition on
    }
    data.push(fixes.len() as u8);
    let crc = crc::Crc::<u16>::new(&crc::CRC_16_ARC).checksum(&data);
    let mut p = vec![0, 0, 0, 0];
    p.extend_from_slice(&(data.len() as u32).to_be_bytes());
    p.extend_from_slice(&data);
    p.extend_from_slice(&u32::from(crc).to_be_bytes());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teltonika_tcp_and_udp_and_osmand_http_answer_after_commit() {
    let db = fresh_db().await;
    let app = start_app(gateway_settings(&db, "", "fw-gw-te")).await;
    let at = addr(&app, "teltonika");
    let imei = "356307042441013";
    let t0 = base_time();

    // Unknown IMEI: answered 00 and closed.
    let mut u = TcpStream::connect(at).await.unwrap();
    let mut hs = (15u16).to_be_bytes().to_vec();
    hs.extend_from_slice(b"999999999999999");
    u.write_all(&hs).await.unwrap();
    let mut one = [0u8; 1];
    u.read_exact(&mut one).await.unwrap();
    assert_eq!(one, [0]);
    assert!(closed(&mut u).await);

    let mut s = TcpStream::connect(at).await.unwrap();
    let mut hs = (imei.len() as u16).to_be_bytes().to_vec();
    hs.extend_from_slice(imei.as_bytes());
    s.write_all(&hs).await.unwrap();
    s.read_exact(&mut one).await.unwrap();
    assert_eq!(one, [1], "IMEI accepted");
    let fixes: Vec<_> = (0..4)
        .map(|k| {
            (
                t0 + chrono::TimeDelta::seconds(k * 5),
                10.95,
                106.7 + k as f64 * 1e-4,
                40,
            )
        })
        .collect();
    s.write_all(&te_packet(&fixes)).await.unwrap();
    let mut n = [0u8; 4];
    s.read_exact(&mut n).await.unwrap();
    assert_eq!(u32::from_be_bytes(n), 4, "four records accepted");
    assert_eq!(
        count(&db, "SELECT count(*) FROM fixes WHERE vehicle_id = 'GW-TE'").await,
        4,
        "stored before the answer"
    );
    // A corrupted packet is answered 0 (the unit keeps its records) and kept.
    let mut bad = te_packet(&fixes[..1]);
    let k = bad.len() - 1;
    bad[k] ^= 0x55;
    s.write_all(&bad).await.unwrap();
    s.read_exact(&mut n).await.unwrap();
    assert_eq!(u32::from_be_bytes(n), 0);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM dead_letters WHERE topic = 'teltonika/356307042441013'"
        )
        .await,
        1
    );

    // UDP: same port; the answer echoes the ids and counts the records.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let packet = te_packet(&[(t0 + chrono::TimeDelta::seconds(60), 10.96, 106.71, 20)]);
    let avl = &packet[8..packet.len() - 4];
    let mut d = Vec::new();
    let body_len = 2 + 1 + 1 + 2 + imei.len() + avl.len();
    d.extend_from_slice(&(body_len as u16).to_be_bytes());
    d.extend_from_slice(&0xcafeu16.to_be_bytes());
    d.push(0x01);
    d.push(0x07);
    d.extend_from_slice(&(imei.len() as u16).to_be_bytes());
    d.extend_from_slice(imei.as_bytes());
    d.extend_from_slice(avl);
    sock.send_to(&d, at).await.unwrap();
    let mut ans = [0u8; 64];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut ans))
        .await
        .expect("UDP answer")
        .unwrap();
    assert_eq!(&ans[..n], &[0, 5, 0xca, 0xfe, 0x01, 0x07, 1]);
    assert_eq!(
        count(&db, "SELECT count(*) FROM fixes WHERE vehicle_id = 'GW-TE'").await,
        5
    );

    // OsmAnd: 200 after the commit, 400 for a request without a position (kept),
    // 403 for an unknown device.
    let os = addr(&app, "osmand");
    let t = t0 + chrono::TimeDelta::seconds(90);
    let q = format!(
        "/?id=phone-7&timestamp={}&lat=10.99&lon=106.66&speed=10&bearing=45",
        t.timestamp()
    );
    let (code, _) = http_get(os, &q).await;
    assert_eq!(code, 200);
    assert_eq!(stored_at(&db, "GW-OS", t).await, 1);
    let speed: f64 = fleetwatch::store::connect(&db)
        .await
        .unwrap()
        .query_one(
            "SELECT speed_kmh::float8 FROM fixes WHERE vehicle_id = 'GW-OS'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!((speed - 18.52).abs() < 0.01, "10 knots: {speed}");
    let (code, body) = http_get(os, "/?id=phone-7&lat=abc").await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = http_get(os, &q.replace("phone-7", "phone-unknown")).await;
    assert_eq!(code, 403);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM dead_letters WHERE topic LIKE 'osmand@%'"
        )
        .await,
        1
    );
    app.shutdown();
    app.wait().await;
}

/// A plain HTTP/1.1 GET without a token; the status code and body.
async fn http_get(at: SocketAddr, path: &str) -> (u16, String) {
    let r = crate::api::http(at, "GET", path, None, None).await;
    (r.status, r.body)
}

/// Registers and authenticates `phone` on a new connection to `at`.
async fn jt_login(at: SocketAddr, phone: &str) -> (TcpStream, Vec<u8>) {
    let e = jt808::Edition::V2013;
    let mut s = TcpStream::connect(at).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(&jt808::encode(jt808::REGISTER, e, phone, 1, &jt_register()))
        .await
        .unwrap();
    let (_, body) = jt_reply_body(&read_frame(&mut s, &mut buf, jt808::scan).await);
    s.write_all(&jt808::encode(jt808::AUTH, e, phone, 2, &body[3..]))
        .await
        .unwrap();
    let (_, body) = jt_reply_body(&read_frame(&mut s, &mut buf, jt808::scan).await);
    assert_eq!(body[4], 0, "authenticated");
    (s, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_commit_before_the_reply_the_terminal_resends_and_its_fix_is_stored_once()
{
    let db = fresh_db().await;
    let dir = std::env::temp_dir().join(format!("fleetwatch-gw-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = fleetwatch::infra::broker::free_port().unwrap();
    let config = dir.join("fleetwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{db}\"\ndata_dir = \"{d}\"\n[embedded_broker]\nport = 0\n\
             [mqtt]\nclient_id = \"fw-gw-kill\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [batch]\nmax_wait_ms = 20\n\
             [gateway]\njt808_auth_secret = \"kill test\"\n[gateway.jt808]\nlisten = \"127.0.0.1:{port}\"\n\
             [[vehicles]]\nid = \"GW-K\"\ncooperative = \"{COOP}\"\nclass = \"container\"\ndevice_id = \"013900000001\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let at: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let phone = "013900000001";
    let e = jt808::Edition::V2013;
    let t0 = base_time();
    let (l1, l2) = (t0, t0 + chrono::TimeDelta::seconds(30));

    // 1. Aborts right after its first commit (the position), before the reply.
    let first = Instance::start(&config, Some(1));
    let (mut s, _) = jt_login(at, phone).await;
    s.write_all(&jt808::encode(
        jt808::LOCATION,
        e,
        phone,
        3,
        &jt_location(l1, 10.9, 106.6, 20.0),
    ))
    .await
    .unwrap();
    assert!(closed(&mut s).await, "no reply: the process died first");
    let status = tokio::task::spawn_blocking(move || {
        let mut first = first;
        first.child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(!status.success(), "fault injection aborted it: {status}");
    assert_eq!(
        stored_at(&db, "GW-K", l1).await,
        1,
        "committed before the abort"
    );

    // 2. Restarted: the terminal logs in with the same code, resends the unanswered
    // position and goes on; each position is stored once.
    let second = Instance::start(&config, None);
    let (mut s, mut buf) = jt_login(at, phone).await;
    for (serial, t) in [(3u16, l1), (4, l2)] {
        s.write_all(&jt808::encode(
            jt808::LOCATION,
            e,
            phone,
            serial,
            &jt_location(t, 10.9, 106.6, 20.0),
        ))
        .await
        .unwrap();
        let (id, body) = jt_reply_body(&read_frame(&mut s, &mut buf, jt808::scan).await);
        assert_eq!((id, body[4]), (jt808::PLATFORM_RESPONSE, 0));
    }
    assert_eq!(
        stored_at(&db, "GW-K", l1).await,
        1,
        "the resent position once"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM fixes WHERE vehicle_id = 'GW-K'").await,
        2
    );
    second.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_keeps_its_time_zone_and_the_device_list_its_history_across_a_restart() {
    let db = fresh_db().await;
    let mut cfg = gateway_settings(&db, "", "fw-gw-model");
    cfg.gateway
        .model_utc_offsets
        .insert("FW-M7".into(), 7 * 3600);
    let phone = "013912345678";
    let e = jt808::Edition::V2013;
    let t0 = base_time();

    // Registers (model FW-M7, set to GMT+7) and reports in its local time.
    let app = start_app(cfg.clone()).await;
    let (mut s, mut buf) = jt_login(addr(&app, "jt808"), phone).await;
    let body = jt_location_at(t0, 7 * 3600, 10.9, 106.6, 20.0);
    s.write_all(&jt808::encode(jt808::LOCATION, e, phone, 3, &body))
        .await
        .unwrap();
    read_frame(&mut s, &mut buf, jt808::scan).await;
    assert_eq!(stored_at(&db, "GW-JT", t0).await, 1, "GMT+7 of its model");
    // Its code, as a terminal keeps it.
    let code = {
        let mut r = TcpStream::connect(addr(&app, "jt808")).await.unwrap();
        let mut b = Vec::new();
        r.write_all(&jt808::encode(jt808::REGISTER, e, phone, 1, &jt_register()))
            .await
            .unwrap();
        let (_, body) = jt_reply_body(&read_frame(&mut r, &mut b, jt808::scan).await);
        body[3..].to_vec()
    };
    drop(s);
    app.shutdown();
    app.wait().await;

    // After a restart it only authenticates: the model it registered with still sets
    // its time zone, and the list still knows it.
    let app = start_app(cfg).await;
    let mut s = TcpStream::connect(addr(&app, "jt808")).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(&jt808::encode(jt808::AUTH, e, phone, 2, &code))
        .await
        .unwrap();
    let (_, body) = jt_reply_body(&read_frame(&mut s, &mut buf, jt808::scan).await);
    assert_eq!(body[4], 0, "authenticated without registering");
    let t1 = t0 + chrono::TimeDelta::seconds(30);
    let body = jt_location_at(t1, 7 * 3600, 10.9, 106.6, 20.0);
    s.write_all(&jt808::encode(jt808::LOCATION, e, phone, 4, &body))
        .await
        .unwrap();
    read_frame(&mut s, &mut buf, jt808::scan).await;
    assert_eq!(
        stored_at(&db, "GW-JT", t1).await,
        1,
        "still GMT+7 after the restart"
    );
    let list = app_devices(&app).await;
    let d = list
        .iter()
        .find(|d| d["device_id"] == phone)
        .expect("listed");
    assert_eq!(d["model"], "FW-M7");
    assert_eq!(
        d["connections"], 4,
        "two logins and two registrations, over both runs"
    );
    assert_eq!(d["positions"], 2);
    app.shutdown();
    app.wait().await;
}
