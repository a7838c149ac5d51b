//! The device gateway: listeners for journey monitors (GT06, JT/T 808 and Teltonika
//! over TCP, Teltonika over UDP) and phones (OsmAnd over HTTP). Each connection logs
//! in with its device id, which the registry maps to a vehicle; its frames become
//! deliveries for the pipeline, and the device's reply to a frame goes out only once
//! what the frame carried (fixes, or their dead letters) is committed.
//!
//! Limits per listener: connections; per connection: idle time, bytes buffered,
//! frames per second (throttled, not dropped), replies waiting for commits (reading
//! stops until they are sent). A full pipeline stops the reads: backpressure reaches
//! the devices, which keep their data.

mod http;
mod session;
mod tcp;
mod udp;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::{CooperativeId, Vehicle, VehicleId};
use crate::pipeline::delivery::{Ack, Body, Delivery};

/// One listener's address and the time zone its devices send.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Listen address (`0.0.0.0:5023`); unset: the listener is off.
    pub listen: Option<SocketAddr>,
    /// Offset from UTC of the times the devices send, seconds; unset: the protocol's
    /// (UTC, GMT+8 for JT/T 808). A device listed in `gateway.utc_offsets` uses its own.
    pub utc_offset_s: Option<i32>,
}

/// Offset of JT/T 808 terminals' times unless configured: the standard's GMT+8.
pub const JT808_DEFAULT_UTC_OFFSET_S: i32 = 8 * 3600;

/// What to do with a device whose id no vehicle of the registry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownDevices {
    /// Refuse the login and close the connection (counted and listed).
    Refuse,
    /// Accept it as an unregistered vehicle named after the device id, in
    /// `gateway.unknown_cooperative`.
    Accept,
}

/// The `[gateway]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Concox GT06 over TCP (devices' default port 5023). Devices send UTC.
    pub gt06: ListenerConfig,
    /// JT/T 808 over TCP (5015). Terminals send local time: GMT+8 in the standard.
    pub jt808: ListenerConfig,
    /// Teltonika over TCP and UDP on the same port (5027). Units send UTC.
    pub teltonika: ListenerConfig,
    /// OsmAnd / Traccar Client over HTTP (5055). Phones send UTC.
    pub osmand: ListenerConfig,
    /// Devices the registry does not know.
    pub unknown_devices: UnknownDevices,
    /// Cooperative of unknown devices accepted as unregistered vehicles.
    pub unknown_cooperative: String,
    /// Time zone of single devices configured to send another one: device id →
    /// offset from UTC, seconds.
    pub utc_offsets: BTreeMap<String, i32>,
    /// Time zone of every device of a model (as a JT/T 808 terminal names its model
    /// when it registers): model → offset from UTC, seconds. A device's own entry in
    /// `utc_offsets` wins.
    pub model_utc_offsets: BTreeMap<String, i32>,
    /// Open connections per listener; one more is closed at once.
    pub max_connections: usize,
    /// A connection without a frame for this long is closed, seconds (devices send
    /// heartbeats every 1–5 minutes).
    pub idle_timeout_s: u64,
    /// Bytes buffered per connection for a frame not yet whole: over it, the bytes
    /// are kept as a dead letter and the connection closed.
    pub max_buffer_bytes: usize,
    /// Frames read per second per connection; faster senders are throttled.
    pub max_frames_per_s: u32,
    /// Frames of one connection waiting for their commit; reading pauses at this many.
    pub max_pending_frames: usize,
    /// Secret from which JT/T 808 auth codes are derived (HMAC of the terminal's phone
    /// number), so a code survives restarts and needs no table; unset: a random one
    /// kept in `database.data_dir`/jt808-auth.secret.
    pub jt808_auth_secret: Option<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            gt06: ListenerConfig::default(),
            jt808: ListenerConfig::default(),
            teltonika: ListenerConfig::default(),
            osmand: ListenerConfig::default(),
            unknown_devices: UnknownDevices::Refuse,
            unknown_cooperative: "unassigned".into(),
            utc_offsets: BTreeMap::new(),
            model_utc_offsets: BTreeMap::new(),
            max_connections: 20_000,
            idle_timeout_s: 600,
            max_buffer_bytes: 16 * 1024,
            max_frames_per_s: 50,
            max_pending_frames: 64,
            jt808_auth_secret: None,
        }
    }
}

impl GatewayConfig {
    /// Whether any listener is configured.
    pub fn any(&self) -> bool {
        [&self.gt06, &self.jt808, &self.teltonika, &self.osmand]
            .iter()
            .any(|l| l.listen.is_some())
    }
}

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A listen address could not be bound.
    #[error("{protocol} listener on {addr}: {source}")]
    Bind {
        /// Protocol of the listener.
        protocol: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The JT/T 808 secret file could not be read or written.
    #[error("JT/T 808 auth secret {path}: {source}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `unknown_cooperative` is not a valid cooperative id.
    #[error("gateway.unknown_cooperative: {0}")]
    Cooperative(crate::domain::IdError),
}

/// Whose a device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The device id (IMEI, terminal phone number, app id).
    pub device_id: String,
    /// Its vehicle.
    pub vehicle: VehicleId,
    /// The vehicle's cooperative.
    pub cooperative: CooperativeId,
    /// The registry carries the device (else: accepted as unregistered).
    pub registered: bool,
}

/// Device id → vehicle, from the registry.
#[derive(Debug, Default)]
pub struct Directory {
    by_device: HashMap<String, (VehicleId, CooperativeId)>,
}

impl Directory {
    /// The registered vehicles' devices.
    pub fn new(registry: &[Vehicle]) -> Self {
        let by_device = registry
            .iter()
            .filter_map(|v| {
                let d = v.device_id.as_deref()?;
                Some((d.to_string(), (v.id.clone(), v.cooperative.clone())))
            })
            .collect();
        Self { by_device }
    }
}

pub use crate::store::devices::DeviceStatus;

/// The devices the gateway has heard (loaded from the database at start, saved back
/// every few seconds).
#[derive(Debug, Default)]
pub struct DeviceBook {
    devices: Mutex<HashMap<(&'static str, String), Entry>>,
}

/// A device and whether it changed since it was last saved.
#[derive(Debug)]
struct Entry {
    status: DeviceStatus,
    dirty: bool,
}

impl DeviceBook {
    /// A book holding `stored` devices.
    pub fn with(stored: Vec<DeviceStatus>) -> Self {
        let devices = stored
            .into_iter()
            .map(|status| {
                let key = (status.protocol, status.device_id.clone());
                (
                    key,
                    Entry {
                        status,
                        dirty: false,
                    },
                )
            })
            .collect();
        Self {
            devices: Mutex::new(devices),
        }
    }

    /// Every device, by protocol and id; only those of `cooperative` when given
    /// (refused devices belong to no cooperative: listed to unscoped callers only).
    pub fn list(&self, cooperative: Option<&str>) -> Vec<DeviceStatus> {
        let map = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<DeviceStatus> = map
            .values()
            .map(|e| &e.status)
            .filter(|d| cooperative.is_none() || d.cooperative.as_deref() == cooperative)
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.protocol, &a.device_id).cmp(&(b.protocol, &b.device_id)));
        out
    }

    /// The model `device_id` reported, if it ever did.
    fn model(&self, protocol: &'static str, device_id: &str) -> Option<String> {
        let map = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(protocol, device_id.to_string()))
            .and_then(|e| e.status.model.clone())
    }

    fn update(&self, protocol: &'static str, device_id: &str, f: impl FnOnce(&mut DeviceStatus)) {
        let mut map = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(&(protocol, device_id.to_string())) {
            f(&mut e.status);
            e.dirty = true;
        }
    }

    /// A frame of a logged-in device, carrying `positions` positions.
    fn heard(&self, protocol: &'static str, device_id: &str, positions: usize) {
        self.update(protocol, device_id, |d| {
            d.frames += 1;
            d.positions += positions as i64;
            d.last_frame = Some(Utc::now());
        });
    }

    /// The devices changed since the last call (marked saved).
    fn take_changed(&self) -> Vec<DeviceStatus> {
        let mut map = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        map.values_mut()
            .filter(|e| e.dirty)
            .map(|e| {
                e.dirty = false;
                e.status.clone()
            })
            .collect()
    }

    /// Marks `devices` changed again (their save failed).
    fn mark_changed(&self, devices: &[DeviceStatus]) {
        let mut map = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        for d in devices {
            if let Some(e) = map.get_mut(&(d.protocol, d.device_id.clone())) {
                e.dirty = true;
            }
        }
    }

    fn login(
        &self,
        protocol: &'static str,
        device_id: &str,
        who: Option<&Identity>,
        remote: SocketAddr,
    ) {
        let mut map = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        let e = map
            .entry((protocol, device_id.to_string()))
            .or_insert_with(|| Entry {
                status: DeviceStatus {
                    protocol,
                    device_id: device_id.to_string(),
                    vehicle: None,
                    cooperative: None,
                    status: "refused",
                    connected: false,
                    remote: String::new(),
                    last_connection: now,
                    last_frame: None,
                    connections: 0,
                    frames: 0,
                    positions: 0,
                    model: None,
                    firmware: None,
                },
                dirty: true,
            });
        e.dirty = true;
        let d = &mut e.status;
        d.vehicle = who.map(|w| w.vehicle.to_string());
        d.cooperative = who.map(|w| w.cooperative.to_string());
        d.status = match who {
            Some(w) if w.registered => "registered",
            Some(_) => "unregistered",
            None => "refused",
        };
        d.connected = who.is_some();
        d.remote = remote.to_string();
        d.last_connection = now;
        d.connections += 1;
    }
}

/// Seconds between saves of the device book.
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Saves the book's changes every few seconds, and once more at `stop`.
async fn save_devices(db_url: String, book: Arc<DeviceBook>, stop: CancellationToken) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(SAVE_EVERY);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        // After the stop, the connections' last frames: give them a moment.
        if last {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let changed = book.take_changed();
        if !changed.is_empty() {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = crate::store::connect(&db_url).await.ok();
            }
            let saved = match client.as_mut() {
                Some(c) => crate::store::devices::save(c, &changed)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("database unreachable".to_string()),
            };
            if let Err(e) = saved {
                tracing::warn!(error = %e, devices = changed.len(), "device list not saved; retrying");
                book.mark_changed(&changed);
                client = None;
            }
        }
        if last {
            return;
        }
    }
}

/// What every connection of the gateway shares.
pub(crate) struct Shared {
    cfg: GatewayConfig,
    unknown_cooperative: CooperativeId,
    directory: watch::Receiver<Arc<Directory>>,
    book: Arc<DeviceBook>,
    tx: mpsc::Sender<Delivery>,
    stop: CancellationToken,
    jt808_secret: Vec<u8>,
}

impl Shared {
    /// Maps a device id to its vehicle, or refuses it (`None`), by the registry and
    /// the unknown-device policy; records the login.
    fn identify(
        &self,
        protocol: &'static str,
        device_id: &str,
        remote: SocketAddr,
    ) -> Option<Identity> {
        let known = self.directory.borrow().by_device.get(device_id).cloned();
        let who = match known {
            Some((vehicle, cooperative)) => Some(Identity {
                device_id: device_id.to_string(),
                vehicle,
                cooperative,
                registered: true,
            }),
            None if self.cfg.unknown_devices == UnknownDevices::Accept => {
                VehicleId::parse(device_id).ok().map(|vehicle| Identity {
                    device_id: device_id.to_string(),
                    vehicle,
                    cooperative: self.unknown_cooperative.clone(),
                    registered: false,
                })
            }
            None => None,
        };
        let outcome = match &who {
            Some(w) if w.registered => "registered",
            Some(_) => "unregistered",
            None => "refused",
        };
        metrics::counter!("fleetwatch_gateway_logins_total", "protocol" => protocol, "outcome" => outcome)
            .increment(1);
        if who.is_none() {
            tracing::warn!(
                protocol,
                device_id,
                %remote,
                "device refused: no vehicle of the registry carries this device id"
            );
        }
        self.book.login(protocol, device_id, who.as_ref(), remote);
        who
    }

    /// Offset from UTC of `device_id`'s times, seconds.
    fn utc_offset_s(
        &self,
        protocol: &'static str,
        device_id: Option<&str>,
        listener: &ListenerConfig,
        default: i32,
    ) -> i32 {
        let by_model = || {
            let model = self.book.model(protocol, device_id?)?;
            self.cfg.model_utc_offsets.get(&model).copied()
        };
        device_id
            .and_then(|d| self.cfg.utc_offsets.get(d).copied())
            .or_else(by_model)
            .or(listener.utc_offset_s)
            .unwrap_or(default)
    }
}

/// The running gateway.
pub struct Gateway {
    /// Where each listener listens (protocol, address), ports resolved.
    pub listening: Vec<(&'static str, SocketAddr)>,
    /// The devices heard.
    pub book: Arc<DeviceBook>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Binds the configured listeners and starts serving; deliveries go to `tx`.
    /// Stops accepting and reading at `stop`; connections finish sending the replies
    /// of what was committed.
    pub async fn start(
        cfg: &GatewayConfig,
        db_url: &str,
        data_dir: &Path,
        registry: watch::Receiver<Arc<Vec<Vehicle>>>,
        tx: mpsc::Sender<Delivery>,
        stop: CancellationToken,
    ) -> Result<Self, GatewayError> {
        let unknown_cooperative =
            CooperativeId::parse(&cfg.unknown_cooperative).map_err(GatewayError::Cooperative)?;
        let jt808_secret = match &cfg.jt808_auth_secret {
            Some(s) => s.as_bytes().to_vec(),
            None if cfg.jt808.listen.is_some() => secret(&data_dir.join("jt808-auth.secret"))?,
            None => Vec::new(),
        };
        let (dir_tx, dir_rx) = watch::channel(Arc::new(Directory::new(&registry.borrow())));
        let mut tasks = vec![tokio::spawn(follow_registry(
            registry,
            dir_tx,
            stop.clone(),
        ))];
        let stored = match crate::store::connect(db_url).await {
            Ok(c) => crate::store::devices::load(&c).await,
            Err(e) => Err(e),
        };
        let book = Arc::new(match stored {
            Ok(devices) => DeviceBook::with(devices),
            Err(e) => {
                tracing::warn!(error = %e, "stored device list not read: it starts empty");
                DeviceBook::default()
            }
        });
        tasks.push(tokio::spawn(save_devices(
            db_url.to_string(),
            book.clone(),
            stop.clone(),
        )));
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            unknown_cooperative,
            directory: dir_rx,
            book: book.clone(),
            tx,
            stop,
            jt808_secret,
        });
        let mut listening = Vec::new();
        let bind = |protocol: &'static str, addr: SocketAddr| {
            move |source| GatewayError::Bind {
                protocol,
                addr,
                source,
            }
        };
        let listeners = [
            (&cfg.gt06, session::Kind::Gt06),
            (&cfg.jt808, session::Kind::Jt808),
            (&cfg.teltonika, session::Kind::Teltonika),
            (&cfg.osmand, session::Kind::Osmand),
        ];
        for (listener, kind) in listeners {
            let Some(addr) = listener.listen else {
                continue;
            };
            let protocol = kind.name();
            let l = bind_tcp(addr).map_err(bind(protocol, addr))?;
            let local = l.local_addr().unwrap_or(addr);
            listening.push((protocol, local));
            match kind {
                session::Kind::Osmand => tasks.push(tokio::spawn(http::serve(l, shared.clone()))),
                _ => tasks.push(tokio::spawn(tcp::accept(l, shared.clone(), kind))),
            }
            if kind == session::Kind::Teltonika {
                // UDP on the same port as TCP, as units are configured.
                let u = tokio::net::UdpSocket::bind(local)
                    .await
                    .map_err(bind(protocol, local))?;
                tasks.push(tokio::spawn(udp::serve(u, shared.clone())));
            }
        }
        for (protocol, addr) in &listening {
            tracing::info!(protocol, %addr, "device listener up");
        }
        Ok(Self {
            listening,
            book,
            tasks,
        })
    }

    /// Address of `protocol`'s listener, if it runs.
    pub fn addr(&self, protocol: &str) -> Option<SocketAddr> {
        self.listening
            .iter()
            .find(|(p, _)| *p == protocol)
            .map(|(_, a)| *a)
    }

    /// Waits for the listeners and their connections to finish (after `stop`).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Pending connections a listener queues: after a restart every device reconnects at
/// once, and the default of 128 overflows into SYN retries of a second or more.
const ACCEPT_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with [`ACCEPT_BACKLOG`].
fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(ACCEPT_BACKLOG)
}

/// Rebuilds the device directory whenever the registry changes.
async fn follow_registry(
    mut registry: watch::Receiver<Arc<Vec<Vehicle>>>,
    tx: watch::Sender<Arc<Directory>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            r = registry.changed() => {
                if r.is_err() {
                    return;
                }
                let d = Directory::new(&registry.borrow_and_update());
                tx.send_replace(Arc::new(d));
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Reads the secret at `path`, or creates it (32 random bytes, hex, mode 0600).
fn secret(path: &Path) -> Result<Vec<u8>, GatewayError> {
    let err = |source| GatewayError::Secret {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes);
    let text = hex::encode(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    crate::infra::write_private(path, &text).map_err(err)?;
    Ok(text.into_bytes())
}

/// A delivery of `body` whose ack handle is a oneshot: the receiver resolves once the
/// writer has committed what `body` carries (dropped: not committed).
fn delivery(body: Body) -> (Delivery, tokio::sync::oneshot::Receiver<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let d = Delivery {
        body,
        received_at: Utc::now(),
        ack: Some(Ack::Device(tx)),
    };
    (d, rx)
}

/// Metric of a frame a connection could not use.
fn rejected(protocol: &'static str, reason: &'static str) {
    metrics::counter!("fleetwatch_gateway_rejects_total", "protocol" => protocol, "reason" => reason)
        .increment(1);
}
