//! The devices the gateway has heard, kept across restarts (`gateway_devices`): what
//! `GET /api/v1/devices` lists, and the model a JT/T 808 terminal gave when it
//! registered (terminals authenticate without registering again, and their time
//! zone may be the model's).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::StoreError;

/// State of one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceStatus {
    /// Protocol it speaks.
    pub protocol: &'static str,
    /// Its id.
    pub device_id: String,
    /// Its vehicle (`None`: refused).
    pub vehicle: Option<String>,
    /// The vehicle's cooperative (`None`: refused).
    pub cooperative: Option<String>,
    /// `registered`, `unregistered` (accepted unknown) or `refused`.
    pub status: &'static str,
    /// Connected to this instance now.
    pub connected: bool,
    /// Remote address of the last connection.
    pub remote: String,
    /// Last login (or refusal).
    pub last_connection: DateTime<Utc>,
    /// Last frame received after login.
    pub last_frame: Option<DateTime<Utc>>,
    /// Logins (and refusals), all time.
    pub connections: i64,
    /// Frames received, all time.
    pub frames: i64,
    /// Positions received, all time.
    pub positions: i64,
    /// Model, where the protocol says it (JT/T 808 registration).
    pub model: Option<String>,
    /// Firmware version, where the protocol says it.
    pub firmware: Option<String>,
}

/// Protocol names the gateway uses.
const PROTOCOLS: [&str; 4] = ["gt06", "jt808", "teltonika", "osmand"];
/// Device statuses.
const STATUSES: [&str; 3] = ["registered", "unregistered", "refused"];

fn known(list: &[&'static str], s: &str) -> Option<&'static str> {
    list.iter().copied().find(|p| *p == s)
}

/// Every stored device (not connected: this instance has just started).
pub async fn load(c: &Client) -> Result<Vec<DeviceStatus>, StoreError> {
    let rows = c
        .query(
            "SELECT protocol, device_id, vehicle_id, cooperative_id, status, remote, last_connection,
                    last_frame, connections, frames, positions, model, firmware
             FROM gateway_devices",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(DeviceStatus {
                protocol: known(&PROTOCOLS, r.get(0))?,
                device_id: r.get(1),
                vehicle: r.get(2),
                cooperative: r.get(3),
                status: known(&STATUSES, r.get(4))?,
                connected: false,
                remote: r.get(5),
                last_connection: r.get(6),
                last_frame: r.get(7),
                connections: r.get(8),
                frames: r.get(9),
                positions: r.get(10),
                model: r.get(11),
                firmware: r.get(12),
            })
        })
        .collect())
}

/// Stores `devices` as they are now (one statement per device, in one transaction).
pub async fn save(c: &mut Client, devices: &[DeviceStatus]) -> Result<(), StoreError> {
    let tx = c.transaction().await?;
    let st = tx
        .prepare(
            "INSERT INTO gateway_devices (protocol, device_id, vehicle_id, cooperative_id, status,
                 remote, last_connection, last_frame, connections, frames, positions, model, firmware)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (protocol, device_id) DO UPDATE SET vehicle_id = EXCLUDED.vehicle_id,
                 cooperative_id = EXCLUDED.cooperative_id, status = EXCLUDED.status,
                 remote = EXCLUDED.remote, last_connection = EXCLUDED.last_connection,
                 last_frame = EXCLUDED.last_frame, connections = EXCLUDED.connections,
                 frames = EXCLUDED.frames, positions = EXCLUDED.positions,
                 model = COALESCE(EXCLUDED.model, gateway_devices.model),
                 firmware = COALESCE(EXCLUDED.firmware, gateway_devices.firmware)",
        )
        .await?;
    for d in devices {
        tx.execute(
            &st,
            &[
                &d.protocol,
                &d.device_id,
                &d.vehicle,
                &d.cooperative,
                &d.status,
                &d.remote,
                &d.last_connection,
                &d.last_frame,
                &d.connections,
                &d.frames,
                &d.positions,
                &d.model,
                &d.firmware,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
