//! TCP listeners: accept within the connection limit, then one task per connection
//! that reads frames, hands what they carry to the pipeline, and writes each reply
//! in order once its frame is committed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::session::{Kind, Out, Session};
use super::Shared;
use crate::pipeline::delivery::Body;
use crate::sources::device::Scan;

/// Longest wait for a device to take a reply.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of a run of garbage (or an overlong frame) kept in its dead letter.
const KEPT_BYTES: usize = 4096;

/// Accepts connections until the gateway stops, then waits for them to finish.
pub(super) async fn accept(listener: TcpListener, shared: Arc<Shared>, kind: Kind) {
    let limit = Arc::new(Semaphore::new(shared.cfg.max_connections.max(1)));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, remote)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        metrics::counter!("fleetwatch_gateway_connections_refused_total",
                            "protocol" => kind.name(), "reason" => "max_connections").increment(1);
                        tracing::warn!(protocol = kind.name(), %remote, "connection refused: gateway.max_connections reached");
                        drop(stream);
                        continue;
                    };
                    let shared = shared.clone();
                    conns.spawn(async move {
                        serve(stream, remote, kind, &shared).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, never stop.
                    tracing::warn!(protocol = kind.name(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shared.stop.cancelled() => break,
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// A reply waiting to be written: after its frame's commit, if it has one.
struct Pending {
    committed: Option<oneshot::Receiver<()>>,
    reply: Option<Vec<u8>>,
    since: Instant,
}

/// Frames per second of one connection: a token bucket; a sender over the rate is
/// made to wait (its bytes wait in the socket), not dropped.
struct Throttle {
    per_s: f64,
    tokens: f64,
    at: Instant,
}

impl Throttle {
    fn new(per_s: u32) -> Self {
        let per_s = f64::from(per_s.max(1));
        Self {
            per_s,
            tokens: per_s,
            at: Instant::now(),
        }
    }

    async fn take(&mut self) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_s).min(self.per_s);
        self.at = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.per_s);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.at = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Waits for the commit of the oldest frame still waiting for one.
async fn front_committed(pending: &mut VecDeque<Pending>) -> Result<(), oneshot::error::RecvError> {
    match pending.front_mut().and_then(|p| p.committed.as_mut()) {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The device closed it (or the network failed).
    Peer,
    /// No frame within the idle timeout.
    Idle,
    /// The protocol says so (refused login, logout, a frame before login...).
    Protocol,
    /// More bytes than `max_buffer_bytes` without a whole frame.
    Overlong,
    /// The gateway stops.
    Shutdown,
}

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Peer => "peer",
            End::Idle => "idle",
            End::Protocol => "protocol",
            End::Overlong => "overlong",
            End::Shutdown => "shutdown",
        }
    }
}

/// Serves one connection to its end.
async fn serve(stream: TcpStream, remote: SocketAddr, kind: Kind, shared: &Shared) {
    let protocol = kind.name();
    let _ = stream.set_nodelay(true);
    let open = metrics::gauge!("fleetwatch_gateway_connections", "protocol" => protocol);
    open.increment(1.0);
    metrics::counter!("fleetwatch_gateway_connections_total", "protocol" => protocol).increment(1);
    let mut session = Session::new(kind, remote);
    let end = run(stream, &mut session, shared).await;
    open.decrement(1.0);
    metrics::counter!("fleetwatch_gateway_disconnects_total", "protocol" => protocol, "reason" => end.name())
        .increment(1);
    if let Some(w) = session.who() {
        shared
            .book
            .update(protocol, &w.device_id, |d| d.connected = false);
    }
    tracing::debug!(protocol, %remote, reason = end.name(), "device connection closed");
}

/// Reads, delivers and replies until the connection ends; `session` is left as the
/// connection ended (who the device was).
async fn run(stream: TcpStream, session: &mut Session, shared: &Shared) -> End {
    let cfg = &shared.cfg;
    let protocol = session.protocol();
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(2048);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut closing: Option<End> = None;
    let idle = Duration::from_secs(cfg.idle_timeout_s.max(1));
    let mut idle_at = Instant::now() + idle;
    let mut throttle = Throttle::new(cfg.max_frames_per_s);
    let ack_latency = metrics::histogram!("fleetwatch_gateway_ack_seconds", "protocol" => protocol);
    loop {
        // Write the replies that are due, in order: a reply never overtakes one whose
        // frame is still being stored.
        while let Some(front) = pending.front_mut() {
            if let Some(rx) = front.committed.as_mut() {
                match rx.try_recv() {
                    Ok(()) => {
                        ack_latency.record(front.since.elapsed().as_secs_f64());
                        front.committed = None;
                    }
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    // Not committed (the writer gave up at shutdown): no reply, so the
                    // device sends it again to the next instance.
                    Err(oneshot::error::TryRecvError::Closed) => {
                        return End::Shutdown;
                    }
                }
            }
            let p = pending.pop_front().expect("front exists");
            if let Some(r) = p.reply {
                // A device that stops reading holds only its own connection, and not
                // for long.
                match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&r)).await {
                    Ok(Ok(())) => {}
                    _ => return End::Peer,
                }
            }
        }
        if let Some(end) = closing {
            if pending.is_empty() {
                let _ = wr.shutdown().await;
                return end;
            }
        }
        let can_read = closing.is_none() && pending.len() < cfg.max_pending_frames.max(1);
        tokio::select! {
            r = rd.read_buf(&mut buf), if can_read => match r {
                Ok(0) | Err(_) => {
                    // What was handed to the pipeline is stored all the same; the
                    // replies have nowhere to go.
                    return End::Peer;
                }
                Ok(_) => {}
            },
            r = front_committed(&mut pending) => {
                match r {
                    Ok(()) => {
                        if let Some(front) = pending.front_mut() {
                            ack_latency.record(front.since.elapsed().as_secs_f64());
                            front.committed = None;
                        }
                    }
                    Err(_) => return End::Shutdown,
                }
                continue;
            }
            _ = tokio::time::sleep_until(idle_at), if closing.is_none() => {
                closing = Some(End::Idle);
                continue;
            }
            _ = shared.stop.cancelled(), if closing.is_none() => {
                closing = Some(End::Shutdown);
                continue;
            }
        }
        // Take every whole frame in the buffer.
        while closing.is_none() {
            match session.scan(&buf) {
                Scan::Incomplete => {
                    if buf.len() > cfg.max_buffer_bytes {
                        let size = buf.len();
                        let kept = Bytes::copy_from_slice(&buf[..size.min(KEPT_BYTES)]);
                        buf.clear();
                        let detail = format!(
                            "{size} bytes without a whole frame, over gateway.max_buffer_bytes = {}; the first {} are kept",
                            cfg.max_buffer_bytes,
                            kept.len()
                        );
                        let body = session.unusable(kept, "frame_too_long", detail);
                        if !deliver(shared, &mut pending, body, None).await {
                            return End::Shutdown;
                        }
                        closing = Some(End::Overlong);
                    }
                    break;
                }
                Scan::Garbage(n) => {
                    let n = n.clamp(1, buf.len());
                    let run = buf.split_to(n);
                    let kept = Bytes::copy_from_slice(&run[..n.min(KEPT_BYTES)]);
                    let detail = format!(
                        "{n} bytes that do not start a {protocol} frame (skipped to resynchronise)"
                    );
                    let body = session.unusable(kept, "garbage", detail);
                    if !deliver(shared, &mut pending, body, None).await {
                        return End::Shutdown;
                    }
                }
                Scan::Frame(n) => {
                    throttle.take().await;
                    idle_at = Instant::now() + idle;
                    let frame = buf.split_to(n.clamp(1, buf.len())).freeze();
                    for out in session.frame(frame, shared) {
                        match out {
                            Out::Reply(r) => pending.push_back(Pending {
                                committed: None,
                                reply: Some(r),
                                since: Instant::now(),
                            }),
                            Out::Deliver { body, reply } => {
                                if !deliver(shared, &mut pending, body, reply).await {
                                    return End::Shutdown;
                                }
                            }
                            Out::Close => closing = Some(End::Protocol),
                        }
                    }
                }
            }
        }
    }
}

/// Hands `body` to the pipeline (waiting while it is full: backpressure) and queues
/// its reply behind the commit. False when the pipeline is gone.
async fn deliver(
    shared: &Shared,
    pending: &mut VecDeque<Pending>,
    body: Body,
    reply: Option<Vec<u8>>,
) -> bool {
    let (d, rx) = super::delivery(body);
    if shared.tx.send(d).await.is_err() {
        return false;
    }
    pending.push_back(Pending {
        committed: Some(rx),
        reply,
        since: Instant::now(),
    });
    true
}
