//! Wires the stages together, owns shutdown, drains with a deadline.
//!
//! `sources (MQTT event loops, device gateway) → pipeline (decode, validate, rules)
//! → writer (commit) → acks to each source`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Health};
use crate::config::Settings;
use crate::geo::{GeoConfig, GeoError, GeoIndex};
use crate::infra::broker::EmbeddedBroker;
use crate::infra::mqtt_gate::{AclTopics, BrokerCredentials};
use crate::infra::postgres::{EmbeddedPostgres, PgOptions};
use crate::pipeline::delivery::{Ack, Delivery};
use crate::pipeline::topic::{subscription, TopicPattern};
use crate::pipeline::validate::Validator;
use crate::pipeline::{self, Stage};
use crate::rules::Engine;
use crate::sources::gateway::Gateway;
use crate::sources::mqtt::{self, MqttAcker};
use crate::sources::Acks;
use crate::store::lease;
use crate::store::migrate::{self, Layout};
use crate::store::outbox;
use crate::store::writer::{self, Item};
use crate::{store, telemetry};

/// A running fleetwatch instance.
pub struct App {
    /// The database in use.
    pub db_url: String,
    /// The broker in use.
    pub mqtt_url: String,
    /// Where the HTTP server listens.
    pub http_addr: SocketAddr,
    /// Storage layout after migration.
    pub layout: Layout,
    /// Readiness flags.
    pub health: Arc<Health>,
    /// The device listeners running (protocol, address).
    pub gateway: Vec<(&'static str, SocketAddr)>,
    shutdown: CancellationToken,
    tasks: JoinHandle<()>,
    /// Failover: fires when leadership is lost.
    lost: Option<CancellationToken>,
    // Dropped last: stops the private server after the writer is done.
    pg: Option<EmbeddedPostgres>,
}

/// Resolves the database: the configured URL, or a private server (started here).
pub async fn database(settings: &Settings) -> anyhow::Result<(String, Option<EmbeddedPostgres>)> {
    if !settings.database.url.is_empty() {
        return Ok((settings.database.url.clone(), None));
    }
    let opts = PgOptions {
        data_dir: settings.database.data_dir.join("postgres"),
        fast_unsafe: false,
        timescaledb: true,
    };
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts))
        .await
        .context("starting the private PostgreSQL")??;
    pg.ensure_database(&settings.database.name).await?;
    let url = pg.url(&settings.database.name);
    Ok((url, Some(pg)))
}

/// Resolves the broker: the configured URL, or the embedded broker (started here),
/// whose credentials are generated at first start in the data directory.
pub fn broker(settings: &Settings) -> anyhow::Result<String> {
    if !settings.mqtt.url.is_empty() {
        return Ok(settings.mqtt.url.clone());
    }
    let creds = BrokerCredentials::load_or_create(&settings.database.data_dir)?;
    let topics = AclTopics {
        fix: TopicPattern::parse(&settings.mqtt.topic)?,
        alert: alert_topic(settings).to_string(),
    };
    let b =
        EmbeddedBroker::start_with(settings.embedded_broker.port, creds.clone(), topics.clone())
            .or_else(|_| EmbeddedBroker::start_with(0, creds, topics))
            .context("starting the embedded MQTT broker")?;
    tracing::info!(devices = %b.device_url(), "embedded MQTT broker started (devices need credentials: fleetwatch device-credentials create)");
    Ok(b.url())
}

fn alert_topic(settings: &Settings) -> &str {
    if settings.alert_topic.is_empty() {
        "fleet/{cooperative}/{vehicle}/alert"
    } else {
        settings.alert_topic.as_str()
    }
}

impl App {
    /// Starts every stage. Stop with [`App::shutdown`] then [`App::wait`].
    pub async fn start(settings: Settings) -> anyhow::Result<App> {
        Ok(
            Self::start_with(settings, async |_: &tokio_postgres::Client| Ok(()))
                .await?
                .0,
        )
    }

    /// [`App::start`], running `prepare` on the migrated database before anything
    /// reads it (the rule state, the registry): the demo clears or inspects its data.
    pub async fn start_with<T>(
        settings: Settings,
        prepare: impl AsyncFnOnce(&tokio_postgres::Client) -> anyhow::Result<T>,
    ) -> anyhow::Result<(App, T)> {
        let started = Self::start_leading(settings, prepare, CancellationToken::new()).await?;
        Ok(started.expect("only a cancelled stop ends the wait for leadership"))
    }

    /// [`App::start`] for `fleetwatch run`: with `[ha]` on, waits as a standby until
    /// it leads (`None` when `stop` fires first); then as without.
    pub async fn start_when_leading(
        settings: Settings,
        stop: CancellationToken,
    ) -> anyhow::Result<Option<App>> {
        let started =
            Self::start_leading(settings, async |_: &tokio_postgres::Client| Ok(()), stop).await?;
        Ok(started.map(|(app, ())| app))
    }

    async fn start_leading<T>(
        settings: Settings,
        prepare: impl AsyncFnOnce(&tokio_postgres::Client) -> anyhow::Result<T>,
        stop: CancellationToken,
    ) -> anyhow::Result<Option<(App, T)>> {
        let metrics = telemetry::metrics_handle();
        let pattern = TopicPattern::parse(&settings.mqtt.topic)?;
        check_ha(&settings)?;
        let (db_url, pg) = database(&settings).await?;
        let mut client = store::connect(&db_url)
            .await
            .with_context(|| format!("connecting to {}", redact(&db_url)))?;
        let layout = migrate::migrate(&mut client, &settings.database.layout).await?;
        // A standby waits here: it neither writes nor connects to the broker, and the
        // rule state it restores below is the one the old leader last committed.
        let fence = match settings.ha.enabled {
            true => {
                let holder = lease::holder_id();
                match lease::acquire(&client, &settings.ha, &holder, &stop).await? {
                    Some(f) => Some(f),
                    None => return Ok(None),
                }
            }
            false => None,
        };
        let prepared = prepare(&client).await?;
        store::rollup::ensure(&mut client, settings.rules.utc_offset, layout).await?;
        // The configuration's vehicles, then every registered one (admin changes too).
        store::registry::register(&client, &settings.vehicles).await?;
        store::deliver::destinations::apply_config(&mut client, &settings.deliveries.destinations)
            .await
            .context("applying [[deliveries.destinations]]")?;
        let registry = store::registry::load(&client).await?;
        let (registry_tx, registry_rx) = watch::channel(Arc::new(registry.clone()));
        let mqtt_url = broker(&settings)?;

        let shutdown = CancellationToken::new();
        let health = Arc::new(Health::default());
        health
            .database
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let http = bind_http(settings.http.listen).await?;
        let http_addr = http.local_addr()?;

        let n_conn = match settings.mqtt.connections {
            0 if settings.mqtt.url.is_empty() => 4,
            0 => 1,
            n => n,
        };
        // Several connections split the load through a shared subscription.
        let group = settings
            .mqtt
            .share_group
            .clone()
            .or_else(|| (n_conn > 1).then(|| "fleetwatch".to_string()));
        let subs = vec![subscription(&pattern.filter(), group.as_deref())];
        const ITEM_QUEUE: usize = 1024;
        let ack_room =
            settings.mqtt.channel_capacity + ITEM_QUEUE + 2 * settings.batch.max_records + 1024;
        let mut clients = Vec::with_capacity(n_conn);
        let mut eventloops = Vec::with_capacity(n_conn);
        for k in 0..n_conn {
            let mut cfg = settings.mqtt.clone();
            if k > 0 {
                cfg.client_id = format!("{}-{k}", cfg.client_id);
            }
            let (c, e) = mqtt::client(&cfg, &mqtt_url, ack_room)?;
            clients.push(c);
            eventloops.push(e);
        }
        let (dtx, drx) = mpsc::channel::<Delivery>(settings.mqtt.channel_capacity.max(1));
        let (itx, irx) = mpsc::channel::<Item<Ack>>(ITEM_QUEUE);
        let disconnect = CancellationToken::new();
        let alerts_ready = writer::AlertsReady::default();

        // Writer first: the restore below sends it the alerts of the replay.
        let wr = tokio::spawn(writer::run(
            db_url.clone(),
            settings.batch.clone(),
            irx,
            Acks {
                mqtt: Some(MqttAcker(clients.clone())),
            },
            shutdown.clone(),
            health.clone(),
            alerts_ready.clone(),
            fence.clone(),
        ));
        let geo_index = Arc::new(settings.geo.load().context("loading routes and zones")?);
        if let Err(e) = store::geo_versions::record(&client, &geo_index, &settings.geo).await {
            tracing::warn!(error = %e, "could not record the geography in use");
        }
        let (geo_tx, geo_rx) = watch::channel(geo_index.clone());
        let geo_view = geo_rx.clone();
        let geo_recorder = tokio::spawn(record_reloads(
            db_url.clone(),
            geo_rx.clone(),
            settings.geo.clone(),
            shutdown.clone(),
        ));
        let reloader = Arc::new(GeoReloader {
            cfg: settings.geo.clone(),
            tx: geo_tx,
        });
        let mut stage = Stage {
            validator: Validator::new(pattern, settings.validation.clone(), &registry)
                .with_owners(store::registry::owners(&client).await?),
            engine: Engine::new(settings.rules.clone(), geo_index, registry),
            checkpoint_every: Duration::from_secs(settings.checkpoint.interval_s.max(1)),
            rules: !settings.disable_rules,
            recompute: Default::default(),
        };
        if settings.checkpoint.replay_horizon_h.is_some() {
            tracing::warn!("checkpoint.replay_horizon_h is no longer used: a vehicle without a checkpoint is rebuilt from the start of its local week");
        }
        let (restored, replayed) = pipeline::restore(
            &client,
            &mut stage,
            settings.validation.limits.max_age_s,
            &itx,
        )
        .await
        .context("restoring rule state")?;
        tracing::info!(restored, replayed, "rule state restored");

        // Incidents (a lost broker session) are stored by their own task.
        let (incident_tx, incident_rx) = mpsc::channel(64);
        let incident_task = tokio::spawn(store::incidents::run(
            db_url.clone(),
            incident_rx,
            fence.clone(),
            disconnect.clone(),
        ));
        let client_ids: Vec<String> = (0..n_conn)
            .map(|k| match k {
                0 => settings.mqtt.client_id.clone(),
                k => format!("{}-{k}", settings.mqtt.client_id),
            })
            .collect();
        // The device gateway feeds the same pipeline; its connections stop reading at
        // shutdown and send the replies of what is committed before they close. Up
        // before the MQTT consumers, so a confirmed subscription means every source is.
        let gateway = match settings.gateway.any() {
            true => Some(
                Gateway::start(
                    &settings.gateway,
                    &db_url,
                    &settings.database.data_dir,
                    registry_rx.clone(),
                    dtx.clone(),
                    shutdown.clone(),
                )
                .await
                .context("starting the device gateway")?,
            ),
            false => None,
        };
        let devices = gateway.as_ref().map(|g| g.book.clone()).unwrap_or_default();
        let gateway_addrs = gateway
            .as_ref()
            .map(|g| g.listening.clone())
            .unwrap_or_default();
        let gate = fence.as_ref().map(|f| broker_gate(f, &db_url));
        let ev: Vec<_> = clients
            .iter()
            .zip(eventloops)
            .enumerate()
            .map(|(k, (c, e))| {
                tokio::spawn(mqtt::run_event_loop(
                    c.clone(),
                    e,
                    subs.clone(),
                    dtx.clone(),
                    k,
                    mqtt::LoopControl {
                        stop_forwarding: shutdown.clone(),
                        disconnect: disconnect.clone(),
                        max_backoff: Duration::from_millis(settings.mqtt.max_backoff_ms),
                        health: health.clone(),
                        max_message_bytes: settings.mqtt.max_message_bytes,
                        incidents: Some(incident_tx.clone()),
                        broker: redact(&mqtt_url),
                        client_id: client_ids[k].clone(),
                        gate: gate.clone(),
                    },
                ))
            })
            .collect();
        drop(dtx);
        drop(incident_tx);
        // Its own connection: recomputations read stored fixes without waiting for others.
        let recompute_db = match crate::store::connect(&db_url).await {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::warn!(error = %e, "no database connection for recomputations: late fixes wait");
                None
            }
        };
        let pipe = tokio::spawn(pipeline::run(
            drx,
            itx,
            stage,
            geo_rx,
            registry_rx,
            recompute_db,
        ));
        let alert_topic = alert_topic(&settings);
        // Alerts go out on their own connection, so waiting for their acknowledgements
        // never competes with the consumers' acks.
        let mut pub_cfg = settings.mqtt.clone();
        pub_cfg.client_id = format!("{}-alerts", settings.mqtt.client_id);
        let (pub_client, pub_loop) = mqtt::client(&pub_cfg, &mqtt_url, 1024)?;
        let outbox = tokio::spawn(outbox::run(
            db_url.clone(),
            outbox::Publisher {
                client: pub_client,
                eventloop: pub_loop,
            },
            TopicPattern::parse(alert_topic)?,
            alerts_ready.outbox.clone(),
            disconnect.clone(),
            fence.clone(),
        ));
        // Deliveries stop with the outbox: after the drain, so the last alerts committed
        // are fanned out (and sent, if their destinations answer) before the exit.
        let deliveries = settings.deliveries.enabled.then(|| {
            tokio::spawn(store::deliver::run(
                db_url.clone(),
                settings.deliveries.clone(),
                settings.rules.utc_offset.seconds(),
                alerts_ready.deliveries.clone(),
                fence.clone(),
                disconnect.clone(),
            ))
        });
        let hup = tokio::spawn(reload_on_sighup(reloader.clone(), shutdown.clone()));
        let probe = tokio::spawn(store::probe::run(
            db_url.clone(),
            Duration::from_millis(settings.database.probe_interval_ms.max(10)),
            Duration::from_millis(settings.database.probe_timeout_ms.max(10)),
            health.clone(),
            shutdown.clone(),
        ));
        let state = AppState {
            health: health.clone(),
            metrics,
            reload_geo: Some(reloader),
            db: api::pool_with(&db_url, &settings.database)?,
            settings: Arc::new(settings.clone()),
            geo: geo_view,
            registry: Arc::new(registry_tx),
            heavy: api::HeavyLimiter::new(settings.http.max_heavy_requests_per_token),
            devices,
            live: api::stream::LiveFeed::new(shutdown.clone()),
        };
        let live = tokio::spawn(api::stream::run(
            state.live.clone(),
            state.clone(),
            shutdown.clone(),
        ));
        let http_stop = shutdown.clone();
        let srv = tokio::spawn(async move {
            let r = axum::serve(http, api::router(state))
                .with_graceful_shutdown(http_stop.cancelled_owned())
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        let retention = (layout == Layout::Plain).then(|| {
            tokio::spawn(retention_loop(
                client,
                settings.database.layout.retention_days,
                fence.clone(),
                shutdown.clone(),
            ))
        });

        // Failover: renew the lease until everything has stopped; on losing it, stop
        // at once (the consumers end without reconnecting: see `broker_gate`).
        let lease_done = CancellationToken::new();
        let db_url_for_lease = db_url.clone();
        let lease_task = fence.clone().map(|f| {
            let (shutdown, disconnect, done) =
                (shutdown.clone(), disconnect.clone(), lease_done.clone());
            let lost = f.lost().clone();
            tokio::spawn(async move {
                let keeper = tokio::spawn(f.keep(db_url_for_lease, done.clone()));
                tokio::select! {
                    _ = lost.cancelled() => {
                        disconnect.cancel();
                        shutdown.cancel();
                    }
                    _ = done.cancelled() => {}
                }
                let _ = keeper.await;
            })
        });
        let deadline = Duration::from_secs(settings.shutdown_deadline_s);
        let stop = shutdown.clone();
        let tasks = tokio::spawn(async move {
            stop.cancelled().await;
            // Drain: the event loop stops forwarding, the pipeline empties into the
            // writer, the writer commits and acks; only then disconnect.
            let drained = tokio::time::timeout(deadline, async {
                let _ = pipe.await;
                let _ = wr.await;
                if let Some(g) = gateway {
                    g.join().await;
                }
            })
            .await;
            if drained.is_err() {
                tracing::warn!("shutdown deadline passed; unacked messages will be redelivered");
            }
            disconnect.cancel();
            let _ = outbox.await;
            if let Some(d) = deliveries {
                let _ = d.await;
            }
            let _ = incident_task.await;
            let _ = hup.await;
            let _ = probe.await;
            let _ = live.await;
            let _ = geo_recorder.await;
            let _ =
                tokio::time::timeout(Duration::from_secs(5), futures_util::future::join_all(ev))
                    .await;
            // A client that stopped reading a streamed response must not hold the
            // process: connections still open after the deadline are cut.
            let mut srv = srv;
            if tokio::time::timeout(deadline, &mut srv).await.is_err() {
                tracing::warn!(
                    "HTTP connections still open after the shutdown deadline; closing them"
                );
                srv.abort();
            }
            if let Some(r) = retention {
                let _ = r.await;
            }
            // Last: the lease is released only once nothing of this instance writes.
            lease_done.cancel();
            if let Some(t) = lease_task {
                let _ = t.await;
            }
        });
        tracing::info!(%http_addr, mqtt = %redact(&mqtt_url), database = %redact(&db_url), ?layout, "fleetwatch running");
        let app = App {
            db_url,
            mqtt_url,
            http_addr,
            layout,
            health,
            gateway: gateway_addrs,
            shutdown,
            tasks,
            pg,
            lost: fence.map(|f| f.lost().clone()),
        };
        Ok(Some((app, prepared)))
    }

    /// Resolves when this instance lost leadership (it is then stopping by itself);
    /// never without `[ha]`.
    pub async fn stepped_down(&self) {
        match &self.lost {
            Some(l) => l.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// Whether this instance lost leadership (`[ha]`).
    pub fn lost_leadership(&self) -> bool {
        self.lost.as_ref().is_some_and(|l| l.is_cancelled())
    }

    /// Asks every stage to stop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every stage has stopped; then stops the private database.
    pub async fn wait(mut self) {
        let _ = (&mut self.tasks).await;
        // A server another live process started stays running for it.
        if let Some(mut pg) = self.pg.take().filter(|pg| !pg.reused()) {
            let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
        }
    }
}

/// `[ha]` needs what outlives an instance: an external broker and database.
fn check_ha(settings: &Settings) -> anyhow::Result<()> {
    if !settings.ha.enabled {
        return Ok(());
    }
    if settings.mqtt.url.is_empty() {
        anyhow::bail!("ha.enabled needs an external broker (set mqtt.url): the embedded broker lives inside one instance and cannot fail over");
    }
    if settings.database.url.is_empty() {
        anyhow::bail!("ha.enabled needs an external database (set database.url): the private PostgreSQL lives beside one instance and cannot be shared");
    }
    if settings.ha.name.is_empty() {
        anyhow::bail!("ha.name must not be empty");
    }
    Ok(())
}

/// The consumers' failover gate: before each reconnection, the database must confirm
/// this instance still leads; leadership lost ends them without another poll.
fn broker_gate(f: &lease::Fence, db_url: &str) -> mqtt::Gate {
    let (fence, url) = (f.clone(), db_url.to_string());
    mqtt::Gate {
        abandon: f.lost().clone(),
        may_connect: Arc::new(move || {
            let (fence, url) = (fence.clone(), url.clone());
            Box::pin(async move {
                loop {
                    let asked = match store::connect(&url).await {
                        Ok(c) => fence.confirm(&c).await,
                        Err(e) => Err(e),
                    };
                    match asked {
                        Ok(leads) => return leads,
                        Err(e) => {
                            tracing::warn!(error = %e, "ha: cannot confirm leadership; not reconnecting to the broker until the database answers")
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = fence.lost().cancelled() => return false,
                    }
                }
            })
        }),
    }
}

/// Binds `http.listen`; a taken address is an error naming it (port 0: any free port).
async fn bind_http(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on http.listen = {addr} (in use by another process?); free it or set another address (port 0: any free port)")
    })
}

/// Writes the configured registry into `vehicles` (registered = true).
async fn retention_loop(
    mut client: tokio_postgres::Client,
    days: u32,
    fence: Option<lease::Fence>,
    stop: CancellationToken,
) {
    if let Some(f) = &fence {
        if let Err(e) = f.prepare(&client).await {
            tracing::warn!(error = %e, "retention: not run (no fenced session)");
            return;
        }
    }
    loop {
        let r = match &fence {
            Some(f) => migrate::enforce_retention_fenced(&mut client, days, f).await,
            None => migrate::enforce_retention(&client, days).await,
        };
        match r {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, days, "retention: old fixes deleted"),
            Err(store::StoreError::Fenced { .. }) => return,
            Err(e) => tracing::warn!(error = %e, "retention run failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// A URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Rebuilds the geo index from its sources and hands it to the rules (SIGHUP, API).
pub struct GeoReloader {
    cfg: GeoConfig,
    tx: watch::Sender<Arc<GeoIndex>>,
}

impl GeoReloader {
    /// Loads the sources again; on error the old index stays in use.
    pub fn reload(&self) -> Result<(usize, usize), GeoError> {
        let g = self.cfg.load()?;
        let counts = (g.route_count(), g.zone_count());
        self.tx.send_replace(Arc::new(g));
        Ok(counts)
    }
}

/// Records every reloaded geography (SIGHUP, API) for `replay --rules`.
async fn record_reloads(
    db_url: String,
    mut rx: watch::Receiver<Arc<GeoIndex>>,
    sources: GeoConfig,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
        let g = rx.borrow_and_update().clone();
        let recorded = match store::connect(&db_url).await {
            Ok(c) => store::geo_versions::record(&c, &g, &sources).await,
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "could not record the reloaded geography");
        }
    }
}

async fn reload_on_sighup(r: Arc<GeoReloader>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => match r.reload() {
                Ok((routes, zones)) => tracing::info!(routes, zones, "SIGHUP: routes and zones reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed; keeping the current routes and zones"),
            },
            _ = stop.cancelled() => return,
        }
    }
}
