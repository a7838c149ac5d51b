//! `e2e --gateway N`: N JT/T 808 terminals on real TCP connections to the gateway of
//! a running fleetwatch. Each registers and authenticates, then reports one location
//! every 10 s (phases spread evenly over the interval), then every terminal sends a
//! burst back to back, each location as soon as the previous one's 0x8001 reply came
//! (the gateway sends it only after the commit). Measured per phase: fixes/s stored
//! (from the replies and from the rows), write-to-reply latency, RSS, CPU.
//!
//! The terminals run in a child process (this bench binary again, `--gateway-client`):
//! the box's hard open-file limit must hold N sockets per process, not 2N, and the
//! server's RSS is then the server's alone. The bench drives the child phase by phase:
//! one JSON line per phase on the child's stdout, one line on its stdin to go on.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleetwatch::domain::{CooperativeId, Vehicle, VehicleClass, VehicleId};
use fleetwatch::sim::devices::{self as enc, DeviceFix, Jt808Phone};
use fleetwatch::sources::device::{jt808, Scan};
use fleetwatch::sources::gateway::JT808_DEFAULT_UTC_OFFSET_S;
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Cooperative of the bench's terminals (their rows are counted by it).
pub const COOPERATIVE: &str = "HTX-GW";

/// Logins in flight at once: under the listener's accept backlog (128, tokio's and
/// std's), so no SYN overflows the queue and is retried a second later.
const LOGINS_IN_FLIGHT: usize = 100;

/// Longest wait for one reply; a terminal that waits longer is counted as failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// File descriptors a process needs besides the connections (database, broker,
/// listeners, epoll, pipes).
const FD_MARGIN: u64 = 256;

/// What the fleet does.
#[derive(Debug, Clone)]
pub struct FleetArgs {
    /// Terminals (connections).
    pub terminals: usize,
    /// Length of the steady phase, seconds.
    pub steady_s: u64,
    /// Reporting interval of the steady phase, seconds.
    pub interval_s: u64,
    /// Locations per terminal in the burst.
    pub burst: usize,
}

/// The registered vehicles of the fleet: terminal phone `0139` + 8 digits.
pub fn vehicles(n: usize) -> Vec<Vehicle> {
    let coop = CooperativeId::parse(COOPERATIVE).unwrap();
    (0..n)
        .map(|i| Vehicle {
            id: VehicleId::parse(&format!("GW-{i:05}")).unwrap(),
            plate: None,
            cooperative: coop.clone(),
            class: VehicleClass::Container,
            route: None,
            device_id: Some(phone(i).digits().to_string()),
        })
        .collect()
}

fn phone(i: usize) -> Jt808Phone {
    Jt808Phone::new(&format!("0139{i:08}")).unwrap()
}

/// Raises the soft open-file limit to the hard one; returns (soft, hard).
pub fn raise_open_files() -> (u64, u64) {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit to the hard limit");
    }
    getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit")
}

/// CPU seconds (user + system) this process used so far.
pub fn cpu_s() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

/// CPU seconds the private PostgreSQL of cluster directory `dir` used so far: the
/// postmaster and its live processes, and those that ended (its children's time).
pub fn pg_cpu_s(dir: &std::path::Path) -> f64 {
    let Some(postmaster) = std::fs::read_to_string(dir.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
    else {
        return 0.0;
    };
    // Fields after the command name: state, ppid, ..., utime (12th), stime, cutime,
    // cstime, in clock ticks (1/100 s).
    let stat = |pid: &str| -> Option<Vec<u64>> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &s[s.rfind(')')? + 1..];
        Some(
            rest.split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect(),
        )
    };
    let mut ticks = 0;
    if let Some(f) = stat(&postmaster.to_string()) {
        ticks += f[10..14].iter().sum::<u64>();
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some(f) = stat(pid).filter(|f| f.first() == Some(&u64::from(postmaster))) {
            ticks += f[10] + f[11];
        }
    }
    ticks as f64 / 100.0
}

/// Busy and total jiffies of the whole machine (all cores), from /proc/stat.
pub fn machine_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle and iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Memory the kernel holds for TCP sockets (both ends here), MiB, from sockstat.
fn tcp_kernel_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages = s
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.iter()
                .position(|x| *x == "mem")
                .and_then(|i| w.get(i + 1))
                .and_then(|x| x.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

/// What the terminals measured in one phase: one JSON line of the child.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseReport {
    /// `login`, `steady` or `burst`.
    pub phase: String,
    /// Connections open at the end of the phase.
    pub connections: usize,
    /// Locations sent (in `login`: terminals that tried).
    pub sent: u64,
    /// Locations whose 0x8001 reply accepted them (in `login`: terminals registered
    /// and authenticated).
    pub acked: u64,
    /// Locations refused, not answered in time, or lost with their connection (in
    /// `login`: terminals that could not log in).
    pub failed: u64,
    /// Wall time of the phase, seconds.
    pub secs: f64,
    /// Write-to-reply latency, milliseconds: median, 99th percentile, largest.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Largest, milliseconds.
    pub max_ms: f64,
    /// CPU the client process used in the phase, seconds (one thread drives all).
    pub client_cpu_s: f64,
}

/// Latencies of one phase, microseconds.
fn percentiles(report: &mut PhaseReport, mut us: Vec<u32>) {
    us.sort_unstable();
    let at = |q: f64| {
        us.get(((us.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |&v| f64::from(v) / 1000.0)
    };
    report.p50_ms = at(0.50);
    report.p99_ms = at(0.99);
    report.max_ms = us.last().map_or(0.0, |&v| f64::from(v) / 1000.0);
}

/// One terminal's connection and counters.
struct Terminal {
    index: usize,
    phone: Jt808Phone,
    stream: TcpStream,
    buf: Vec<u8>,
    serial: u16,
    /// Locations sent: the next fix is this many seconds after the fleet's start time.
    fixes: i64,
}

#[derive(Debug, thiserror::Error)]
enum TerminalError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no reply within {REPLY_TIMEOUT:?}")]
    Timeout,
    #[error("connection closed")]
    Closed,
    #[error("bad reply: {0}")]
    Reply(String),
}

impl Terminal {
    async fn login(addr: SocketAddr, index: usize) -> Result<Self, TerminalError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut t = Terminal {
            index,
            phone: phone(index),
            stream,
            buf: Vec::with_capacity(64),
            serial: 0,
            fixes: 0,
        };
        let terminal_id = format!("T{:06}", index % 1_000_000);
        let serial = t.next_serial();
        let reg = enc::jt808_register(&t.phone, &terminal_id, None, serial)
            .map_err(|e| TerminalError::Reply(e.to_string()))?;
        let reply = t.request(&reg).await?;
        let code = enc::jt808_auth_code(&reply)
            .ok_or_else(|| TerminalError::Reply("registration refused".into()))?;
        let serial = t.next_serial();
        let auth = enc::jt808_auth(&t.phone, &code, serial)
            .map_err(|e| TerminalError::Reply(e.to_string()))?;
        let reply = t.request(&auth).await?;
        t.check_ok(&reply, serial, jt808::AUTH)?;
        Ok(t)
    }

    fn next_serial(&mut self) -> u16 {
        self.serial = self.serial.wrapping_add(1);
        self.serial
    }

    /// Writes `frame` and reads the next whole frame the gateway sends.
    async fn request(&mut self, frame: &[u8]) -> Result<jt808::Frame, TerminalError> {
        self.stream.write_all(frame).await?;
        tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                match jt808::scan(&self.buf) {
                    Scan::Frame(n) => {
                        let f = jt808::parse(&self.buf[..n]);
                        self.buf.drain(..n);
                        return f.map_err(|e| TerminalError::Reply(e.to_string()));
                    }
                    Scan::Garbage(n) => {
                        self.buf.drain(..n.min(self.buf.len()));
                    }
                    Scan::Incomplete => {
                        if self.stream.read_buf(&mut self.buf).await? == 0 {
                            return Err(TerminalError::Closed);
                        }
                    }
                }
            }
        })
        .await
        .map_err(|_| TerminalError::Timeout)?
    }

    /// Whether `reply` is the general response accepting our message `serial`.
    fn check_ok(
        &self,
        reply: &jt808::Frame,
        serial: u16,
        msg_id: u16,
    ) -> Result<(), TerminalError> {
        let mut want = serial.to_be_bytes().to_vec();
        want.extend_from_slice(&msg_id.to_be_bytes());
        want.push(0);
        if reply.msg_id == jt808::PLATFORM_RESPONSE && reply.body == want {
            Ok(())
        } else {
            Err(TerminalError::Reply(format!(
                "terminal {}: {:#06x} {:02x?} to {msg_id:#06x} serial {serial}",
                self.index, reply.msg_id, reply.body
            )))
        }
    }

    /// Sends the next location and waits for its reply: the latency, microseconds.
    async fn report(&mut self, start: DateTime<Utc>) -> Result<u32, TerminalError> {
        let k = self.fixes;
        // Spread around Thu Dau Mot, each terminal moving north at about 40 km/h.
        let fix = DeviceFix {
            ts: start + chrono::Duration::seconds(k),
            lat: 10.90 + (self.index % 100) as f64 * 0.002 + k as f64 * 1e-4,
            lon: 106.60 + (self.index / 100) as f64 * 0.002,
            speed_kmh: 40.0,
            heading_deg: 0.0,
            ignition: true,
            satellites: 9,
            odometer_m: Some(100_000.0 + k as f64 * 11.0),
        };
        let serial = self.next_serial();
        let frame = enc::jt808_location(&self.phone, &fix, JT808_DEFAULT_UTC_OFFSET_S, serial);
        let sent = Instant::now();
        let reply = self.request(&frame).await?;
        let us = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        self.fixes += 1;
        self.check_ok(&reply, serial, jt808::LOCATION)?;
        Ok(us)
    }
}

/// What one terminal did in a phase.
struct Outcome {
    terminal: Option<Terminal>,
    sent: u64,
    acked: u64,
    failed: u64,
    latencies_us: Vec<u32>,
}

impl Outcome {
    fn new(terminal: Terminal) -> Self {
        Outcome {
            terminal: Some(terminal),
            sent: 0,
            acked: 0,
            failed: 0,
            latencies_us: Vec::new(),
        }
    }

    /// Sends one location; a terminal whose frame failed is dropped for the rest.
    async fn report(&mut self, start: DateTime<Utc>) {
        let Some(t) = self.terminal.as_mut() else {
            return;
        };
        self.sent += 1;
        match t.report(start).await {
            Ok(us) => {
                self.acked += 1;
                self.latencies_us.push(us);
            }
            Err(e) => {
                eprintln!("  terminal {}: {e}", t.index);
                self.failed += 1;
                self.terminal = None;
            }
        }
    }
}

/// Runs `each` on every terminal concurrently; gathers them back and the phase's report.
async fn phase<F, Fut>(
    name: &str,
    terminals: Vec<Terminal>,
    each: F,
) -> (Vec<Terminal>, PhaseReport)
where
    F: Fn(Outcome) -> Fut,
    Fut: std::future::Future<Output = Outcome> + 'static,
{
    let cpu0 = cpu_s();
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for t in terminals {
        set.spawn_local(each(Outcome::new(t)));
    }
    let mut back = Vec::new();
    let mut r = PhaseReport {
        phase: name.into(),
        ..Default::default()
    };
    let mut us = Vec::new();
    while let Some(o) = set.join_next().await {
        let o = o.expect("terminal task");
        r.sent += o.sent;
        r.acked += o.acked;
        r.failed += o.failed;
        us.extend(o.latencies_us);
        back.extend(o.terminal);
    }
    r.secs = t0.elapsed().as_secs_f64();
    r.client_cpu_s = cpu_s() - cpu0;
    r.connections = back.len();
    percentiles(&mut r, us);
    back.sort_by_key(|t| t.index);
    (back, r)
}

/// The child process: the terminals, phase by phase. One thread drives them all, so
/// its CPU share says whether the client could be the bottleneck.
pub fn client_main(addr: SocketAddr, a: FleetArgs) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, client(addr, a));
}

async fn client(addr: SocketAddr, a: FleetArgs) {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let emit = |r: &PhaseReport| println!("{}", serde_json::to_string(r).unwrap());
    // Whole seconds, as JT/T 808 carries them; an hour back, so no fix is in the future.
    let start = DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();

    // Login: registration and authentication, a bounded number in flight.
    let cpu0 = cpu_s();
    let t0 = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(LOGINS_IN_FLIGHT));
    let mut set = JoinSet::new();
    for i in 0..a.terminals {
        let gate = gate.clone();
        set.spawn_local(async move {
            let _permit = gate.acquire().await.unwrap();
            let t0 = Instant::now();
            (Terminal::login(addr, i).await, t0.elapsed())
        });
    }
    let mut terminals = Vec::with_capacity(a.terminals);
    let mut login = PhaseReport {
        phase: "login".into(),
        ..Default::default()
    };
    let mut us = Vec::new();
    while let Some(r) = set.join_next().await {
        let (r, took) = r.expect("login task");
        login.sent += 1;
        match r {
            Ok(t) => {
                login.acked += 1;
                us.push(took.as_micros() as u32);
                terminals.push(t);
            }
            Err(e) => {
                login.failed += 1;
                if login.failed <= 10 {
                    eprintln!("  login failed: {e}");
                }
            }
        }
    }
    login.secs = t0.elapsed().as_secs_f64();
    login.client_cpu_s = cpu_s() - cpu0;
    login.connections = terminals.len();
    percentiles(&mut login, us);
    terminals.sort_by_key(|t| t.index);
    emit(&login);
    let _ = stdin.next_line().await;

    // Steady: one location per interval each, the terminals' phases spread evenly.
    let n = a.terminals.max(1) as u64;
    let interval = Duration::from_secs(a.interval_s.max(1));
    let end = tokio::time::Instant::now() + Duration::from_secs(a.steady_s);
    let origin = tokio::time::Instant::now();
    let (terminals, steady) = phase("steady", terminals, |mut o| async move {
        let i = o.terminal.as_ref().map_or(0, |t| t.index) as u64;
        let mut at = origin + interval * (i % n) as u32 / n as u32;
        while at < end && o.terminal.is_some() {
            tokio::time::sleep_until(at).await;
            o.report(start).await;
            at += interval;
        }
        o
    })
    .await;
    emit(&steady);
    let _ = stdin.next_line().await;

    // Burst: every terminal sends its locations back to back, each after the
    // previous one's reply.
    let k = a.burst;
    let (terminals, burst) = phase("burst", terminals, |mut o| async move {
        for _ in 0..k {
            o.report(start).await;
        }
        o
    })
    .await;
    emit(&burst);
    let _ = stdin.next_line().await;
    drop(terminals);
}

/// The server's side of one phase: what the bench measured while the child ran it.
#[derive(Debug, Clone, Default)]
pub struct ServerPhase {
    /// The child's report.
    pub client: PhaseReport,
    /// Rows of the fleet in `fixes` stored during the phase.
    pub rows: i64,
    /// RSS of this process at the end of the phase, MiB.
    pub rss_end_mib: f64,
    /// Highest RSS sampled during the phase, MiB.
    pub rss_peak_mib: f64,
    /// CPU this process (fleetwatch and its embedded broker) used, seconds.
    pub server_cpu_s: f64,
    /// CPU PostgreSQL used, seconds.
    pub pg_cpu_s: f64,
    /// CPU the whole machine used (all processes, all cores), seconds.
    pub machine_cpu_s: f64,
    /// Kernel memory of TCP sockets at the end of the phase, MiB.
    pub tcp_kernel_mib: f64,
}

/// Everything the gateway run measured.
#[derive(Debug, Clone, Default)]
pub struct GatewayRun {
    /// RSS before any connection, MiB.
    pub rss_before_mib: f64,
    /// Kernel memory of TCP sockets before any connection, MiB.
    pub tcp_kernel_before_mib: f64,
    /// Login, steady, burst.
    pub phases: Vec<ServerPhase>,
    /// RSS once the connections closed, MiB.
    pub rss_after_close_mib: f64,
    /// Rows of the fleet in `fixes` at the end.
    pub rows_total: i64,
}

/// Drives the fleet in a child process against the JT/T 808 listener at `addr` and
/// measures this process (the server) and PostgreSQL (data directory `pg_dir`) phase
/// by phase; `rss_mib` reads this process's RSS.
pub async fn measure(
    addr: SocketAddr,
    db: &str,
    pg_dir: &std::path::Path,
    a: &FleetArgs,
    rss_mib: fn() -> f64,
) -> GatewayRun {
    let client = fleetwatch::store::connect(db).await.unwrap();
    let rows = || async {
        client
            .query_one(
                "SELECT count(*) FROM fixes WHERE cooperative_id = $1",
                &[&COOPERATIVE],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let mut run = GatewayRun {
        rss_before_mib: rss_mib(),
        tcp_kernel_before_mib: tcp_kernel_mib(),
        ..Default::default()
    };
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max((rss_mib() * 1024.0) as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let exe = std::env::current_exe().expect("the bench binary");
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--gateway-client".to_string(),
            addr.to_string(),
            "--gateway".into(),
            a.terminals.to_string(),
            "--gateway-s".into(),
            a.steady_s.to_string(),
            "--gateway-interval-s".into(),
            a.interval_s.to_string(),
            "--burst".into(),
            a.burst.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the terminals' process starts");
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut rows0 = rows().await;
    let mut cpu0 = cpu_s();
    let mut pg0 = pg_cpu_s(pg_dir);
    let mut m0 = machine_jiffies();
    for _ in 0..3 {
        let line = from_child
            .next_line()
            .await
            .unwrap()
            .expect("the terminals' process reports each phase");
        let report: PhaseReport = serde_json::from_str(&line).expect("a phase report");
        let m1 = machine_jiffies();
        // Jiffies are 1/100 s (USER_HZ) on Linux.
        let machine_cpu_s = (m1.0 - m0.0) as f64 / 100.0;
        let rows1 = rows().await;
        let rss_end_mib = rss_mib();
        let p = ServerPhase {
            rows: rows1 - rows0,
            rss_end_mib,
            rss_peak_mib: (peak.load(Ordering::Relaxed) as f64 / 1024.0).max(rss_end_mib),
            server_cpu_s: cpu_s() - cpu0,
            pg_cpu_s: pg_cpu_s(pg_dir) - pg0,
            machine_cpu_s,
            tcp_kernel_mib: tcp_kernel_mib(),
            client: report,
        };
        eprintln!(
            "  {}: {} connections, {} acked in {:.1} s, p99 {:.1} ms, RSS {:.0} MiB",
            p.client.phase,
            p.client.connections,
            p.client.acked,
            p.client.secs,
            p.client.p99_ms,
            p.rss_end_mib
        );
        run.phases.push(p);
        rows0 = rows1;
        cpu0 = cpu_s();
        pg0 = pg_cpu_s(pg_dir);
        m0 = machine_jiffies();
        peak.store(0, Ordering::Relaxed);
        to_child.write_all(b"next\n").await.unwrap();
    }
    let status = child.wait().await.expect("the terminals' process ends");
    assert!(status.success(), "terminals' process: {status}");
    // Give the server a moment to notice the closed connections and free them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.rss_after_close_mib = rss_mib();
    run.rows_total = rows().await;
    sampler.abort();
    run
}

/// Checks that `terminals` connections fit this process's open-file limit.
pub fn fits(terminals: usize, soft_limit: u64) -> Result<(), String> {
    let need = terminals as u64 + FD_MARGIN;
    if need > soft_limit {
        return Err(format!(
            "{terminals} connections need about {need} open files per process, over the \
             limit of {soft_limit} (the hard limit; raising it needs CAP_SYS_RESOURCE)"
        ));
    }
    Ok(())
}
