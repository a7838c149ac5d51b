//! The vehicle registry, kept in the `vehicles` table: the configuration's vehicles
//! are applied at every start, and an admin adds, changes or removes vehicles through
//! the API while the service runs.

use std::str::FromStr;

use tokio_postgres::GenericClient;

use super::StoreError;
use crate::domain::{CooperativeId, Vehicle, VehicleClass, VehicleId};

/// Registers (or updates) `vehicles`; the configuration file is applied this way at
/// every start, so it wins over earlier API changes to the same vehicles. A device
/// given to a vehicle is taken off any other vehicle first: it was moved.
pub async fn register(db: &impl GenericClient, vehicles: &[Vehicle]) -> Result<(), StoreError> {
    for v in vehicles {
        if let Some(d) = &v.device_id {
            db.execute(
                "UPDATE vehicles SET device_id = NULL WHERE device_id = $1 AND vehicle_id <> $2",
                &[d, &v.id.as_str()],
            )
            .await?;
        }
        db.execute(
            "INSERT INTO vehicles (vehicle_id, cooperative_id, plate, class, route_id, device_id, registered)
             VALUES ($1, $2, $3, $4, $5, $6, true)
             ON CONFLICT (vehicle_id) DO UPDATE SET cooperative_id = EXCLUDED.cooperative_id,
                 plate = EXCLUDED.plate, class = EXCLUDED.class,
                 route_id = EXCLUDED.route_id, device_id = EXCLUDED.device_id, registered = true",
            &[
                &v.id.as_str(),
                &v.cooperative.as_str(),
                &v.plate,
                &v.class.as_str(),
                &v.route,
                &v.device_id,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Takes `vehicle` off the registry; its data stays. Returns whether it was registered.
pub async fn deregister(db: &impl GenericClient, vehicle: &VehicleId) -> Result<bool, StoreError> {
    let n = db
        .execute(
            "UPDATE vehicles SET registered = false WHERE vehicle_id = $1 AND registered",
            &[&vehicle.as_str()],
        )
        .await?;
    Ok(n == 1)
}

/// Every registered vehicle, by id. A row that is no longer valid (edited by hand) is
/// skipped with a warning rather than stopping the service.
pub async fn load(db: &impl GenericClient) -> Result<Vec<Vehicle>, StoreError> {
    let rows = db
        .query(
            "SELECT vehicle_id, cooperative_id, plate, class, route_id, device_id FROM vehicles
             WHERE registered ORDER BY vehicle_id",
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: &str = r.get(0);
        let parsed = (|| {
            Some(Vehicle {
                id: VehicleId::parse(id).ok()?,
                cooperative: CooperativeId::parse(r.get::<_, &str>(1)).ok()?,
                plate: r.get(2),
                class: VehicleClass::from_str(r.get::<_, Option<&str>>(3)?).ok()?,
                route: r.get(4),
                device_id: r.get(5),
            })
        })();
        match parsed {
            Some(v) => out.push(v),
            None => tracing::warn!(
                vehicle = id,
                "registered vehicle with an invalid row skipped"
            ),
        }
    }
    Ok(out)
}

/// The cooperative of every vehicle ever seen, registered or not: the registered one,
/// or for an unregistered vehicle the one whose fix was stored first (the writer never
/// changes a row's cooperative). The validator refuses fixes of other cooperatives.
pub async fn owners(
    db: &impl GenericClient,
) -> Result<Vec<(VehicleId, CooperativeId)>, StoreError> {
    let rows = db
        .query("SELECT vehicle_id, cooperative_id FROM vehicles", &[])
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                VehicleId::parse(r.get::<_, &str>(0)).ok()?,
                CooperativeId::parse(r.get::<_, &str>(1)).ok()?,
            ))
        })
        .collect())
}
