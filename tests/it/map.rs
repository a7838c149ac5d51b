//! The map page: its files and `/api/v1/geo` over real HTTP, then the page itself in
//! headless Chromium (driven through chromedriver's WebDriver API) against the real
//! `fleetwatch demo` binary: it loads without errors, vehicles appear, a click opens a
//! vehicle's panel, a replay plays. The screenshot is kept in `target/artefacts/map.png`.
//! Then the dispatcher's console: a violation announced and acknowledged, a bus on a
//! scheduled trip (its trip and delay in its panel, its route's stops at street zoom),
//! and vehicles grouped at one spot and markers moved (the canvas's pixels checked).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetwatch::api::auth::{create_token, Role};
use fleetwatch::domain::{CooperativeId, Vehicle, VehicleClass, VehicleId};
use fleetwatch::infra::broker::{free_port, EmbeddedBroker};
use serde_json::{json, Value};

use crate::support::*;

/// A response: status, lower-cased head, body.
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(str::trim)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request per connection (the API and chromedriver both speak it);
/// panics after a minute rather than hang the suite.
/// The live list as the page gets it (`auth`: the Authorization header's value).
async fn vehicles(addr: SocketAddr, auth: &str) -> Value {
    request(
        addr,
        "GET",
        "/api/v1/vehicles",
        &[("Authorization", auth)],
        None,
    )
    .await
    .json()
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Resp {
    tokio::time::timeout(
        Duration::from_secs(60),
        request_now(addr, method, path, headers, body),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer to {method} {path} within 60 s"))
}

async fn request_now(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Resp {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).await.unwrap();
    // Read by Content-Length: chromedriver says "Connection: close" but waits for the
    // client to close.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let (split, head) = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break (i, String::from_utf8_lossy(&raw[..i]).to_ascii_lowercase());
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before a complete head");
        raw.extend_from_slice(&buf[..n]);
    };
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let rest = &raw[split + 4..];
        let done = match length {
            Some(n) => rest.len() >= n,
            None if chunked => rest.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let rest = &raw[split + 4..];
    let status = head[9..12].parse().unwrap();
    let body = if chunked {
        dechunk(rest)
    } else {
        rest[..length.unwrap_or(rest.len()).min(rest.len())].to_vec()
    };
    Resp { status, head, body }
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = s.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = std::str::from_utf8(&s[..eol]).unwrap();
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&s[eol + 2..eol + 2 + n]);
        s = &s[eol + 2 + n + 2..];
    }
}

fn route_ids(fc: &Value) -> Vec<String> {
    fc["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["properties"]["layer"] == "route")
        .map(|f| f["properties"]["route_id"].as_str().unwrap().to_string())
        .collect()
}

fn zone_count(fc: &Value) -> usize {
    fc["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["properties"]["layer"] == "zone")
        .count()
}

fn bus(id: &str, coop: &str, route: &str) -> Vehicle {
    Vehicle {
        id: VehicleId::parse(id).unwrap(),
        plate: None,
        cooperative: CooperativeId::parse(coop).unwrap(),
        class: VehicleClass::Bus,
        route: Some(route.into()),
        device_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_files_are_served_with_types_and_cache_headers_and_geo_is_scoped() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-map-files");
    s.disable_rules = true;
    s.geo.demo = true;
    s.http.map_tile_url = "https://tiles.example/{z}/{x}/{y}.png".into();
    s.vehicles = vec![bus("A-1", "HTX-A", "BD-01"), bus("B-1", "HTX-B", "BD-03")];
    let app = start_app(s).await;
    let addr = app.http_addr;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let coop_a = create_token(&c, Role::Cooperative, Some("HTX-A"), None)
        .await
        .unwrap();
    let regulator = create_token(&c, Role::Regulator, None, None).await.unwrap();

    // The page: HTML, revalidated, with a CSP that allows only this server's scripts.
    let page = request(addr, "GET", "/map", &[], None).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("script-src 'self'"));
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(html.contains("/map/static/map.js") && html.contains("leaflet-1.9.4/leaflet.js"));
    let etag = page.header("etag").unwrap().to_string();
    let again = request(addr, "GET", "/map", &[("If-None-Match", &etag)], None).await;
    assert_eq!(again.status, 304, "unchanged page: not modified");
    assert!(again.body.is_empty());

    // Our own files revalidate; Leaflet's versioned files are cached for good.
    let js = request(addr, "GET", "/map/static/map.js", &[], None).await;
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(js.header("cache-control"), Some("no-cache"));
    assert!(String::from_utf8_lossy(&js.body).contains("window.fleetwatch"));
    for (path, ty) in [
        ("/map/static/map.css", "text/css; charset=utf-8"),
        (
            "/map/static/leaflet-1.9.4/leaflet.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/map/static/leaflet-1.9.4/leaflet.css",
            "text/css; charset=utf-8",
        ),
        ("/map/static/leaflet-1.9.4/images/layers.png", "image/png"),
    ] {
        let r = request(addr, "GET", path, &[], None).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ty), "{path}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        if path.contains("leaflet-1.9.4") {
            assert_eq!(
                r.header("cache-control"),
                Some("public, max-age=31536000, immutable"),
                "{path}"
            );
        }
    }
    let png = request(
        addr,
        "GET",
        "/map/static/leaflet-1.9.4/images/layers.png",
        &[],
        None,
    )
    .await;
    assert_eq!(&png.body[..8], b"\x89PNG\r\n\x1a\n", "the bytes of a PNG");
    for missing in [
        "/map/static/nope.js",
        "/map/static/../Cargo.toml",
        "/map/static/leaflet-1.9.4/leaflet.js.map",
    ] {
        let r = request(addr, "GET", missing, &[], None).await;
        assert_eq!(r.status, 404, "{missing}");
    }

    // The page's settings come from [http] and [rules].
    let cfg = request(addr, "GET", "/map/config.json", &[], None)
        .await
        .json();
    assert_eq!(cfg["tile_url"], "https://tiles.example/{z}/{x}/{y}.png");
    assert!(cfg["tile_attribution"]
        .as_str()
        .unwrap()
        .contains("OpenStreetMap"));
    assert_eq!(cfg["utc_offset"], "+07:00");

    // Routes and zones: a token is needed; a cooperative sees its own routes only.
    let none = request(addr, "GET", "/api/v1/geo", &[], None).await;
    assert_eq!(none.status, 401);
    let auth_a = format!("Bearer {coop_a}");
    let a = request(
        addr,
        "GET",
        "/api/v1/geo",
        &[("Authorization", &auth_a)],
        None,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/geo+json"));
    let a = a.json();
    assert_eq!(route_ids(&a), ["BD-01"]);
    assert_eq!(zone_count(&a), 9);
    let auth_r = format!("Bearer {regulator}");
    let all = request(
        addr,
        "GET",
        "/api/v1/geo",
        &[("Authorization", &auth_r)],
        None,
    )
    .await
    .json();
    assert_eq!(route_ids(&all), ["BD-01", "BD-02", "BD-03", "BD-04"]);
    assert_eq!(zone_count(&all), 9);
    let first = &all["features"][0]["geometry"]["coordinates"][0];
    let (lon, lat) = (first[0].as_f64().unwrap(), first[1].as_f64().unwrap());
    assert!(
        (106.0..107.5).contains(&lon) && (10.0..12.0).contains(&lat),
        "lon/lat order: {first}"
    );

    // Documented.
    let doc = request(addr, "GET", "/api/v1/openapi.json", &[], None)
        .await
        .json();
    assert!(doc["paths"]["/api/v1/geo"]["get"].is_object());

    app.shutdown();
    app.wait().await;
}

// ---- the page in a browser -------------------------------------------------------

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// W3C WebDriver's key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A child process (and its process group) killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // Chromium's helpers share chromedriver's group: none may outlive the test.
        let pgid = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A chromedriver on a free port and one headless Chromium session.
struct Browser {
    addr: SocketAddr,
    session: String,
    _driver: Proc,
    _profile: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    async fn start() -> Browser {
        for (bin, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing (Debian package {package}): the map test needs the \
                 Debian packages chromium and chromium-driver \
                 (apt-get install -y chromium chromium-driver; scripts/test installs them)"
            );
        }
        let port = free_port().unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let driver = Proc(driver);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && request(addr, "GET", "/status", &[], None).await.json()["value"]["ready"] == true
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver not ready in 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile =
            std::env::temp_dir().join(format!("fleetwatch-chromium-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        // As root Chromium needs --no-sandbox; the rest keeps it off the (closed) network.
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,800".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let r = request(addr, "POST", "/session", &[], Some(&caps)).await;
        let v = r.json();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        Browser {
            addr,
            session,
            _driver: driver,
            _profile: TempDir(profile),
        }
    }

    /// A WebDriver command of this session; panics on a WebDriver error.
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        let r = request(self.addr, method, &full, &[], body.as_ref()).await;
        let v = r.json();
        assert!(
            r.status == 200,
            "WebDriver {method} {path}: {} {v}",
            r.status
        );
        v["value"].clone()
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn js(&self, script: &str) -> Value {
        self.js_with(script, json!([])).await
    }

    /// Runs `script` with `arguments` = `args`.
    async fn js_with(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Polls `script` until it returns true; panics with `what` and the page's errors.
    async fn wait_for(&self, what: &str, timeout: Duration, script: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                let state = self.js(
                    "return window.fleetwatch ? [fleetwatch.errors(), fleetwatch.requestErrors()] : 'no fleetwatch object'",
                ).await;
                panic!("timed out waiting for: {what}; page errors: {state}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click_css(&self, css: &str) {
        let e = self
            .cmd(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        let id = e[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {e}"))
            .to_string();
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})))
            .await;
    }

    /// A real mouse click at page coordinates (CSS pixels of the viewport).
    async fn click_at(&self, x: i64, y: i64) {
        let actions = json!({ "actions": [{
            "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" },
            "actions": [
                { "type": "pointerMove", "duration": 0, "origin": "viewport", "x": x, "y": y },
                { "type": "pointerDown", "button": 0 },
                { "type": "pointerUp", "button": 0 },
            ]
        }]});
        self.cmd("POST", "/actions", Some(actions)).await;
    }

    async fn screenshot(&self, to: &Path) {
        let b64 = self.cmd("GET", "/screenshot", None).await;
        let png = base64_decode(b64.as_str().unwrap());
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
    }

    /// Console errors and failed loads Chromium logged (level SEVERE).
    async fn severe_logs(&self) -> Vec<String> {
        let logs = self
            .cmd("POST", "/se/log", Some(json!({ "type": "browser" })))
            .await;
        logs.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or("").to_string())
            .collect()
    }

    async fn quit(self) {
        let path = format!("/session/{}", self.session);
        let _ = request(self.addr, "DELETE", &path, &[], None).await;
    }
}

/// Standard base64 (WebDriver screenshots), padding allowed.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= u32::from(val(c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// `fleetwatch demo` (the real binary) on the test's database; killed on drop.
struct Demo {
    child: Proc,
    map_url: String,
}

impl Demo {
    fn start(db: &str, dir: &Path) -> Demo {
        let config = dir.join("fleetwatch.toml");
        // No tiles: the network is closed; the page must be useful without them.
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = \"{db}\"\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\nmap_tile_url = \"\"\n\
                 [embedded_broker]\nport = 0\n[mqtt]\nclient_id = \"fw-map-demo\"\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
            .args(["demo", "--config"])
            .arg(&config)
            // One hour of history in about 6 s, then real time; it stops by itself.
            .args(["--history-h", "1", "--speed", "600", "--duration-s", "300"])
            .env("RUST_LOG", "warn,rumqttd=off")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("fleetwatch binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("map: ") {
                    let _ = tx.send(Ok(url.trim().to_string()));
                }
                if seen.len() < 50 {
                    seen.push(line);
                }
            }
            let _ = tx.send(Err(seen.join("\n")));
        });
        let child = Proc(child);
        let map_url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(url)) => url,
            Ok(Err(out)) => panic!("the demo ended without a map URL:\n{out}"),
            Err(e) => panic!("no map URL from the demo within 60 s: {e}"),
        };
        Demo { child, map_url }
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.child.0.wait().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_page_in_headless_chromium_shows_the_demo_fleet_and_replays_a_track() {
    let db = fresh_db().await;
    let dir = std::env::temp_dir().join(format!("fleetwatch-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let demo = Demo::start(&db, &dir);
    let (_, token) = demo.map_url.split_once("#token=").expect("a token");
    assert_eq!(token.len(), 64, "{}", demo.map_url);

    let auth = format!("Bearer {token}");
    let page_addr: SocketAddr = demo.map_url["http://".len()..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The demo replays its hour of history in about 6 s: open the page once it has
    // caught up with the clock, as a person would find it.
    wait_until("the demo caught up", Duration::from_secs(90), || {
        let auth = auth.clone();
        async move {
            let list = vehicles(page_addr, &auth).await;
            let recent = chrono::Utc::now() - chrono::TimeDelta::minutes(3);
            let vehicles = list["vehicles"].as_array().unwrap();
            vehicles.len() == 8
                && vehicles.iter().all(|v| {
                    v["position"]["ts"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .is_some_and(|t| t > recent)
                })
        }
    })
    .await;
    eprintln!(
        "map test: demo up, {}",
        demo.map_url.split('#').next().unwrap()
    );
    let browser = Browser::start().await;
    eprintln!("map test: browser session {}", browser.session);
    browser
        .cmd("POST", "/url", Some(json!({ "url": demo.map_url })))
        .await;

    // Loads: routes and zones drawn, the token taken out of the address bar.
    browser
        .wait_for(
            "routes and zones drawn",
            Duration::from_secs(30),
            "return !!window.fleetwatch && fleetwatch.geoFeatureCount() === 13",
        )
        .await;
    let url = browser.cmd("GET", "/url", None).await;
    assert!(
        !url.as_str().unwrap().contains("token"),
        "the token left the address bar: {url}"
    );

    eprintln!("map test: page loaded");
    // Vehicles appear, all eight of the demo fleet, with the count in the bar.
    browser
        .wait_for(
            "the demo fleet on the map",
            Duration::from_secs(60),
            "return fleetwatch.vehicleCount() === 8",
        )
        .await;
    let counts = browser
        .js("return document.getElementById('counts').textContent")
        .await;
    assert!(
        counts.as_str().unwrap().starts_with("8 vehicles"),
        "{counts}"
    );

    // Click the moving vehicle farthest from any other (the click must hit it alone).
    let pick = "const ids = fleetwatch.vehicleIds();
        const pts = ids.map((id) => [id, fleetwatch.vehiclePoint(id)]).filter(([, p]) => p);
        const moving = new Set(arguments[0]);
        let best = null, bestD = -1;
        for (const [id, p] of pts) {
          let d = Infinity;
          for (const [o, q] of pts) if (o !== id) d = Math.min(d, Math.hypot(p.x - q.x, p.y - q.y));
          if (moving.has(id)) d += 1e6;
          if (d > bestD) { best = [id, p.x, p.y]; bestD = d; }
        }
        return best;";
    // Which vehicles are moving: from the API, as the page sees it.
    let list = vehicles(page_addr, &auth).await;
    let moving: Vec<&str> = list["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["status"] == "moving")
        .map(|v| v["vehicle_id"].as_str().unwrap())
        .collect();
    let mut clicked = None;
    for _ in 0..3 {
        let best = browser.js_with(pick, json!([moving])).await;
        let id = best[0].as_str().unwrap().to_string();
        browser
            .click_at(best[1].as_i64().unwrap(), best[2].as_i64().unwrap())
            .await;
        let sel = browser.js("return fleetwatch.selected()").await;
        if sel.as_str() == Some(id.as_str()) {
            clicked = Some(id);
            break;
        }
        eprintln!("map test: clicked {best}, selected {sel}; again");
        // It may have moved between the look and the click: look again.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let id = clicked.expect("clicking a vehicle's marker selects it");
    browser
        .wait_for(
            "the vehicle panel",
            Duration::from_secs(5),
            &format!(
                "return !document.getElementById('vehicle-panel').hidden
                   && document.getElementById('vehicle-title').textContent === {:?}
                   && document.getElementById('vehicle-details').textContent.includes('km/h')",
                id
            ),
        )
        .await;

    eprintln!("map test: {id} selected");
    // Replay its last hour at 300x: the slider moves on its own, and the marker more
    // than 100 m (0.001 degrees).
    browser.click_css("#vehicle-replay").await;
    browser
        .wait_for(
            "the track loaded",
            Duration::from_secs(15),
            "return fleetwatch.replay.length > 10 && !document.getElementById('replay-play').disabled",
        )
        .await;
    browser.click_css("#replay-speed option[value='300']").await;
    let start = browser
        .js("window.replayStart = fleetwatch.replay.position; return fleetwatch.replay.index")
        .await;
    assert_eq!(start, 0, "a loaded track starts at its first fix");
    browser.click_css("#replay-play").await;
    assert_eq!(browser.js("return fleetwatch.replay.playing").await, true);
    browser
        .wait_for(
            "the replay to advance",
            Duration::from_secs(20),
            "const r = fleetwatch.replay, p = r.position, s = window.replayStart;
             return r.playing && r.index > 5
               && Number(document.getElementById('replay-slider').value) > 0
               && Math.hypot(p[0] - s[0], p[1] - s[1]) > 0.001",
        )
        .await;
    let mid = browser
        .js("return [fleetwatch.replay.index, fleetwatch.replay.t]")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = browser
        .js("return [fleetwatch.replay.index, fleetwatch.replay.t, fleetwatch.replay.length]")
        .await;
    assert!(
        later[1].as_f64().unwrap() > mid[1].as_f64().unwrap(),
        "replay time runs on: {mid} then {later}"
    );
    let readout = browser
        .js("return document.getElementById('replay-readout').textContent")
        .await;
    assert!(
        readout.as_str().unwrap().contains("km/h"),
        "time and speed shown: {readout}"
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("artefacts/map.png");
    browser.screenshot(&shot).await;
    eprintln!("screenshot: {}", shot.display());

    // No script errors, failed requests or console errors all along.
    let errs = browser
        .js("return [fleetwatch.errors(), fleetwatch.requestErrors()]")
        .await;
    assert_eq!(errs, json!([[], []]), "page errors");
    assert_eq!(
        browser.severe_logs().await,
        Vec::<String>::new(),
        "console errors"
    );
    browser.quit().await;
    let status = tokio::task::spawn_blocking(move || demo.stop())
        .await
        .unwrap();
    assert!(status.success(), "the demo stops cleanly: {status}");
}

// ---- the dispatcher's console ------------------------------------------------------

/// A fix of the console's bus, with its driver, `i`-th along an eastward line.
fn console_fix(ts: chrono::DateTime<chrono::Utc>, i: i64, speed_kmh: f64) -> (String, Vec<u8>) {
    let body = format!(
        r#"{{"vehicle":"51B-777.01","ts":"{}","lat":10.97,"lon":{:.6},"speed_kmh":{speed_kmh},"driver_id":"079000000777","ignition":true,"satellites":9,"hdop":0.9}}"#,
        ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        106.65 + i as f64 * 2e-4
    );
    (topic("HTX-C", "51B-777.01"), body.into_bytes())
}

/// `h:mm:ss` as the console shows durations, in seconds.
fn hms_s(s: &str) -> i64 {
    let p: Vec<i64> = s.split(':').map(|x| x.trim().parse().unwrap()).collect();
    assert_eq!(p.len(), 3, "h:mm:ss: {s}");
    p[0] * 3600 + p[1] * 60 + p[2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium_announces_a_violation_acknowledges_it_and_counts_down() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let dir = std::env::temp_dir().join(format!("fleetwatch-console-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let port = free_port().unwrap();
    let config = dir.join("fleetwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nurl = \"{}\"\nclient_id = \"fw-console\"\n\
             [database]\nurl = \"{db}\"\ndata_dir = \"{}\"\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\nmap_tile_url = \"\"\n\
             [batch]\nmax_wait_ms = 20\n\
             [[vehicles]]\nid = \"51B-777.01\"\ncooperative = \"HTX-C\"\nclass = \"bus\"\n",
            broker.url(),
            dir.join("data").display()
        ),
    )
    .unwrap();
    let _app = Instance::start(&config, None);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let token = create_token(&c, Role::Cooperative, Some("HTX-C"), Some("console test"))
        .await
        .unwrap();

    // The bus has been driving for two minutes at 40 km/h.
    let now = chrono::Utc::now();
    let at = |s: i64| now + chrono::TimeDelta::seconds(s);
    let drive: Vec<_> = (0..=16)
        .map(|i| console_fix(at(-120 + 5 * i), i, 40.0))
        .collect();
    publish_all(&broker.url(), &drive).await;

    let browser = Browser::start().await;
    let url = format!("http://{addr}/map#token={token}");
    browser
        .cmd("POST", "/url", Some(json!({ "url": url })))
        .await;
    browser
        .wait_for(
            "the stream's snapshot with the bus",
            Duration::from_secs(30),
            "return !!window.fleetwatch && fleetwatch.live() && fleetwatch.vehicleCount() === 1",
        )
        .await;
    // Its panel: driver, continuous driving, time left before 4 h, today, counting down.
    let p = browser
        .js("return fleetwatch.vehiclePoint('51B-777.01')")
        .await;
    browser
        .click_at(p["x"].as_i64().unwrap(), p["y"].as_i64().unwrap())
        .await;
    browser
        .wait_for(
            "the bus's panel with its driving time",
            Duration::from_secs(10),
            "const x = document.querySelector('#vehicle-details [data-field=\"continuous-left\"]');
             return !!x && /^\\d+:\\d\\d:\\d\\d$/.test(x.textContent)",
        )
        .await;
    let details = browser
        .js("return document.getElementById('vehicle-details').textContent")
        .await;
    assert!(
        details.as_str().unwrap().contains("079000000777"),
        "the driver: {details}"
    );
    let left = "return document.querySelector('#vehicle-details [data-field=\"continuous-left\"]').textContent";
    let first = hms_s(browser.js(left).await.as_str().unwrap());
    assert!(
        (14_400 - 200..14_400 - 60).contains(&first),
        "about 4 h less two minutes left: {first}"
    );
    // Redrawn every second: 3 s later it shows at least 2 s less.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = hms_s(browser.js(left).await.as_str().unwrap());
    assert!(
        second <= first - 2,
        "the time left counts down while it drives: {first} then {second}"
    );

    // 35 s at 95 km/h (the bus limit is 70): an overspeed violation. It is on the page,
    // announced, within 2 s of the fixes that caused it.
    let fast: Vec<_> = (0..=7)
        .map(|i| console_fix(at(-35 + 5 * i), 17 + i, 95.0))
        .collect();
    publish_all(&broker.url(), &fast).await;
    let published = Instant::now();
    browser
        .wait_for(
            "the violation announced",
            Duration::from_secs(10),
            "return !!document.querySelector('#alert-list li.violation.announced')",
        )
        .await;
    let took = published.elapsed();
    eprintln!("console test: violation on the page {took:?} after its fixes were published");
    assert!(
        took < Duration::from_secs(2),
        "on the page within 2 s: {took:?}"
    );
    let alert_id = browser
        .js("return document.querySelector('#alert-list li.violation.announced').dataset.alert")
        .await
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        browser.js("return fleetwatch.announced()").await,
        json!([alert_id])
    );
    let counts = browser
        .js("return document.getElementById('violations').textContent")
        .await;
    assert!(
        counts.as_str().unwrap().contains("1 overspeed"),
        "the fleet summary: {counts}"
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("artefacts/console.png");
    browser.screenshot(&shot).await;
    eprintln!("screenshot: {}", shot.display());

    // Acknowledged from the page: the reminder log has it, the page shows it.
    browser
        .js("document.getElementById('ack-by').value = 'Lan (dispatch)'; return true")
        .await;
    browser
        .click_css("#alert-list li.announced button.ack")
        .await;
    let db2 = db.clone();
    let id2 = alert_id.clone();
    wait_until(
        "the acknowledgement in the reminder log",
        Duration::from_secs(10),
        || {
            let (db, id) = (db2.clone(), id2.clone());
            async move {
                count(
                    &db,
                    &format!(
                        "SELECT count(*) FROM reminder_log WHERE alert_id = '{id}'
                     AND status = 'acknowledged' AND actor = 'Lan (dispatch)'"
                    ),
                )
                .await
                    == 1
            }
        },
    )
    .await;
    browser
        .wait_for(
            "acknowledged on the page",
            Duration::from_secs(5),
            &format!(
                "const li = document.querySelector('#alert-list li[data-alert=\"{alert_id}\"]');
                 return !!li && !li.classList.contains('announced') && !!li.querySelector('.ack-done')"
            ),
        )
        .await;

    let errs = browser
        .js("return [fleetwatch.errors(), fleetwatch.requestErrors()]")
        .await;
    assert_eq!(errs, json!([[], []]), "page errors");
    browser.quit().await;
}

// ---- a bus on a scheduled trip -------------------------------------------------

/// A bus of a GTFS route running its trip about 3 min late (tests/it/transit.rs's
/// feed and run): its panel shows the trip, next stop and delay; the route's stops are
/// drawn at zoom 15 (their names at 17), not at 12; `/api/v1/stops` is scoped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium_shows_a_late_bus_trip_and_its_stops() {
    use crate::transit::{bus_run, write_feed, LAT};
    use chrono::Timelike;
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let base = base_time() - chrono::Duration::minutes(30);
    let local = base + chrono::Duration::hours(7);
    let feed = std::env::temp_dir().join(format!("fw-it-map-trip-{}", std::process::id()));
    let _feed = TempDir(feed.clone());
    write_feed(&feed, i64::from(local.num_seconds_from_midnight()));
    let mut s = settings(&db, &broker.url(), "fw-map-trip");
    s.geo.gtfs = vec![feed.clone()];
    s.http.map_tile_url = String::new();
    s.vehicles = vec![bus("51B-111.11", "HTX-T", "L1"), {
        let mut b = bus("51B-999.99", "HTX-Z", "L1");
        b.route = None;
        b
    }];
    let app = start_app(s).await;
    let addr = app.http_addr;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    let token = create_token(&c, Role::Cooperative, Some("HTX-T"), None)
        .await
        .unwrap();
    let other = create_token(&c, Role::Cooperative, Some("HTX-Z"), None)
        .await
        .unwrap();

    // The stops of L1 for its cooperative, none for one without a vehicle on it.
    let stops = request(
        addr,
        "GET",
        "/api/v1/stops",
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    )
    .await;
    assert_eq!(stops.status, 200);
    assert_eq!(stops.header("content-type"), Some("application/geo+json"));
    let fc = stops.json();
    let ids: Vec<&str> = fc["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["properties"]["stop_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["S0", "S1", "S2", "S3", "S4", "S5"]);
    assert_eq!(fc["features"][3]["properties"]["name"], "Stop 3");
    assert_eq!(fc["features"][3]["properties"]["route_ids"], json!(["L1"]));
    let theirs = request(
        addr,
        "GET",
        "/api/v1/stops",
        &[("Authorization", &format!("Bearer {other}"))],
        None,
    )
    .await
    .json();
    assert_eq!(theirs["features"], json!([]), "another cooperative's stops");

    // The bus up to between S2 and S3, about 3 min late.
    let t = topic("HTX-T", "51B-111.11");
    let run: Vec<(String, Vec<u8>)> = bus_run(base + chrono::Duration::minutes(3), 0)
        .into_iter()
        .take(24 + 60)
        .map(|(ts, lon, v)| (t.clone(), fix("51B-111.11", ts, LAT, lon, v)))
        .collect();
    publish_all(&broker.url(), &run).await;
    let live_trip = "SELECT count(*) FROM vehicles
                     WHERE vehicle_id = '51B-111.11' AND live_trip_id = 'T1' AND live_delay_s > 0";
    wait_until("the bus's live trip", Duration::from_secs(30), || {
        let db = db.clone();
        async move { count(&db, live_trip).await == 1 }
    })
    .await;

    let browser = Browser::start().await;
    let url = format!("http://{addr}/map#token={token}");
    browser
        .cmd("POST", "/url", Some(json!({ "url": url })))
        .await;
    browser
        .wait_for(
            "the bus and the stops loaded",
            Duration::from_secs(30),
            "return !!window.fleetwatch && fleetwatch.live() && fleetwatch.vehicleCount() === 1
               && fleetwatch.stopsLoaded() === 6",
        )
        .await;
    // Framed on the 5.5 km route: below street zoom, no stops drawn.
    let zoom = browser
        .js("return fleetwatch.zoom()")
        .await
        .as_f64()
        .unwrap();
    assert!(zoom < 15.0, "{zoom}");
    assert_eq!(browser.js("return fleetwatch.stopsDrawn()").await, 0);

    let p = browser
        .js("return fleetwatch.vehiclePoint('51B-111.11')")
        .await;
    browser
        .click_at(p["x"].as_i64().unwrap(), p["y"].as_i64().unwrap())
        .await;
    let field = |name: &str| {
        format!("const x = document.querySelector('#vehicle-details [data-field=\"{name}\"]'); return x ? x.textContent : null")
    };
    browser
        .wait_for(
            "the bus's panel with its trip",
            Duration::from_secs(10),
            &format!("return (() => {{ {} }})() !== null", field("trip")),
        )
        .await;
    assert_eq!(browser.js(&field("trip")).await, "T1 · route L1");
    assert_eq!(browser.js(&field("next-stop")).await, "Stop 3");
    let delay = browser.js(&field("delay")).await;
    assert!(
        ["3 min late", "2 min late"].contains(&delay.as_str().unwrap()),
        "about 3 min late: {delay}"
    );
    // No headsign in the feed: no row for it.
    assert_eq!(browser.js(&field("headsign")).await, Value::Null);

    // Zoomed in with the map's own control: stops from 15, names from 17; out again
    // to 12: gone.
    for (want, stops_drawn, labels) in [(15.0, 6, false), (17.0, 6, true), (12.0, 0, false)] {
        let css = if want > zoom {
            ".leaflet-control-zoom-in"
        } else {
            ".leaflet-control-zoom-out"
        };
        for _ in 0..8 {
            let z = browser
                .js("return fleetwatch.zoom()")
                .await
                .as_f64()
                .unwrap();
            if (want > zoom && z >= want) || (want < zoom && z <= want) {
                break;
            }
            browser.click_css(css).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        browser
            .wait_for(
                &format!("{stops_drawn} stops drawn at zoom {want}"),
                Duration::from_secs(5),
                &format!(
                    "const z = fleetwatch.zoom();
                     return ({want} > {zoom} ? z >= {want} : z <= {want})
                       && fleetwatch.stopsDrawn() === {stops_drawn}
                       && fleetwatch.stopLabelsShown() === {labels}"
                ),
            )
            .await;
        // At 15 the stops either side of the bus are in view (at 17 they are off it).
        if stops_drawn > 0 && !labels {
            let shot = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .unwrap()
                .join("artefacts/console-trip.png");
            browser.screenshot(&shot).await;
            eprintln!("screenshot: {}", shot.display());
        }
    }

    let errs = browser
        .js("return [fleetwatch.errors(), fleetwatch.requestErrors()]")
        .await;
    assert_eq!(errs, json!([[], []]), "page errors");
    assert_eq!(
        browser.severe_logs().await,
        Vec::<String>::new(),
        "console errors"
    );
    browser.quit().await;
    app.shutdown();
    app.wait().await;
}

// ---- vehicles at one spot ------------------------------------------------------------

/// Four vehicles written as the writer does (the stream poller sends what changed): two
/// at one spot share a marker (the count as its label, the most urgent status as its
/// colour; a click lists both, a link opens one's panel), one leaving the group gets
/// its own marker again, a vehicle moving on alone takes its marker along (the same
/// Leaflet layer, drawn at the new place, nothing left at the old), and the fleet
/// summary follows every status change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium_groups_vehicles_at_one_spot_and_moves_markers() {
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-map-spots");
    s.http.map_tile_url = String::new();
    let app = start_app(s).await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    // The corners of a 2 km square; B stopped, the others moving.
    c.batch_execute(
        "INSERT INTO vehicles (vehicle_id, cooperative_id, plate, class, registered,
                               last_seen, last_fix_ts, last_lat, last_lon, last_speed_kmh,
                               last_heading_deg)
         VALUES ('V-A', 'HTX-G', '61B-000.0A', 'bus', true, now(), now(), 10.80, 106.50, 35, 0),
                ('V-B', 'HTX-G', '61B-000.0B', 'bus', true, now(), now(), 10.80, 106.52, 0, 0),
                ('V-C', 'HTX-G', '61B-000.0C', 'bus', true, now(), now(), 10.82, 106.50, 35, 0),
                ('V-D', 'HTX-G', '61B-000.0D', 'bus', true, now(), now(), 10.82, 106.52, 35, 0)",
    )
    .await
    .unwrap();
    let token = create_token(&c, Role::Cooperative, Some("HTX-G"), None)
        .await
        .unwrap();
    let set = |id: &'static str, lat: f64, lon: f64, speed: f32| {
        let c = &c;
        async move {
            c.execute(
                "UPDATE vehicles SET last_seen = now(), last_fix_ts = now(), last_lat = $2,
                        last_lon = $3, last_speed_kmh = $4
                 WHERE vehicle_id = $1",
                &[&id, &lat, &lon, &speed],
            )
            .await
            .unwrap();
        }
    };

    let browser = Browser::start().await;
    let url = format!("http://{}/map#token={token}", app.http_addr);
    browser
        .cmd("POST", "/url", Some(json!({ "url": url })))
        .await;
    browser
        .wait_for(
            "four vehicles on four markers",
            Duration::from_secs(30),
            "return !!window.fleetwatch && fleetwatch.live() && fleetwatch.vehicleCount() === 4
               && fleetwatch.markerCount() === 4",
        )
        .await;
    let counts = "return document.getElementById('counts').textContent";
    assert_eq!(
        browser.js(counts).await,
        "4 vehicles · 3 moving · 1 stopped"
    );
    // The canvas pixel at a place (RGBA), and at a vehicle's marker.
    let pixel = "const [lat, lon] = arguments;
        const c = document.querySelector('.leaflet-overlay-pane canvas');
        const r = c.getBoundingClientRect();
        const p = fleetwatch.pagePoint(lat, lon);
        const x = Math.round((p.x - r.left) * c.width / r.width);
        const y = Math.round((p.y - r.top) * c.height / r.height);
        return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data);";
    const MOVING: [u8; 4] = [0x1a, 0x96, 0x41, 255];
    const STOPPED: [u8; 4] = [0x2b, 0x83, 0xba, 255];
    const EMPTY: [u8; 4] = [0, 0, 0, 0];
    let wait_pixel = |what: &'static str, lat: f64, lon: f64, rgba: [u8; 4]| {
        let browser = &browser;
        async move {
            browser
                .wait_for(
                    what,
                    Duration::from_secs(10),
                    &format!(
                        "return JSON.stringify((function () {{ {pixel} }}).apply(null, [{lat}, {lon}]))
                           === {:?}",
                        serde_json::to_string(&rgba).unwrap()
                    ),
                )
                .await;
        }
    };
    wait_pixel("B drawn stopped", 10.80, 106.52, STOPPED).await;
    wait_pixel("C drawn moving", 10.82, 106.50, MOVING).await;

    // B joins A: one marker for both, counted, in the colour of the more urgent status.
    set("V-B", 10.80, 106.50, 0.0).await;
    browser
        .wait_for(
            "A and B on one marker",
            Duration::from_secs(10),
            "const m = fleetwatch.vehicleMarker('V-B');
             return fleetwatch.markerCount() === 3 && !!m && m.ids.join() === 'V-A,V-B'",
        )
        .await;
    let group = browser.js("return fleetwatch.vehicleMarker('V-A')").await;
    assert_eq!(group["label"], "2 vehicles", "{group}");
    assert_eq!(
        group["color"], "#1a9641",
        "moving wins over stopped: {group}"
    );
    assert_eq!(group["radius"], 9, "{group}");
    wait_pixel("B's old place cleared", 10.80, 106.52, EMPTY).await;
    assert_eq!(
        browser.js(counts).await,
        "4 vehicles · 3 moving · 1 stopped"
    );

    // A click on the group lists both; B's link opens B's panel.
    let p = browser.js("return fleetwatch.vehiclePoint('V-A')").await;
    browser
        .click_at(p["x"].as_i64().unwrap(), p["y"].as_i64().unwrap())
        .await;
    browser
        .wait_for(
            "the group's popup",
            Duration::from_secs(5),
            "const x = document.querySelector('.leaflet-popup .spot');
             return !!x && x.textContent.includes('2 vehicles here')
               && x.querySelectorAll('a.spot-vehicle').length === 2",
        )
        .await;
    browser
        .js("[...document.querySelectorAll('a.spot-vehicle')].find((a) => a.textContent === 'V-B').click();
             return true")
        .await;
    browser
        .wait_for(
            "B's panel",
            Duration::from_secs(5),
            "return fleetwatch.selected() === 'V-B'
               && document.getElementById('vehicle-title').textContent === 'V-B'",
        )
        .await;

    // B drives off to an empty place: a marker of its own, its panel follows; A's marker
    // is A's alone again.
    set("V-B", 10.81, 106.515, 40.0).await;
    browser
        .wait_for(
            "B on its own marker at its new place",
            Duration::from_secs(10),
            "const m = fleetwatch.vehicleMarker('V-B');
             return fleetwatch.markerCount() === 4 && !!m && m.ids.join() === 'V-B'
               && m.lat === 10.81 && m.lon === 106.515
               && document.getElementById('vehicle-details').textContent.includes('10.81000, 106.51500')",
        )
        .await;
    let a = browser.js("return fleetwatch.vehicleMarker('V-A')").await;
    assert_eq!(a["label"], "61B-000.0A", "{a}");
    assert_eq!(a["radius"], 6, "{a}");
    assert_eq!(browser.js(counts).await, "4 vehicles · 4 moving");
    wait_pixel("B drawn at its new place", 10.81, 106.515, MOVING).await;

    // C moves on alone: its marker goes with it (the same layer), drawn there and gone
    // from where it was; then it stops, and the summary and its colour follow.
    let before = browser.js("return fleetwatch.vehicleMarker('V-C')").await;
    set("V-C", 10.815, 106.505, 35.0).await;
    browser
        .wait_for(
            "C's marker at its new place",
            Duration::from_secs(10),
            "const m = fleetwatch.vehicleMarker('V-C');
             return !!m && m.lat === 10.815 && m.lon === 106.505",
        )
        .await;
    let after = browser.js("return fleetwatch.vehicleMarker('V-C')").await;
    assert_eq!(
        after["id"], before["id"],
        "moved, not replaced: {before} {after}"
    );
    assert_eq!(browser.js("return fleetwatch.markerCount()").await, 4);
    wait_pixel("C drawn at its new place", 10.815, 106.505, MOVING).await;
    wait_pixel("C's old place cleared", 10.82, 106.50, EMPTY).await;
    set("V-C", 10.815, 106.505, 0.0).await;
    browser
        .wait_for(
            "C stopped in the summary",
            Duration::from_secs(10),
            "return document.getElementById('counts').textContent
               === '4 vehicles · 3 moving · 1 stopped'",
        )
        .await;
    wait_pixel("C drawn stopped", 10.815, 106.505, STOPPED).await;

    let errs = browser
        .js("return [fleetwatch.errors(), fleetwatch.requestErrors()]")
        .await;
    assert_eq!(errs, json!([[], []]), "page errors");
    assert_eq!(
        browser.severe_logs().await,
        Vec::<String>::new(),
        "console errors"
    );
    browser.quit().await;
    app.shutdown();
    app.wait().await;
}

// ---- page work per stream update (measured by hand, never in CI) -----------------

/// Page work per `update` event of the stream with 10,000 vehicles on the map, 1 %,
/// 10 % and 100 % of them moved per update (rows updated as the writer does, as
/// `benches/stream.rs`). Prints, per share, the update size and the page's reading of
/// the event off the stream, JSON parse, apply and canvas redraw (recording and making
/// the pixels: `countRaster`) (median, p95, max), the
/// total of the last three (as first measured) and of all four. A measurement, not a check:
/// `cargo test --test it page_work_per_update -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (BENCHMARKS.md), run by hand"]
async fn page_work_per_update_at_10000_vehicles() {
    const N: i64 = 10_000;
    const SECONDS: i64 = 12;
    let broker = EmbeddedBroker::start(0).unwrap();
    let db = fresh_db().await;
    let mut s = settings(&db, &broker.url(), "fw-map-load");
    s.http.map_tile_url = String::new();
    let app = start_app(s).await;
    let c = fleetwatch::store::connect(&db).await.unwrap();
    // A 100 × 100 grid 330 m apart (one marker each), driving figures as the writer
    // keeps them.
    c.batch_execute(&format!(
        "INSERT INTO vehicles (vehicle_id, cooperative_id, plate, class, registered,
                               last_seen, last_fix_ts, last_lat, last_lon, last_speed_kmh,
                               last_heading_deg, last_driver_id, live_as_of_ts, live_driver_id,
                               live_driver_since_ts, live_moving, live_continuous_s,
                               live_last_drive_end_ts, live_day, live_daily_s, live_weekly_s)
         SELECT 'V-' || v, 'HTX-' || (v % 20), '61B-' || v, 'bus', true, now(), now(),
                10.8 + (v / 100) * 0.003, 106.5 + (v % 100) * 0.003, 35, 0, 'D-' || v,
                now(), 'D-' || v, now() - interval '2 h', true, 7200, now(),
                (now() AT TIME ZONE '+07')::date, 7200, 30000
         FROM generate_series(0, {} - 1) v;
         ANALYZE vehicles;",
        N
    ))
    .await
    .unwrap();
    let token = create_token(&c, Role::Regulator, None, Some("load"))
        .await
        .unwrap();

    let browser = Browser::start().await;
    let url = format!("http://{}/map#token={token}", app.http_addr);
    browser
        .cmd("POST", "/url", Some(json!({ "url": url })))
        .await;
    browser
        .wait_for(
            "10,000 vehicles on the map",
            Duration::from_secs(120),
            &format!("return !!window.fleetwatch && fleetwatch.live() && fleetwatch.vehicleCount() === {N}"),
        )
        .await;
    // The redraw with the canvas's pixels made (not only its drawing recorded).
    browser
        .js("fleetwatch.countRaster(true); return true")
        .await;

    for pct in [1_i64, 10, 100] {
        let every = 100 / pct;
        let before = browser
            .js("return fleetwatch.timings().updates")
            .await
            .as_i64()
            .unwrap();
        // Each second a different `pct` % moves 11 m north.
        for k in 0..SECONDS {
            let t = Instant::now();
            c.execute(
                "UPDATE vehicles SET last_seen = now(), last_fix_ts = now(),
                        last_lat = last_lat + 1e-4, live_as_of_ts = now(),
                        live_continuous_s = live_continuous_s + 1
                 WHERE substr(vehicle_id, 3)::int8 % $1 = $2",
                &[&every, &(k % every)],
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_secs(1).saturating_sub(t.elapsed())).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let t = browser.js("return fleetwatch.timings()").await;
        let log: Vec<&Value> = t["updateLog"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .take((t["updates"].as_i64().unwrap() - before) as usize)
            .filter(|e| !e["drawMs"].is_null())
            .collect();
        assert!(
            log.len() as i64 >= SECONDS / 2,
            "{pct} %: {} updates in {SECONDS} s",
            log.len()
        );
        let stat = |key: &str| {
            let mut v: Vec<f64> = log.iter().map(|e| e[key].as_f64().unwrap()).collect();
            v.sort_by(f64::total_cmp);
            let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
            (at(0.5), at(0.95), v[v.len() - 1])
        };
        let (n, _, _) = stat("vehicles");
        assert!(
            n >= (N * pct / 100) as f64 * 0.9,
            "{pct} %: {n} vehicles per update"
        );
        let total = |keys: &[&str]| {
            let mut v: Vec<f64> = log
                .iter()
                .map(|e| keys.iter().map(|k| e[*k].as_f64().unwrap()).sum())
                .collect();
            v.sort_by(f64::total_cmp);
            let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
            (at(0.5), at(0.95), v[v.len() - 1])
        };
        let f = |(a, b, c): (f64, f64, f64)| format!("{a:.1} / {b:.1} / {c:.1}");
        println!(
            "{pct:>3} % moved: {} updates, {n:.0} vehicles each (median); ms median / p95 / max: \
             read {}, parse {}, apply {}, redraw {}, total {}, with read {}",
            log.len(),
            f(stat("readMs")),
            f(stat("parseMs")),
            f(stat("applyMs")),
            f(stat("drawMs")),
            f(total(&["parseMs", "applyMs", "drawMs"])),
            f(total(&["readMs", "parseMs", "applyMs", "drawMs"]))
        );
    }
    let errs = browser
        .js("return [fleetwatch.errors(), fleetwatch.requestErrors()]")
        .await;
    assert_eq!(errs, json!([[], []]), "page errors");
    browser.quit().await;
    app.shutdown();
    app.wait().await;
}
