//! A private PostgreSQL server that fleetwatch initialises and starts itself from the
//! machine's installed server binaries, in a data directory it owns.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::{Gid, Uid, User};

/// Errors starting or stopping the private server.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// No `pg_ctl`/`initdb`/`postgres` found.
    #[error(
        "PostgreSQL server binaries not found (looked in $FLEETWATCH_PG_BIN, PATH and \
         /usr/lib/postgresql/*/bin). Install them, e.g. `apt-get install -y postgresql` on \
         Debian/Ubuntu, or set database.url to an external server"
    )]
    NoBinaries,
    /// A file-system step failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A server tool exited with an error.
    #[error("{tool} failed ({status}); see {log}")]
    Tool {
        tool: String,
        status: String,
        log: String,
    },
    /// Could not find or create the unprivileged user to run the server as (root only).
    #[error("running as root: could not find or create an unprivileged user for PostgreSQL: {0}")]
    User(String),
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Data directory of the cluster (created if missing).
    pub data_dir: PathBuf,
    /// Durability off (fsync, synchronous_commit): for tests only.
    pub fast_unsafe: bool,
    /// Preload TimescaleDB when it is installed beside the server (its library in the
    /// server's lib directory), so migrations get the Timescale layout.
    pub timescaledb: bool,
}

impl PgOptions {
    /// Options for a durable server in `data_dir`, TimescaleDB preloaded when installed.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            fast_unsafe: false,
            timescaledb: true,
        }
    }
}

/// A running private server; stopped on drop unless it was found already running.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<(Uid, Gid)>,
    log: PathBuf,
    running: bool,
    /// Already running when started: another process (e.g. the service) uses it.
    reused: bool,
    /// Who started the server (see [`OWNER_FILE`]).
    owner_file: PathBuf,
    /// The superuser's password (kept in [`PASSWORD_FILE`]).
    password: String,
}

const SUPERUSER: &str = "fleetwatch";
/// In the data directory: pid and start time of the fleetwatch process that started
/// the server, so a server left by a killed fleetwatch is told from one another
/// running process uses.
pub const OWNER_FILE: &str = "postgres-owner";
/// In the data directory (mode 0600): the generated password of the superuser.
pub const PASSWORD_FILE: &str = "postgres-password";

/// Who started a running server.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// A live process (this one or another): leave the server to it.
    Alive,
    /// A fleetwatch process that has ended (e.g. SIGKILL): adopt the server.
    Gone,
    /// No owner file: started by hand or by an older fleetwatch; leave it running.
    Unknown,
}

/// `pid start-time` of a process (start time in clock ticks since boot, from
/// /proc), so a recycled pid is not taken for the owner.
fn process_identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count fields after the last ')'.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

fn owner_state(file: &Path) -> Owner {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Owner::Unknown;
    };
    let text = text.trim();
    let pid = text.split_whitespace().next().and_then(|p| p.parse().ok());
    match pid.and_then(process_identity) {
        Some(id) if id == text => Owner::Alive,
        _ => Owner::Gone,
    }
}

/// A fresh random password (hex, 32 bytes of the OS generator).
fn generate_password() -> String {
    let b: [u8; 32] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes `text` to `path` readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), PgError> {
    super::write_private(path, text).map_err(io(format!("writing {}", path.display())))
}

/// Password authentication for every connection (no unix socket is opened).
const PG_HBA: &str = "# Written by fleetwatch: password (SCRAM) authentication only.\n\
local all all scram-sha-256\n\
host all all 127.0.0.1/32 scram-sha-256\n\
host all all ::1/128 scram-sha-256\n";

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
    let what = what.into();
    move |source| PgError::Io { what, source }
}

/// Finds the directory with `pg_ctl`, `initdb` and `postgres`.
pub fn find_binaries() -> Result<PathBuf, PgError> {
    let has_all = |d: &Path| {
        ["pg_ctl", "initdb", "postgres"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    if let Some(d) = std::env::var_os("FLEETWATCH_PG_BIN").map(PathBuf::from) {
        if has_all(&d) {
            return Ok(d);
        }
    }
    // Debian keeps server binaries out of PATH; prefer the newest version there.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_all(d))
        .collect();
    versions.sort();
    if let Some((_, d)) = versions.pop() {
        return Ok(d);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if let Ok(real) = dir.join("pg_ctl").canonicalize() {
            if let Some(d) = real.parent().filter(|d| has_all(d)) {
                return Ok(d.to_path_buf());
            }
        }
    }
    Err(PgError::NoBinaries)
}

/// PostgreSQL refuses to run as root: pick (or create) a system user.
fn server_user() -> Result<Option<(Uid, Gid)>, PgError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "fleetwatch"] {
        if let Ok(Some(u)) = User::from_name(name) {
            return Ok(Some((u.uid, u.gid)));
        }
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "fleetwatch",
        ])
        .status()
        .map_err(|e| PgError::User(e.to_string()))?;
    if !status.success() {
        return Err(PgError::User(format!("useradd exited with {status}")));
    }
    match User::from_name("fleetwatch") {
        Ok(Some(u)) => Ok(Some((u.uid, u.gid))),
        _ => Err(PgError::User(
            "user fleetwatch not found after useradd".into(),
        )),
    }
}

impl EmbeddedPostgres {
    /// Initialises (first time) and starts the server; reuses one already running there.
    pub fn start(opts: &PgOptions) -> Result<Self, PgError> {
        let bin = find_binaries()?;
        let run_as = server_user()?;
        std::fs::create_dir_all(&opts.data_dir)
            .map_err(io(format!("creating {}", opts.data_dir.display())))?;
        let mut data = opts
            .data_dir
            .canonicalize()
            .map_err(io(format!("resolving {}", opts.data_dir.display())))?;
        if let Some((uid, gid)) = run_as {
            if !reachable_by(&data, uid, gid) {
                // E.g. a checkout under /root (mode 700): the server user cannot enter
                // it. Keep the cluster in a system location named after the directory.
                let key = crate::store::fnv1a64(&[data.as_os_str().as_encoded_bytes()]);
                let alt = PathBuf::from(format!("/var/lib/fleetwatch/pg-{key:016x}"));
                tracing::warn!(wanted = %data.display(), using = %alt.display(),
                    "server user cannot reach the data directory; using a system location");
                std::fs::create_dir_all(&alt).map_err(io(format!("creating {}", alt.display())))?;
                let parent = alt.parent().expect("has a parent");
                let _ = std::fs::set_permissions(
                    parent,
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                );
                data = alt;
            }
        }
        let cluster = data.join("cluster");
        let log = data.join("postgres.log");
        if let Some((uid, gid)) = run_as {
            std::fs::create_dir_all(&cluster).map_err(io("creating cluster dir"))?;
            for p in [&data, &cluster] {
                nix::unistd::chown(p, Some(uid), Some(gid)).map_err(|e| PgError::Io {
                    what: format!("chown {}", p.display()),
                    source: e.into(),
                })?;
            }
            if log.exists() {
                let _ = nix::unistd::chown(&log, Some(uid), Some(gid));
            }
        }
        let password_file = data.join(PASSWORD_FILE);
        let mut pg = Self {
            bin,
            data: cluster,
            port: 0,
            run_as,
            log,
            running: false,
            reused: false,
            owner_file: data.join(OWNER_FILE),
            password: String::new(),
        };
        let fresh = !pg.data.join("PG_VERSION").exists();
        match std::fs::read_to_string(&password_file) {
            Ok(p) if !fresh && !p.trim().is_empty() => pg.password = p.trim().to_string(),
            _ => {
                pg.password = generate_password();
                write_private(&password_file, &pg.password)?;
            }
        }
        if fresh {
            pg.initdb()?;
        }
        if let Some(port) = pg.running_port() {
            pg.port = port;
            pg.running = true;
            pg.secure_trust_cluster(true)?;
            match owner_state(&pg.owner_file) {
                Owner::Gone => {
                    // Its fleetwatch died without stopping it: ours now, stopped on exit.
                    tracing::warn!(port, "adopting the private PostgreSQL a fleetwatch process that ended left running; it is stopped on exit");
                    pg.write_owner()?;
                }
                owner => {
                    tracing::info!(
                        port,
                        ?owner,
                        "reusing the private PostgreSQL already running; left running on exit"
                    );
                    pg.reused = true;
                }
            }
            return Ok(pg);
        }
        pg.secure_trust_cluster(false)?;
        pg.port = crate::infra::broker::free_port().map_err(io("finding a free port"))?;
        let mut o = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
             -c max_connections=200 -c shared_buffers=256MB",
            pg.port
        );
        if opts.fast_unsafe {
            o.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let start = |o: &str| {
            pg.tool("pg_ctl")
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&pg.data)
                .arg("-l")
                .arg(&pg.log)
                .args(["-o", o])
                .run(&pg.log)
        };
        if opts.timescaledb && pg.timescaledb_installed() {
            let preload = format!(
                "{o} -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"
            );
            if let Err(e) = start(&preload) {
                // E.g. a TimescaleDB build for another PostgreSQL release: its library
                // does not load, and a preload failure stops the server from starting.
                tracing::warn!(error = %e, log = %pg.log.display(),
                    "TimescaleDB is installed but this PostgreSQL cannot load it; starting without it (plain layout)");
                start(&o)?;
            }
        } else {
            start(&o)?;
        }
        pg.running = true;
        pg.write_owner()?;
        tracing::info!(port = pg.port, data = %pg.data.display(), "private PostgreSQL started");
        Ok(pg)
    }

    fn write_owner(&self) -> Result<(), PgError> {
        let me = process_identity(std::process::id()).unwrap_or_default();
        write_private(&self.owner_file, &me)
    }

    /// Whether TimescaleDB's library is in the server's lib directory.
    pub fn timescaledb_installed(&self) -> bool {
        self.bin
            .parent()
            .is_some_and(|d| d.join("lib/timescaledb.so").is_file())
    }

    fn initdb(&self) -> Result<(), PgError> {
        tracing::info!(data = %self.data.display(), "initialising a private PostgreSQL cluster");
        // initdb reads the password from a file the server user can read: a copy in
        // the (not yet created) cluster's parent, removed right after.
        let pwfile = self.data.with_file_name("initdb-password");
        write_private(&pwfile, &self.password)?;
        if let Some((uid, gid)) = self.run_as {
            let _ = nix::unistd::chown(&pwfile, Some(uid), Some(gid));
        }
        let r = self
            .tool("initdb")
            .args(["-U", SUPERUSER, "--auth=scram-sha-256", "--pwfile"])
            .arg(&pwfile)
            .args(["-E", "UTF8", "--locale=C", "--no-sync", "-D"])
            .arg(&self.data)
            .run(&self.log);
        let _ = std::fs::remove_file(&pwfile);
        r
    }

    /// A cluster made by an older fleetwatch trusts every local user: give the
    /// superuser the generated password and require it (pg_hba.conf rewritten; a
    /// running server is reloaded, one not yet running reads it at start).
    fn secure_trust_cluster(&self, running: bool) -> Result<(), PgError> {
        let hba = self.data.join("pg_hba.conf");
        let text =
            std::fs::read_to_string(&hba).map_err(io(format!("reading {}", hba.display())))?;
        let trusts = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .any(|l| l.split_whitespace().any(|w| w == "trust"));
        if !trusts {
            return Ok(());
        }
        tracing::warn!(data = %self.data.display(),
            "this private PostgreSQL trusted every local user; setting a password and requiring it");
        let set = |port: u16| -> Result<(), PgError> {
            let sql = format!(
                "SET password_encryption = 'scram-sha-256'; ALTER ROLE {SUPERUSER} PASSWORD '{}'",
                self.password
            );
            let out = Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .args(["-U", SUPERUSER, "-d", "postgres", "-c", &sql])
                .stdin(Stdio::null())
                .output()
                .map_err(io("running psql"))?;
            if !out.status.success() {
                return Err(PgError::Tool {
                    tool: format!("psql: {}", String::from_utf8_lossy(&out.stderr).trim()),
                    status: out.status.to_string(),
                    log: self.log.display().to_string(),
                });
            }
            Ok(())
        };
        if running {
            set(self.port)?;
        } else {
            // Briefly, as it is (trust), on a free port only to set the password.
            let port = crate::infra::broker::free_port().map_err(io("finding a free port"))?;
            let o = format!(
                "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
            );
            self.tool("pg_ctl")
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-o", &o])
                .run(&self.log)?;
            let r = set(port);
            self.tool("pg_ctl")
                .args(["stop", "-w", "-m", "fast", "-D"])
                .arg(&self.data)
                .run(&self.log)?;
            r?;
        }
        std::fs::write(&hba, PG_HBA).map_err(io(format!("writing {}", hba.display())))?;
        if running {
            self.tool("pg_ctl")
                .args(["reload", "-D"])
                .arg(&self.data)
                .run(&self.log)?;
        }
        Ok(())
    }

    /// The port of a server already running on this cluster, from `postmaster.pid`.
    fn running_port(&self) -> Option<u16> {
        let status = self
            .tool("pg_ctl")
            .args(["status", "-D"])
            .arg(&self.data)
            .0
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        pid.lines().nth(3)?.trim().parse().ok()
    }

    fn tool(&self, name: &str) -> Tool {
        let mut c = Command::new(self.bin.join(name));
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        c.stdin(Stdio::null());
        Tool(c, name.to_string())
    }

    /// Connection URL for database `db` (superuser and its password, on loopback);
    /// log it only through [`crate::app::redact`].
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// The cluster's data directory.
    pub fn cluster_dir(&self) -> &Path {
        &self.data
    }

    /// TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server was already running when [`EmbeddedPostgres::start`] found it.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Stops the server (fast shutdown: aborts open transactions, flushes WAL).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let r = self
            .tool("pg_ctl")
            .args(["stop", "-w", "-m", "fast", "-D"])
            .arg(&self.data)
            .run(&self.log);
        match r {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.owner_file);
            }
            Err(e) => tracing::warn!(error = %e, "stopping the private PostgreSQL"),
        }
    }

    /// Creates database `name` if it does not exist.
    pub async fn ensure_database(&self, name: &str) -> Result<(), crate::store::StoreError> {
        let client = crate::store::connect(&self.url("postgres")).await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await?
            .is_some();
        if !exists {
            let ident = name.replace('"', "\"\"");
            client
                .batch_execute(&format!("CREATE DATABASE \"{ident}\""))
                .await?;
        }
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        // A server found running belongs to the process that started it (e.g. a demo
        // while `fleetwatch token create` runs beside it): leave it running.
        if !self.reused {
            self.stop();
        }
    }
}

/// Whether `uid` can enter `dir` (every ancestor searchable): checked by a child
/// process running as that user, the only exact answer (ACLs, groups).
fn reachable_by(dir: &Path, uid: Uid, gid: Gid) -> bool {
    use std::os::unix::process::CommandExt;
    Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$1\"")
        .arg("sh")
        .arg(dir)
        .uid(uid.as_raw())
        .gid(gid.as_raw())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

struct Tool(Command, String);

impl Tool {
    fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.0.args(args);
        self
    }
    fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.0.arg(a);
        self
    }
    fn run(mut self, log: &Path) -> Result<(), PgError> {
        let out = self.0.output().map_err(io(format!("running {}", self.1)))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        tracing::error!(tool = %self.1, %stderr, "PostgreSQL tool failed");
        Err(PgError::Tool {
            tool: format!("{}: {}", self.1, stderr.trim()),
            status: out.status.to_string(),
            log: log.display().to_string(),
        })
    }
}
