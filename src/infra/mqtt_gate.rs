//! Credentials and topic ACLs for the embedded broker.
//!
//! rumqttd 0.20 checks a username/password at connect (a static map, or a hook that
//! sees client id, username and password) but has no topic ACLs: any client it lets
//! in may publish and subscribe to anything. So the embedded broker listens only on a
//! private loopback port that takes fleetwatch's own generated credential, and devices
//! connect to this gate, which authenticates them (hashed secrets), then relays their
//! packets to rumqttd, refusing what their ACL does not allow:
//! - a device credential (cooperative, optionally one vehicle) may publish only to the
//!   fix topics of its cooperative (vehicle), and subscribe only to the alert topics of
//!   its cooperative (vehicle) — no wildcards beyond the vehicle level, no `$share`;
//! - fleetwatch's own credential may do anything.
//!
//! Packets are framed and parsed by rumqttc's MQTT 3.1.1 codec (`mqttbytes`); frames
//! the ACL does not concern are relayed byte for byte. A refused QoS 1 publish is
//! acknowledged and dropped (MQTT 3.1.1 has no way to refuse one; Mosquitto does the
//! same); a SUBSCRIBE with any refused filter gets a failure SUBACK for all of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use chrono::{DateTime, Utc};
use rumqttc::mqttbytes::{self, v4, QoS};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::pipeline::topic::TopicPattern;

/// Username of fleetwatch's own clients on the embedded broker.
pub const INTERNAL_USER: &str = "fleetwatch-internal";

/// Largest packet the gate relays (rumqttd's own payload limit is 1 MiB).
const MAX_PACKET_BYTES: usize = 2 << 20;

/// Errors handling broker credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Reading or writing the credentials file failed.
    #[error("broker credentials file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The credentials file is not valid JSON of the expected shape.
    #[error("broker credentials file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A cooperative or vehicle id that cannot appear in a topic.
    #[error("{0}")]
    BadId(#[from] crate::domain::IdError),
}

/// A device's (or a cooperative's) credential; the secret is kept as SHA-256 only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCredential {
    /// MQTT username.
    pub username: String,
    /// Cooperative it belongs to.
    pub cooperative: String,
    /// The one vehicle it may publish for; `None`: any vehicle of the cooperative.
    pub vehicle: Option<String>,
    /// Hex SHA-256 of the password (a random 128-bit secret, so a fast hash suffices).
    pub password_sha256: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// The embedded broker's credentials: fleetwatch's own, and the devices'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerCredentials {
    /// Password of [`INTERNAL_USER`] (used by fleetwatch's own clients).
    pub internal_password: String,
    /// Device and cooperative credentials.
    #[serde(default)]
    pub devices: Vec<DeviceCredential>,
    #[serde(skip)]
    path: Option<PathBuf>,
}

/// `url` with fleetwatch's own credential of the embedded broker whose credentials are
/// in `data_dir`, when `url` has no username and points at this machine (what
/// `simulate` and `replay` use against a local fleetwatch); else `url` unchanged.
pub fn with_local_credentials(url: &str, data_dir: &Path) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return url.to_string();
    };
    let local = matches!(
        u.host_str(),
        Some("127.0.0.1" | "localhost" | "::1" | "[::1]")
    );
    if !u.username().is_empty() || !local {
        return url.to_string();
    }
    let Ok(bytes) = std::fs::read(credentials_path(data_dir)) else {
        return url.to_string();
    };
    let Ok(c) = serde_json::from_slice::<BrokerCredentials>(&bytes) else {
        return url.to_string();
    };
    if u.set_username(INTERNAL_USER).is_err() || u.set_password(Some(&c.internal_password)).is_err()
    {
        return url.to_string();
    }
    u.to_string()
}

/// The credentials file in a data directory.
pub fn credentials_path(data_dir: &Path) -> PathBuf {
    data_dir.join("mqtt-credentials.json")
}

fn random_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex(&b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

impl BrokerCredentials {
    /// Credentials held in memory only (a broker for one process, e.g. tests).
    pub fn ephemeral() -> Self {
        Self {
            internal_password: random_secret(),
            devices: Vec::new(),
            path: None,
        }
    }

    /// Reads `data_dir/mqtt-credentials.json`, creating it (mode 0600) with a fresh
    /// internal password at first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, CredentialsError> {
        let path = credentials_path(data_dir);
        let io = |source| CredentialsError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut c: Self =
                    serde_json::from_slice(&bytes).map_err(|source| CredentialsError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                c.path = Some(path);
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(io)?;
                let mut c = Self::ephemeral();
                c.path = Some(path);
                c.save()?;
                tracing::info!(path = %credentials_path(data_dir).display(), "generated the embedded broker's credentials");
                Ok(c)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Writes the file (mode 0600, replaced atomically).
    fn save(&self) -> Result<(), CredentialsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| CredentialsError::Io {
            path: path.clone(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let json = serde_json::to_vec_pretty(self).expect("credentials serialize");
        f.write_all(&json).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Adds a credential for `cooperative` (and only `vehicle`, if given); returns its
    /// username and password (shown once: only the hash is kept).
    pub fn create_device(
        &mut self,
        cooperative: &str,
        vehicle: Option<&str>,
    ) -> Result<(String, String), CredentialsError> {
        let coop = crate::domain::CooperativeId::parse(cooperative)?;
        let vehicle = vehicle
            .map(crate::domain::VehicleId::parse)
            .transpose()?
            .map(|v| v.to_string());
        let username = match &vehicle {
            Some(v) => format!("{coop}.{v}.{}", &random_secret()[..6]),
            None => format!("{coop}.{}", &random_secret()[..6]),
        };
        let password = random_secret();
        self.devices.push(DeviceCredential {
            username: username.clone(),
            cooperative: coop.to_string(),
            vehicle,
            password_sha256: sha256_hex(&password),
            created_at: Utc::now(),
        });
        self.save()?;
        Ok((username, password))
    }

    /// Removes the credential `username`; whether it existed.
    pub fn revoke(&mut self, username: &str) -> Result<bool, CredentialsError> {
        let before = self.devices.len();
        self.devices.retain(|d| d.username != username);
        let removed = self.devices.len() != before;
        if removed {
            self.save()?;
        }
        Ok(removed)
    }

    /// The file's current content (devices added by the CLI while running), or this.
    fn current(&self) -> Self {
        match &self.path {
            Some(p) => std::fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Self>(&b).ok())
                .unwrap_or_else(|| self.clone()),
            None => self.clone(),
        }
    }

    /// Who `username`/`password` is, if anyone.
    fn authenticate(&self, username: &str, password: &str) -> Option<Principal> {
        use subtle::ConstantTimeEq;
        if username == INTERNAL_USER {
            let ok: bool = password
                .as_bytes()
                .ct_eq(self.internal_password.as_bytes())
                .into();
            return ok.then_some(Principal::Internal);
        }
        let hash = sha256_hex(password);
        self.current()
            .devices
            .into_iter()
            .find(|d| d.username == username && d.password_sha256 == hash)
            .map(Principal::Device)
    }
}

/// An authenticated client of the gate.
#[derive(Debug, Clone)]
enum Principal {
    Internal,
    Device(DeviceCredential),
}

/// Topic patterns the ACL applies.
#[derive(Debug, Clone)]
pub struct AclTopics {
    /// Fix topics (`{cooperative}`, `{vehicle}`).
    pub fix: TopicPattern,
    /// Alert topics (`{cooperative}`, `{vehicle}`).
    pub alert: String,
}

impl Principal {
    fn may_publish(&self, topics: &AclTopics, topic: &str) -> bool {
        match self {
            Principal::Internal => true,
            Principal::Device(d) => match topics.fix.parse_topic(topic) {
                Ok((c, v)) => {
                    c.as_str() == d.cooperative
                        && d.vehicle.as_deref().is_none_or(|dv| dv == v.as_str())
                }
                Err(_) => false,
            },
        }
    }

    /// A filter is allowed when it matches only alert topics of the device's own
    /// cooperative (vehicle): the cooperative level literal, the vehicle level its
    /// own vehicle (or `+` for a cooperative-wide credential), no `#`.
    fn may_subscribe(&self, topics: &AclTopics, filter: &str) -> bool {
        let d = match self {
            Principal::Internal => return true,
            Principal::Device(d) => d,
        };
        let pat: Vec<&str> = topics.alert.split('/').collect();
        let fil: Vec<&str> = filter.split('/').collect();
        pat.len() == fil.len()
            && pat.iter().zip(&fil).all(|(p, f)| match *p {
                "{cooperative}" => *f == d.cooperative,
                "{vehicle}" => match &d.vehicle {
                    Some(v) => f == v,
                    None => *f == "+" || (!f.contains(['+', '#']) && !f.is_empty()),
                },
                lit => f == &lit,
            })
    }
}

/// Errors of one gate connection (logged; the connection is closed).
#[derive(Debug, thiserror::Error)]
enum GateError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("MQTT: {0}")]
    Mqtt(#[from] mqttbytes::Error),
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("refused: {0}")]
    Refused(&'static str),
}

/// Runs the gate: accepts on `listener`, relays to rumqttd at `upstream`.
pub async fn run(
    listener: TcpListener,
    upstream: std::net::SocketAddr,
    creds: Arc<BrokerCredentials>,
    topics: Arc<AclTopics>,
) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "embedded broker gate: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (creds, topics) = (creds.clone(), topics.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(sock, upstream, &creds, &topics).await {
                tracing::debug!(%peer, error = %e, "embedded broker gate: connection closed");
            }
        });
    }
}

/// Reads one whole frame (fixed header + remaining bytes) into `buf`'s front.
async fn read_frame(
    sock: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
) -> Result<Option<(u8, BytesMut)>, GateError> {
    loop {
        match mqttbytes::check(buf.iter(), MAX_PACKET_BYTES) {
            Ok(h) => {
                let len = h.frame_length();
                let frame = buf.split_to(len);
                return Ok(Some((frame[0] >> 4, frame)));
            }
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if sock.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn refuse(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    code: v4::ConnectReturnCode,
) -> Result<(), GateError> {
    let mut out = BytesMut::new();
    v4::ConnAck::new(code, false).write(&mut out)?;
    w.write_all(&out).await?;
    Ok(())
}

async fn connection(
    sock: TcpStream,
    upstream: std::net::SocketAddr,
    creds: &BrokerCredentials,
    topics: &AclTopics,
) -> Result<(), GateError> {
    let (mut cr, mut cw) = sock.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let first = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        read_frame(&mut cr, &mut buf),
    )
    .await
    .map_err(|_| GateError::NotConnect)??;
    let Some((1, frame)) = first else {
        return Err(GateError::NotConnect);
    };
    let v4::Packet::Connect(mut connect) = v4::Packet::read(&mut frame.clone(), MAX_PACKET_BYTES)?
    else {
        return Err(GateError::NotConnect);
    };
    let principal = match &connect.login {
        Some(l) => creds.authenticate(&l.username, &l.password),
        None => None,
    };
    let Some(principal) = principal else {
        metrics::counter!("fleetwatch_broker_refused_total", "what" => "connect").increment(1);
        refuse(&mut cw, v4::ConnectReturnCode::BadUserNamePassword).await?;
        return Err(GateError::Refused("bad or missing credentials"));
    };
    if let (Some(w), Principal::Device(_)) = (&connect.last_will, &principal) {
        if !principal.may_publish(topics, &w.topic) {
            refuse(&mut cw, v4::ConnectReturnCode::NotAuthorized).await?;
            return Err(GateError::Refused("last will topic not allowed"));
        }
    }
    // rumqttd sees fleetwatch's credential; a device's client id is prefixed with its
    // username so it can never take over (or end) another client's session.
    connect.login = Some(v4::Login::new(
        INTERNAL_USER,
        creds.internal_password.clone(),
    ));
    if let Principal::Device(d) = &principal {
        connect.client_id = format!("{}:{}", d.username, connect.client_id);
    }
    let up = TcpStream::connect(upstream).await?;
    let _ = up.set_nodelay(true);
    let _ = cw.as_ref().set_nodelay(true);
    let (mut ur, mut uw) = up.into_split();
    let mut out = BytesMut::new();
    connect.write(&mut out)?;
    uw.write_all(&out).await?;
    let cw = Arc::new(Mutex::new(cw));

    let down = {
        let cw = cw.clone();
        async move {
            let mut b = vec![0u8; 64 * 1024];
            loop {
                let n = ur.read(&mut b).await?;
                if n == 0 {
                    return Ok::<(), GateError>(());
                }
                cw.lock().await.write_all(&b[..n]).await?;
            }
        }
    };
    let upward = async {
        loop {
            let Some((kind, frame)) = read_frame(&mut cr, &mut buf).await? else {
                return Ok::<(), GateError>(());
            };
            let allowed = match kind {
                3 | 8 if !matches!(principal, Principal::Internal) => {
                    check(&principal, topics, frame.clone(), &cw).await?
                }
                _ => true,
            };
            if allowed {
                uw.write_all(&frame).await?;
            }
        }
    };
    tokio::select! {
        r = down => r,
        r = upward => r,
    }
}

/// Checks a PUBLISH (3) or SUBSCRIBE (8) of a device; answers a refused one itself.
async fn check(
    principal: &Principal,
    topics: &AclTopics,
    mut frame: BytesMut,
    cw: &Mutex<OwnedWriteHalf>,
) -> Result<bool, GateError> {
    let mut out = BytesMut::new();
    match v4::Packet::read(&mut frame, MAX_PACKET_BYTES)? {
        v4::Packet::Publish(p) => {
            if principal.may_publish(topics, &p.topic) {
                return Ok(true);
            }
            metrics::counter!("fleetwatch_broker_refused_total", "what" => "publish").increment(1);
            tracing::warn!(topic = %p.topic, "embedded broker: publish refused by ACL");
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    v4::PubAck::new(p.pkid).write(&mut out)?;
                }
                QoS::ExactlyOnce => {
                    return Err(GateError::Refused("QoS 2 publish to a denied topic"))
                }
            }
        }
        v4::Packet::Subscribe(s) => {
            if s.filters
                .iter()
                .all(|f| principal.may_subscribe(topics, &f.path))
            {
                return Ok(true);
            }
            metrics::counter!("fleetwatch_broker_refused_total", "what" => "subscribe")
                .increment(1);
            tracing::warn!(filters = ?s.filters.iter().map(|f| &f.path).collect::<Vec<_>>(), "embedded broker: subscription refused by ACL");
            let codes = vec![v4::SubscribeReasonCode::Failure; s.filters.len()];
            v4::SubAck::new(s.pkid, codes).write(&mut out)?;
        }
        _ => return Ok(true),
    }
    if !out.is_empty() {
        cw.lock().await.write_all(&out).await?;
    }
    Ok(false)
}
