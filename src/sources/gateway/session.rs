//! One TCP connection's protocol state: who the device is (after login), what each
//! frame becomes (a reply now, or a delivery whose reply waits for the commit).

use std::net::SocketAddr;

use bytes::Bytes;
use hmac::{KeyInit, Mac};

use super::{rejected, Identity, Shared};
use crate::pipeline::delivery::{Body, DevicePosition, DeviceReport, Unusable};
use crate::sources::device::{gt06, jt808, teltonika, Scan};

/// Protocol name of GT06 (metrics, dead letters, the devices list).
pub const GT06: &str = "gt06";
/// Protocol name of JT/T 808.
pub const JT808: &str = "jt808";
/// Protocol name of Teltonika.
pub const TELTONIKA: &str = "teltonika";
/// Protocol name of OsmAnd (HTTP).
pub const OSMAND: &str = "osmand";

/// The protocol a TCP listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Concox GT06.
    Gt06,
    /// JT/T 808.
    Jt808,
    /// Teltonika (TCP after the IMEI handshake, or UDP).
    Teltonika,
    /// OsmAnd over HTTP (one request, one position: no framing).
    Osmand,
}

impl Kind {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Gt06 => GT06,
            Kind::Jt808 => JT808,
            Kind::Teltonika => TELTONIKA,
            Kind::Osmand => OSMAND,
        }
    }
}

/// What the connection does for one frame, in order.
#[derive(Debug)]
pub enum Out {
    /// Send this at once (behind the replies already waiting).
    Reply(Vec<u8>),
    /// Hand this to the pipeline; send the reply (if any) once it is committed.
    Deliver {
        /// What to store.
        body: Body,
        /// The device's answer.
        reply: Option<Vec<u8>>,
    },
    /// Close once the replies waiting are sent.
    Close,
}

/// A connection's protocol state.
pub struct Session {
    kind: Kind,
    remote: SocketAddr,
    who: Option<Identity>,
    /// Driver card at a JT/T 808 reader: given to the positions that follow.
    driver: Option<String>,
    /// Serial of the platform's JT/T 808 messages.
    serial: u16,
}

impl Session {
    /// A new connection from `remote`.
    pub fn new(kind: Kind, remote: SocketAddr) -> Self {
        Self {
            kind,
            remote,
            who: None,
            driver: None,
            serial: 0,
        }
    }

    /// A session of a datagram or request whose device is already known.
    pub fn identified(kind: Kind, remote: SocketAddr, who: Option<Identity>) -> Self {
        Self {
            who,
            ..Self::new(kind, remote)
        }
    }

    /// The protocol's name.
    pub fn protocol(&self) -> &'static str {
        self.kind.name()
    }

    /// The device, once logged in.
    pub fn who(&self) -> Option<&Identity> {
        self.who.as_ref()
    }

    /// Finds the next frame in `buf`.
    pub fn scan(&self, buf: &[u8]) -> Scan {
        match self.kind {
            Kind::Gt06 => gt06::scan(buf),
            Kind::Jt808 => jt808::scan(buf),
            Kind::Teltonika if self.who.is_none() => teltonika::scan_imei(buf),
            Kind::Teltonika => teltonika::scan(buf),
            // Requests arrive whole (HTTP frames them).
            Kind::Osmand => Scan::Frame(buf.len().max(1)),
        }
    }

    /// Dead-letter topic of this connection's frames.
    fn source(&self) -> String {
        match &self.who {
            Some(w) => format!("{}/{}", self.protocol(), w.device_id),
            None => format!("{}@{}", self.protocol(), self.remote.ip()),
        }
    }

    /// A frame (or bytes) kept as a dead letter.
    pub fn unusable(&self, bytes: Bytes, reason: &'static str, detail: String) -> Body {
        rejected(self.protocol(), reason);
        Body::Unusable(Unusable {
            source: self.source(),
            bytes,
            reason,
            detail: format!("{detail} (from {})", self.remote),
        })
    }

    /// Positions of the logged-in device, for the pipeline.
    pub fn report(&self, frame: Bytes, positions: Vec<DevicePosition>) -> Body {
        let who = self.who.as_ref().expect("positions only after login");
        metrics::counter!("fleetwatch_gateway_positions_total", "protocol" => self.protocol())
            .increment(positions.len() as u64);
        Body::Device(DeviceReport {
            protocol: self.protocol(),
            source: self.source(),
            remote: self.remote.to_string(),
            vehicle: who.vehicle.clone(),
            cooperative: who.cooperative.clone(),
            frame,
            positions,
        })
    }

    /// A frame before login: kept, and the connection closed (the device logs in when
    /// it reconnects).
    fn before_login(&self, frame: Bytes) -> Vec<Out> {
        let detail = "frame before the device logged in: it cannot be attributed".to_string();
        vec![
            Out::Deliver {
                body: self.unusable(frame, "before_login", detail),
                reply: None,
            },
            Out::Close,
        ]
    }

    /// Handles one whole frame as [`Session::scan`] delimited it.
    pub fn frame(&mut self, frame: Bytes, shared: &Shared) -> Vec<Out> {
        metrics::counter!("fleetwatch_gateway_frames_total", "protocol" => self.protocol())
            .increment(1);
        // Counted for a device that was logged in before this frame (not its login).
        let logged_in = self.who.is_some();
        let out = match self.kind {
            Kind::Gt06 => self.gt06(frame, shared),
            Kind::Jt808 => self.jt808(frame, shared),
            Kind::Teltonika => self.teltonika(frame, shared),
            Kind::Osmand => Vec::new(),
        };
        if let Some(w) = self.who.as_ref().filter(|_| logged_in) {
            let n: usize = out
                .iter()
                .map(|o| match o {
                    Out::Deliver {
                        body: Body::Device(r),
                        ..
                    } => r.positions.len(),
                    _ => 0,
                })
                .sum();
            shared.book.heard(self.protocol(), &w.device_id, n);
        }
        out
    }

    fn gt06(&mut self, frame: Bytes, shared: &Shared) -> Vec<Out> {
        let f = match gt06::parse(&frame) {
            Ok(f) => f,
            Err(e) => {
                return vec![Out::Deliver {
                    body: self.unusable(frame.clone(), e.label(), e.to_string()),
                    reply: None,
                }]
            }
        };
        let offset = shared.utc_offset_s(
            GT06,
            self.who.as_ref().map(|w| w.device_id.as_str()),
            &shared.cfg.gt06,
            0,
        );
        let reply = gt06::reply(&f);
        let msg = match gt06::decode(&f, offset) {
            Ok(m) => m,
            Err(e) => {
                return vec![Out::Deliver {
                    body: self.unusable(frame.clone(), e.label(), e.to_string()),
                    reply,
                }]
            }
        };
        match msg {
            gt06::Message::Login { imei } => match shared.identify(GT06, &imei, self.remote) {
                Some(w) => {
                    self.who = Some(w);
                    reply.map(Out::Reply).into_iter().collect()
                }
                None => vec![Out::Close],
            },
            _ if self.who.is_none() => self.before_login(frame.clone()),
            gt06::Message::Heartbeat { .. } => reply.map(Out::Reply).into_iter().collect(),
            gt06::Message::Position(p) => vec![Out::Deliver {
                body: self.report(frame.clone(), vec![p]),
                reply,
            }],
            gt06::Message::Unsupported => {
                let detail = format!("GT06 protocol number {:#04x} is not used", f.protocol);
                vec![Out::Deliver {
                    body: self.unusable(frame.clone(), "unsupported", detail),
                    reply,
                }]
            }
        }
    }

    fn next_serial(&mut self) -> u16 {
        self.serial = self.serial.wrapping_add(1);
        self.serial
    }

    fn jt808(&mut self, frame: Bytes, shared: &Shared) -> Vec<Out> {
        use jt808::Outcome;
        let f = match jt808::parse(&frame) {
            Ok(f) => f,
            Err(e) => {
                return vec![Out::Deliver {
                    body: self.unusable(frame, e.label(), e.to_string()),
                    reply: None,
                }]
            }
        };
        let serial = self.next_serial();
        let respond = |outcome| jt808::general_response(&f, outcome, serial);
        if let Some(w) = &self.who {
            if w.device_id != f.phone {
                let detail = format!(
                    "terminal {} on the connection of terminal {}",
                    f.phone, w.device_id
                );
                return vec![Out::Deliver {
                    body: self.unusable(frame, "device_mismatch", detail),
                    reply: Some(respond(Outcome::Failure)),
                }];
            }
        }
        let offset = shared.utc_offset_s(
            JT808,
            Some(&f.phone),
            &shared.cfg.jt808,
            super::JT808_DEFAULT_UTC_OFFSET_S,
        );
        let msg = match jt808::decode(&f, offset) {
            Ok(m) => m,
            Err(e) => {
                return vec![Out::Deliver {
                    body: self.unusable(frame, e.label(), e.to_string()),
                    reply: Some(respond(Outcome::MessageError)),
                }]
            }
        };
        match msg {
            jt808::Message::Register { model, .. } => {
                match shared.identify(JT808, &f.phone, self.remote) {
                    Some(_) => {
                        shared.book.update(JT808, &f.phone, |d| {
                            d.model = Some(model).filter(|m| !m.is_empty())
                        });
                        let code = auth_code(&shared.jt808_secret, &f.phone);
                        vec![Out::Reply(jt808::register_response(
                            &f,
                            Some(&code),
                            serial,
                        ))]
                    }
                    None => vec![
                        Out::Reply(jt808::register_response(&f, None, serial)),
                        Out::Close,
                    ],
                }
            }
            jt808::Message::Auth { code, software, .. } => {
                let expected = auth_code(&shared.jt808_secret, &f.phone);
                let good: bool =
                    subtle::ConstantTimeEq::ct_eq(code.as_bytes(), expected.as_bytes()).into();
                if !good {
                    // The terminal registers again to get a code from this platform.
                    let detail = format!("terminal {} presented an unknown auth code", f.phone);
                    return vec![Out::Deliver {
                        body: self.unusable(frame, "auth_failed", detail),
                        reply: Some(respond(Outcome::Failure)),
                    }];
                }
                match shared.identify(JT808, &f.phone, self.remote) {
                    Some(w) => {
                        if software.is_some() {
                            shared
                                .book
                                .update(JT808, &f.phone, |d| d.firmware = software);
                        }
                        self.who = Some(w);
                        vec![Out::Reply(respond(Outcome::Ok))]
                    }
                    None => vec![Out::Reply(respond(Outcome::Failure)), Out::Close],
                }
            }
            _ if self.who.is_none() => {
                let mut out = self.before_login(frame);
                out.insert(0, Out::Reply(respond(Outcome::Failure)));
                out
            }
            jt808::Message::Heartbeat => vec![Out::Reply(respond(Outcome::Ok))],
            jt808::Message::Logout => vec![Out::Reply(respond(Outcome::Ok)), Out::Close],
            jt808::Message::Positions(mut ps) => {
                if let Some(d) = &self.driver {
                    for p in ps.iter_mut().filter(|p| p.fix.driver.is_none()) {
                        p.fix.driver = Some(d.clone());
                    }
                }
                vec![Out::Deliver {
                    body: self.report(frame, ps),
                    reply: Some(respond(Outcome::Ok)),
                }]
            }
            jt808::Message::Driver {
                licence, inserted, ..
            } => {
                // The card identifies the driver of the positions that follow.
                self.driver = if inserted { licence } else { None };
                vec![Out::Reply(respond(Outcome::Ok))]
            }
            jt808::Message::Unsupported if f.msg_id == jt808::TERMINAL_RESPONSE => Vec::new(),
            jt808::Message::Unsupported => {
                let detail = format!("JT/T 808 message {:#06x} is not used", f.msg_id);
                vec![Out::Deliver {
                    body: self.unusable(frame, "unsupported", detail),
                    reply: Some(respond(Outcome::NotSupported)),
                }]
            }
        }
    }

    fn teltonika(&mut self, frame: Bytes, shared: &Shared) -> Vec<Out> {
        if self.who.is_none() {
            let imei = match teltonika::imei(&frame) {
                Ok(i) => i,
                Err(e) => {
                    return vec![
                        Out::Deliver {
                            body: self.unusable(frame, e.label(), e.to_string()),
                            reply: Some(teltonika::imei_reply(false).to_vec()),
                        },
                        Out::Close,
                    ]
                }
            };
            return match shared.identify(TELTONIKA, &imei, self.remote) {
                Some(w) => {
                    self.who = Some(w);
                    vec![Out::Reply(teltonika::imei_reply(true).to_vec())]
                }
                None => vec![
                    Out::Reply(teltonika::imei_reply(false).to_vec()),
                    Out::Close,
                ],
            };
        }
        match teltonika::decode(&frame) {
            Ok(ps) => {
                let n = ps.len() as u32;
                vec![Out::Deliver {
                    body: self.report(frame, ps),
                    reply: Some(teltonika::reply(n).to_vec()),
                }]
            }
            // Answered with 0 records: the unit keeps them and sends them again.
            Err(e) => vec![Out::Deliver {
                body: self.unusable(frame, e.label(), e.to_string()),
                reply: Some(teltonika::reply(0).to_vec()),
            }],
        }
    }
}

/// The auth code of a JT/T 808 terminal: HMAC-SHA256 of its phone number under the
/// gateway's secret, 16 hex digits. Derived, so it survives restarts without a table.
pub fn auth_code(secret: &[u8], phone: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(phone.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..8])
}
