//! Teltonika over UDP: each datagram carries the unit's IMEI and its records; the
//! answer (the number of records accepted) goes back once they are committed.

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::session::{Kind, Session, TELTONIKA};
use super::Shared;
use crate::sources::device::teltonika;

/// Datagrams waiting for their commit at once; reading stops at this many.
const IN_FLIGHT: usize = 4096;

/// Serves the socket until the gateway stops, then waits for the answers due.
pub(super) async fn serve(sock: UdpSocket, shared: Arc<Shared>) {
    let sock = Arc::new(sock);
    let room = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut answers = JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let permit = tokio::select! {
            p = room.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shared.stop.cancelled() => break,
        };
        let (n, remote) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP port unreachable from an earlier answer and the like.
                    tracing::debug!(error = %e, "UDP receive failed");
                    continue;
                }
            },
            Some(_) = answers.join_next(), if !answers.is_empty() => continue,
            _ = shared.stop.cancelled() => break,
        };
        let data = Bytes::copy_from_slice(&buf[..n]);
        metrics::counter!("fleetwatch_gateway_frames_total", "protocol" => TELTONIKA).increment(1);
        let (body, answer) = match teltonika::decode_udp(&data) {
            Ok(d) => match shared.identify(TELTONIKA, &d.imei, remote) {
                Some(who) => {
                    let count = d.positions.len().min(255) as u8;
                    let answer = teltonika::reply_udp(&d, count);
                    let s = Session::identified(Kind::Teltonika, remote, Some(who));
                    shared.book.heard(TELTONIKA, &d.imei, usize::from(count));
                    (s.report(data.clone(), d.positions), Some(answer))
                }
                // Refused: no answer, so a unit that is registered later sends again.
                None => continue,
            },
            Err(e) => {
                let s = Session::identified(Kind::Teltonika, remote, None);
                (s.unusable(data.clone(), e.label(), e.to_string()), None)
            }
        };
        let (d, rx) = super::delivery(body);
        if shared.tx.send(d).await.is_err() {
            break;
        }
        let sock = sock.clone();
        answers.spawn(async move {
            if rx.await.is_ok() {
                if let Some(a) = answer {
                    let _ = sock.send_to(&a, remote).await;
                }
            }
            drop(permit);
        });
    }
    while answers.join_next().await.is_some() {}
}
