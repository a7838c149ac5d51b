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
}

const SUPERUSER: &str = "fleetwatch";

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
        let mut pg = Self {
            bin,
            data: cluster,
            port: 0,
            run_as,
            log,
            running: false,
            reused: false,
        };
        if !pg.data.join("PG_VERSION").exists() {
            pg.initdb()?;
        }
        if let Some(port) = pg.running_port() {
            tracing::info!(port, "reusing the private PostgreSQL already running");
            pg.port = port;
            pg.running = true;
            pg.reused = true;
            return Ok(pg);
        }
        pg.port = crate::infra::broker::free_port().map_err(io("finding a free port"))?;
        let mut o = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
             -c max_connections=200 -c shared_buffers=256MB",
            pg.port
        );
        if opts.fast_unsafe {
            o.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        pg.tool("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&pg.data)
            .arg("-l")
            .arg(&pg.log)
            .args(["-o", &o])
            .run(&pg.log)?;
        pg.running = true;
        tracing::info!(port = pg.port, data = %pg.data.display(), "private PostgreSQL started");
        Ok(pg)
    }

    fn initdb(&self) -> Result<(), PgError> {
        tracing::info!(data = %self.data.display(), "initialising a private PostgreSQL cluster");
        self.tool("initdb")
            .args([
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&self.data)
            .run(&self.log)
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

    /// Connection URL for database `db` (superuser, trust auth on loopback).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
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
        if let Err(e) = r {
            tracing::warn!(error = %e, "stopping the private PostgreSQL");
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
