//! What the harness-less benchmarks share: a private PostgreSQL with the schema.

use std::path::Path;

use fleetwatch::infra::postgres::{EmbeddedPostgres, PgOptions};
use fleetwatch::store::migrate::Layout;

/// A private server in `dir` (durability off when `fast_unsafe`) with database `name`
/// migrated: the server, the database's URL, a connection and the layout in use.
pub async fn private_db(
    dir: &Path,
    fast_unsafe: bool,
    name: &str,
) -> (EmbeddedPostgres, String, tokio_postgres::Client, Layout) {
    let pg = EmbeddedPostgres::start(&PgOptions {
        data_dir: dir.to_path_buf(),
        fast_unsafe,
        timescaledb: true,
    })
    .expect("private PostgreSQL starts");
    pg.ensure_database(name).await.unwrap();
    let url = pg.url(name);
    let mut c = fleetwatch::store::connect(&url).await.unwrap();
    let layout = fleetwatch::store::migrate::migrate(&mut c, &Default::default())
        .await
        .unwrap();
    (pg, url, c, layout)
}
