//! OsmAnd / Traccar Client over HTTP: one position per request (query string, form
//! or JSON body), answered 200 once it is committed; the app keeps and resends a
//! position until it gets its 200.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::Router;
use tokio::net::TcpListener;

use super::session::{Kind, Session, OSMAND};
use super::Shared;
use crate::pipeline::delivery::{Body, DevicePosition};
use crate::sources::device::osmand;

/// Largest request body read, bytes (a position is a few hundred).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Serves until the gateway stops.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let stop = shared.stop.clone();
    let app = Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared);
    let r = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "OsmAnd listener failed");
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    metrics::counter!("fleetwatch_gateway_frames_total", "protocol" => OSMAND).increment(1);
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"))
        || body.first() == Some(&b'{');
    let query = uri.query().unwrap_or("");
    let (raw, decoded) = if !query.is_empty() {
        (
            Bytes::copy_from_slice(query.as_bytes()),
            osmand::decode_params(query.as_bytes()),
        )
    } else if json {
        (body.clone(), osmand::decode_json(&body))
    } else {
        (body.clone(), osmand::decode_params(&body))
    };
    // What to store, and the answer once it is stored.
    let (delivery, answer) = match decoded {
        Ok(r) => match shared.identify(OSMAND, &r.device_id, remote) {
            Some(who) => {
                shared.book.heard(OSMAND, &who.device_id, 1);
                let s = Session::identified(Kind::Osmand, remote, Some(who));
                let p = DevicePosition {
                    fix: r.fix,
                    gps_valid: true,
                    buffered: false,
                    alarms: Vec::new(),
                };
                (s.report(raw, vec![p]), (StatusCode::OK, "OK\n".to_string()))
            }
            None => {
                return (
                    StatusCode::FORBIDDEN,
                    format!("unknown device {}: register it to a vehicle\n", r.device_id),
                )
            }
        },
        Err(e) => {
            let s = Session::identified(Kind::Osmand, remote, None);
            let body = s.unusable(raw, e.label(), e.to_string());
            let detail = match &body {
                Body::Unusable(u) => format!("{}\n", u.detail),
                _ => String::new(),
            };
            // Kept as a dead letter; resending the same request would not help.
            (body, (StatusCode::BAD_REQUEST, detail))
        }
    };
    let (d, rx) = super::delivery(delivery);
    if shared.tx.send(d).await.is_err() || rx.await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    answer
}
