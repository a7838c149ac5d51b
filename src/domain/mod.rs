//! Domain values of fleetwatch: ids, fixes, vehicles. Valid by construction.

pub mod alert;
pub mod fix;
pub mod ids;
pub mod live;
pub mod record;
pub mod time;
pub mod topic;
pub mod trip;
pub mod vehicle;

pub use fix::{Fix, FixCandidate, FixError, FixLimits};
pub use ids::{CooperativeId, DriverId, IdError, VehicleId};

/// A hash map for lookups on the per-fix path (ids, route and zone keys): foldhash, a
/// fast hash with a per-process random seed, instead of the standard SipHash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub use record::{Accepted, Flags, Record, Rejected};
pub use vehicle::{Vehicle, VehicleClass};
