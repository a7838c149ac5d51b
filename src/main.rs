//! The `fleetwatch` command: run, demo, simulate, migrate, token, report.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetwatch::api::auth::{self, Role};
use fleetwatch::app::App;
use fleetwatch::config::Settings;
use fleetwatch::{demo, replay, store, telemetry};

#[derive(Parser)]
#[command(
    version,
    about = "Fleet GPS telemetry processor: MQTT fixes -> validation -> rules -> PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline with a configuration file (and FLEETWATCH__* overrides).
    Run {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Zero-configuration demo: embedded broker, private PostgreSQL, a simulated fleet.
    Demo {
        /// TOML configuration file (optional; the demo fleet is added to its registry).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        opts: demo::DemoOptions,
    },
    /// Publish a simulated load to any broker (for demos and benchmarks).
    Simulate(demo::SimulateOptions),
    /// Re-publish a stored track to MQTT, or (--rules) check its alerts offline.
    Replay(replay::ReplayOptions),
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage device credentials of the embedded broker (kept in the data directory).
    DeviceCredentials {
        #[command(subcommand)]
        command: DeviceCredentialsCommand,
    },
    /// Apply database migrations and exit.
    Migrate {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print a compliance report (as `GET /api/v1/reports/compliance`) without the server.
    Report(ReportArgs),
}

/// Options of `fleetwatch report`.
#[derive(clap::Args)]
struct ReportArgs {
    /// Cooperative (every cooperative when absent).
    #[arg(long)]
    cooperative: Option<String>,
    /// Local calendar month, YYYY-MM (local time: rules.utc_offset or --utc-offset).
    #[arg(long, required_unless_present = "from", conflicts_with_all = ["from", "to"])]
    month: Option<String>,
    /// Start, inclusive (RFC 3339, e.g. 2026-11-01T00:00:00+07:00).
    #[arg(long, requires = "to")]
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// End, exclusive (RFC 3339).
    #[arg(long, requires = "from")]
    to: Option<chrono::DateTime<chrono::Utc>>,
    /// Offset of local time for --month, +HH:MM (default: rules.utc_offset).
    #[arg(long, allow_hyphen_values = true)]
    utc_offset: Option<String>,
    /// json or csv.
    #[arg(long, default_value = "json")]
    format: String,
    /// Counted overspeed violations per 1,000 km at or over which a vehicle is flagged.
    #[arg(long)]
    threshold_per_1000km: Option<f64>,
    /// Violations per 1,000 km at or over which a vehicle is "near" the threshold.
    #[arg(long)]
    near_per_1000km: Option<f64>,
    /// Compute everything from the raw tables, not the daily roll-ups (slow; a check).
    #[arg(long)]
    raw: bool,
    /// TOML configuration file (database, rules.utc_offset).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum DeviceCredentialsCommand {
    /// Create a credential and print its username and password once (only a hash is
    /// kept). It may publish fixes of its cooperative (vehicle) only, and read only its
    /// cooperative's (vehicle's) alerts.
    Create {
        /// The cooperative.
        #[arg(long)]
        cooperative: String,
        /// Restrict it to one vehicle.
        #[arg(long)]
        vehicle: Option<String>,
        /// TOML configuration file (for the data directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// List the credentials (username, cooperative, vehicle, created).
    List {
        /// TOML configuration file (for the data directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Revoke a credential by username (new connections are refused at once).
    Revoke {
        /// The credential's username.
        username: String,
        /// TOML configuration file (for the data directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once (only its SHA-256 is stored).
    Create {
        /// cooperative (one cooperative's data), regulator (reads all) or admin.
        #[arg(long)]
        role: Role,
        /// The cooperative of a cooperative token.
        #[arg(long)]
        cooperative: Option<String>,
        /// Free text to recognise the token by (who has it, what for).
        #[arg(long)]
        label: Option<String>,
        /// TOML configuration file (for the database).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// List the stored tokens (id, role, cooperative, label, created).
    List {
        /// TOML configuration file (for the database).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Revoke a token by the id `token list` shows.
    Revoke {
        /// The token's id (at least 8 hex digits of its SHA-256).
        id: String,
        /// TOML configuration file (for the database).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logs();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let settings = Settings::load(config.as_deref())?;
            let signal = shutdown_signal();
            // Read only while a standby waits for leadership ([ha]) and once running.
            let stop = tokio_util::sync::CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                signal.await;
                on_signal.cancel();
            });
            let Some(app) = App::start_when_leading(settings, stop.clone()).await? else {
                tracing::info!("stopped as a standby");
                return Ok(());
            };
            tokio::select! {
                _ = stop.cancelled() => tracing::info!("shutting down"),
                _ = app.stepped_down() => {}
            }
            app.shutdown();
            let lost = app.lost_leadership();
            app.wait().await;
            if lost {
                anyhow::bail!("ha: another instance took over leadership; stepped down (start again to stand by)");
            }
        }
        Command::Demo { config, opts } => {
            let settings = Settings::load(config.as_deref())?;
            demo::run_demo(settings, opts, shutdown_signal()).await?;
        }
        Command::Simulate(opts) => demo::run_simulate(opts, shutdown_signal()).await?,
        Command::Replay(opts) => {
            if !replay::run(opts, shutdown_signal()).await? {
                std::process::exit(1);
            }
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    role,
                    cooperative,
                    label,
                    config,
                },
        } => {
            let (client, pg) = token_db(config).await?;
            let token =
                auth::create_token(&client, role, cooperative.as_deref(), label.as_deref()).await?;
            eprintln!("token created ({role}); it is shown only this once:");
            println!("{token}");
            drop(client);
            drop(pg);
        }
        Command::Token {
            command: TokenCommand::List { config },
        } => {
            let (client, pg) = token_db(config).await?;
            println!("id            role         cooperative        created                label");
            for t in auth::list_tokens(&client).await? {
                println!(
                    "{:<13} {:<12} {:<18} {} {}",
                    t.id,
                    t.role,
                    t.cooperative.as_deref().unwrap_or("-"),
                    t.created_at.format("%Y-%m-%d %H:%M UTC"),
                    t.label.as_deref().unwrap_or("")
                );
            }
            drop(client);
            drop(pg);
        }
        Command::Token {
            command: TokenCommand::Revoke { id, config },
        } => {
            let (client, pg) = token_db(config).await?;
            let t = auth::revoke_token(&client, &id).await?;
            println!(
                "revoked {} ({}{})",
                t.id,
                t.role,
                t.label.map(|l| format!(", {l}")).unwrap_or_default()
            );
            drop(client);
            drop(pg);
        }
        Command::DeviceCredentials { command } => device_credentials(command)?,
        Command::Migrate { config } => {
            let (client, pg, layout) = open_db(&Settings::load(config.as_deref())?).await?;
            println!("migrated ({layout:?} layout)");
            drop(client);
            drop(pg);
        }
        Command::Report(args) => report(args).await?,
    }
    Ok(())
}

/// The database a command works on (the configured one or the private server),
/// migrated and with its roll-ups current; the server and the layout in use.
async fn open_db(
    settings: &Settings,
) -> anyhow::Result<(
    tokio_postgres::Client,
    Option<fleetwatch::infra::postgres::EmbeddedPostgres>,
    store::migrate::Layout,
)> {
    let (url, pg) = fleetwatch::app::database(settings).await?;
    let mut client = store::connect(&url).await.context("connecting")?;
    // Idempotent; a private database may never have been migrated.
    let layout = store::migrate::migrate(&mut client, &settings.database.layout).await?;
    store::rollup::ensure(&mut client, settings.rules.utc_offset, layout).await?;
    Ok((client, pg, layout))
}

/// [`open_db`] for the token commands.
async fn token_db(
    config: Option<PathBuf>,
) -> anyhow::Result<(
    tokio_postgres::Client,
    Option<fleetwatch::infra::postgres::EmbeddedPostgres>,
)> {
    let (client, pg, _) = open_db(&Settings::load(config.as_deref())?).await?;
    Ok((client, pg))
}

/// `fleetwatch report`: the report on stdout.
async fn report(args: ReportArgs) -> anyhow::Result<()> {
    use fleetwatch::api::reports::{self, Format, ReportParams, ReportQuery, Source};
    let settings = Settings::load(args.config.as_deref())?;
    let format = Format::parse(Some(&args.format))?;
    let cooperative = args
        .cooperative
        .as_deref()
        .map(|c| fleetwatch::domain::CooperativeId::parse(c).map(|c| c.as_str().to_string()))
        .transpose()
        .context("--cooperative")?;
    let q = ReportQuery {
        month: args.month,
        from: args.from,
        to: args.to,
        utc_offset: args.utc_offset,
        threshold_per_1000km: args.threshold_per_1000km,
        near_per_1000km: args.near_per_1000km,
        ..ReportQuery::default()
    };
    let mut params = ReportParams::from_query(&q, cooperative, settings.rules.utc_offset)?;
    if args.raw {
        params.source = Source::Raw;
    }
    let (client, pg, _) = open_db(&settings).await?;
    let report = reports::build(&client, &params).await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Csv => print!("{}", report.csv()),
    }
    drop(client);
    drop(pg);
    Ok(())
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a signal during start-up (before the wait begins) is then
/// a clean stop once started, instead of the default action killing the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    async move {
        let recv = |s: &mut Option<tokio::signal::unix::Signal>| {
            let s = s.take();
            async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            _ = recv(&mut int) => {}
            _ = recv(&mut term) => {}
        }
    }
}

fn device_credentials(command: DeviceCredentialsCommand) -> anyhow::Result<()> {
    use fleetwatch::infra::mqtt_gate::BrokerCredentials;
    let data_dir = |config: Option<PathBuf>| -> anyhow::Result<PathBuf> {
        Ok(Settings::load(config.as_deref())?.database.data_dir)
    };
    match command {
        DeviceCredentialsCommand::Create {
            cooperative,
            vehicle,
            config,
        } => {
            let mut c = BrokerCredentials::load_or_create(&data_dir(config)?)?;
            let (user, pass) = c.create_device(&cooperative, vehicle.as_deref())?;
            eprintln!("device credential created; the password is shown only this once:");
            println!("username: {user}\npassword: {pass}");
        }
        DeviceCredentialsCommand::List { config } => {
            let c = BrokerCredentials::load_or_create(&data_dir(config)?)?;
            println!("username                     cooperative        vehicle      created");
            for d in &c.devices {
                println!(
                    "{:<28} {:<18} {:<12} {}",
                    d.username,
                    d.cooperative,
                    d.vehicle.as_deref().unwrap_or("(any)"),
                    d.created_at.format("%Y-%m-%d %H:%M UTC")
                );
            }
        }
        DeviceCredentialsCommand::Revoke { username, config } => {
            let mut c = BrokerCredentials::load_or_create(&data_dir(config)?)?;
            if c.revoke(&username)? {
                println!("revoked {username}");
            } else {
                anyhow::bail!("no credential {username}");
            }
        }
    }
    Ok(())
}
