//! The `fleetwatch` command: run, demo, simulate, migrate, token.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetwatch::api::auth::{self, Role};
use fleetwatch::app::App;
use fleetwatch::config::Settings;
use fleetwatch::{demo, store, telemetry};

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
        /// Simulated minutes per real minute until the fleet catches up with the clock.
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        /// How many hours of history the simulation starts with (replayed at --speed),
        /// long enough for the scripted 4-hour drive without a break.
        #[arg(long, default_value_t = 6.0)]
        history_h: f64,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration_s: Option<u64>,
    },
    /// Publish a simulated load to any broker (for demos and benchmarks).
    Simulate {
        /// Broker URL.
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        broker: String,
        /// Number of vehicles.
        #[arg(long, default_value_t = 1000)]
        vehicles: usize,
        /// Total fixes per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Stop after this many fixes (default: until Ctrl-C or --duration-s).
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration_s: Option<u64>,
        /// Topic pattern.
        #[arg(long, default_value = "fleet/{cooperative}/{vehicle}/fix")]
        topic: String,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Apply database migrations and exit.
    Migrate {
        /// TOML configuration file.
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logs();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let settings = Settings::load(config.as_deref())?;
            let app = App::start(settings).await?;
            shutdown_signal().await;
            tracing::info!("shutting down");
            app.shutdown();
            app.wait().await;
        }
        Command::Demo {
            config,
            speed,
            history_h,
            duration_s,
        } => {
            let settings = Settings::load(config.as_deref())?;
            let opts = demo::DemoOptions {
                speed,
                history_h,
                duration_s,
            };
            demo::run_demo(settings, opts, shutdown_signal()).await?;
        }
        Command::Simulate {
            broker,
            vehicles,
            rate,
            count,
            duration_s,
            topic,
        } => {
            let opts = demo::SimulateOptions {
                broker,
                vehicles,
                rate,
                count,
                duration_s,
                topic,
            };
            demo::run_simulate(opts, shutdown_signal()).await?;
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
            let settings = Settings::load(config.as_deref())?;
            let (url, pg) = fleetwatch::app::database(&settings).await?;
            let mut client = store::connect(&url).await.context("connecting")?;
            store::migrate::migrate(&mut client, &settings.database.layout).await?;
            let token =
                auth::create_token(&client, role, cooperative.as_deref(), label.as_deref()).await?;
            eprintln!("token created ({role}); it is shown only this once:");
            println!("{token}");
            drop(client);
            drop(pg);
        }
        Command::Migrate { config } => {
            let settings = Settings::load(config.as_deref())?;
            let (url, pg) = fleetwatch::app::database(&settings).await?;
            let mut client = store::connect(&url).await.context("connecting")?;
            let layout = store::migrate::migrate(&mut client, &settings.database.layout).await?;
            println!("migrated ({layout:?} layout)");
            drop(pg);
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
