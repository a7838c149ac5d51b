//! Part of the demo fleet reports as real devices would, over real sockets to the
//! gateway: one vehicle each through GT06, JT/T 808, Teltonika and OsmAnd (HTTP); the
//! rest publishes to MQTT.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::domain::Vehicle;
use crate::sim::devices::{self as enc, DeviceFix, Imei, Jt808Phone};
use crate::sim::SimFix;
use crate::sources::device::{jt808, Scan};
use crate::sources::gateway::JT808_DEFAULT_UTC_OFFSET_S;

/// A protocol and the device id a demo vehicle reports under.
#[derive(Debug, Clone, Copy)]
struct Assignment {
    vehicle: &'static str,
    protocol: &'static str,
    device_id: &'static str,
}

/// Which demo vehicles report through which protocol: vehicles without a driver card
/// incident in the script (GT06, JT/T 808 and Teltonika do not carry the driver here).
const ASSIGNMENTS: [Assignment; 4] = [
    Assignment {
        vehicle: "61C-518.03",
        protocol: "gt06",
        device_id: "860000000051803",
    },
    Assignment {
        vehicle: "61C-207.45",
        protocol: "jt808",
        device_id: "013900020745",
    },
    Assignment {
        vehicle: "61C-330.12",
        protocol: "teltonika",
        device_id: "350000000033012",
    },
    Assignment {
        vehicle: "61B-052.31",
        protocol: "osmand",
        device_id: "demo-61B-052-31",
    },
];

/// Fits the demo vehicles that report as devices with their device ids.
pub fn fit_devices(fleet: &mut [Vehicle]) {
    for v in fleet {
        if let Some(a) = ASSIGNMENTS.iter().find(|a| a.vehicle == v.id.as_str()) {
            v.device_id = Some(a.device_id.to_string());
        }
    }
}

/// The device connections of the demo.
pub struct Devices {
    by_vehicle: HashMap<&'static str, mpsc::Sender<DeviceFix>>,
    /// Fixes handed to the devices.
    pub sent: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
    /// What runs where, for the banner.
    pub summary: Vec<String>,
}

impl Devices {
    /// Starts a device for every assignment whose protocol's listener runs.
    pub fn start(listening: &[(&'static str, SocketAddr)]) -> Self {
        let mut by_vehicle = HashMap::new();
        let mut tasks = Vec::new();
        let mut summary = Vec::new();
        let sent = Arc::new(AtomicU64::new(0));
        for a in ASSIGNMENTS {
            let Some((_, addr)) = listening.iter().find(|(p, _)| *p == a.protocol) else {
                continue;
            };
            let (tx, rx) = mpsc::channel(1024);
            by_vehicle.insert(a.vehicle, tx);
            tasks.push(tokio::spawn(drive(a, *addr, rx)));
            summary.push(format!("{} via {} {addr}", a.vehicle, a.protocol));
        }
        Self {
            by_vehicle,
            sent,
            tasks,
            summary,
        }
    }

    /// Sends `f` through its vehicle's device; false when the vehicle uses MQTT.
    pub async fn send(&self, f: &SimFix) -> bool {
        let Some(tx) = self.by_vehicle.get(f.vehicle.as_str()) else {
            return false;
        };
        let Some(fix) = device_fix(f) else {
            return false;
        };
        if tx.send(fix).await.is_ok() {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Closes the devices once they have written what they were given.
    pub async fn finish(self) {
        drop(self.by_vehicle);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// The device's view of a simulated fix (from its canonical JSON payload).
fn device_fix(f: &SimFix) -> Option<DeviceFix> {
    let v: serde_json::Value = serde_json::from_slice(&f.payload).ok()?;
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    Some(DeviceFix {
        ts: f.ts,
        lat: num("lat")?,
        lon: num("lon")?,
        speed_kmh: num("speed_kmh").unwrap_or(0.0),
        heading_deg: num("heading_deg").unwrap_or(0.0),
        ignition: v.get("ignition").and_then(serde_json::Value::as_bool) == Some(true),
        satellites: num("satellites").unwrap_or(8.0).clamp(0.0, 255.0) as u8,
        odometer_m: num("odometer_m"),
    })
}

/// One device: connects, logs in, writes each fix as its protocol frames it (replies
/// are read and dropped: the gateway sends them after the commit); reconnects after
/// an error. OsmAnd sends one HTTP request per fix and waits for its 200.
async fn drive(a: Assignment, addr: SocketAddr, mut rx: mpsc::Receiver<DeviceFix>) {
    let mut serial: u16 = 0;
    let mut next = || {
        serial = serial.wrapping_add(1);
        serial
    };
    let mut pending: Option<DeviceFix> = None;
    loop {
        let Some(fix) = pending.take().or(rx.recv().await) else {
            return;
        };
        if a.protocol == "osmand" {
            if let Err(e) = osmand(addr, a.device_id, &fix).await {
                tracing::warn!(device = a.device_id, error = %e, "demo phone: request failed; retrying");
                pending = Some(fix);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            continue;
        }
        let mut s = match login(a, addr, &mut next).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(device = a.device_id, protocol = a.protocol, error = %e, "demo device: login failed; retrying");
                pending = Some(fix);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (mut rd, mut wr) = s.split();
        let drain = async {
            let mut b = [0u8; 512];
            while matches!(rd.read(&mut b).await, Ok(n) if n > 0) {}
        };
        let write = async {
            let mut fix = Some(fix);
            loop {
                let f = match fix.take() {
                    Some(f) => f,
                    None => match rx.recv().await {
                        Some(f) => f,
                        None => return None,
                    },
                };
                let frame = match encode(a, &f, next()) {
                    Some(b) => b,
                    None => continue,
                };
                if wr.write_all(&frame).await.is_err() {
                    return Some(f);
                }
            }
        };
        tokio::select! {
            lost = write => match lost {
                Some(f) => pending = Some(f),
                None => {
                    // Give the gateway time to store and answer the last frames.
                    let _ = wr.shutdown().await;
                    return;
                }
            },
            _ = drain => {}
        }
    }
}

fn encode(a: Assignment, f: &DeviceFix, serial: u16) -> Option<Vec<u8>> {
    match a.protocol {
        "gt06" => Some(enc::gt06_position(f, serial)),
        "jt808" => {
            let phone = Jt808Phone::new(a.device_id).ok()?;
            Some(enc::jt808_location(
                &phone,
                f,
                JT808_DEFAULT_UTC_OFFSET_S,
                serial,
            ))
        }
        "teltonika" => enc::teltonika_packet(std::slice::from_ref(f)).ok(),
        _ => None,
    }
}

/// Connects and logs in as the protocol requires.
async fn login(
    a: Assignment,
    addr: SocketAddr,
    next: &mut impl FnMut() -> u16,
) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    match a.protocol {
        "gt06" => {
            let imei = Imei::new(a.device_id)?;
            s.write_all(&enc::gt06_login(&imei, next())).await?;
            let mut b = [0u8; 10];
            s.read_exact(&mut b).await?;
        }
        "teltonika" => {
            let imei = Imei::new(a.device_id)?;
            s.write_all(&enc::teltonika_imei(&imei)).await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            anyhow::ensure!(b == [1], "IMEI refused");
        }
        "jt808" => {
            let phone = Jt808Phone::new(a.device_id)?;
            s.write_all(&enc::jt808_register(&phone, "DEMO1", None, next())?)
                .await?;
            let reply = read_jt808(&mut s).await?;
            let code = enc::jt808_auth_code(&reply)
                .ok_or_else(|| anyhow::anyhow!("registration refused"))?;
            s.write_all(&enc::jt808_auth(&phone, &code, next())?)
                .await?;
            let reply = read_jt808(&mut s).await?;
            anyhow::ensure!(reply.body.get(4) == Some(&0), "authentication refused");
        }
        other => anyhow::bail!("no TCP login for {other}"),
    }
    Ok(s)
}

async fn read_jt808(s: &mut TcpStream) -> anyhow::Result<jt808::Frame> {
    let mut buf = Vec::new();
    let mut b = [0u8; 256];
    loop {
        if let Scan::Frame(n) = jt808::scan(&buf) {
            return Ok(jt808::parse(&buf[..n])?);
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await??;
        anyhow::ensure!(n > 0, "connection closed");
        buf.extend_from_slice(&b[..n]);
    }
}

/// One position as Traccar Client sends it; Ok once answered 200.
async fn osmand(addr: SocketAddr, device: &str, f: &DeviceFix) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "POST /?{} HTTP/1.1\r\nHost: fleetwatch\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        enc::osmand_query(device, f)
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await??;
    anyhow::ensure!(
        out.starts_with(b"HTTP/1.1 200"),
        "answered {:?}",
        String::from_utf8_lossy(&out[..out.len().min(40)])
    );
    Ok(())
}
