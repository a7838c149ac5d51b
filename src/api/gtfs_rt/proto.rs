//! GTFS-realtime messages (`transit_realtime` package of gtfs-realtime.proto, the
//! official proto2 file of google/transit, `gtfs-realtime/proto/gtfs-realtime.proto`,
//! specification version 2.0) as prost-derive structs.
//!
//! Written by hand in the form prost-build generates (protoc is not installed here,
//! and a build.rs with protoc would be one more thing a fresh machine needs): only the
//! messages, fields and enum values fleetwatch writes, each with the official field
//! number and proto2 cardinality, so any GTFS-realtime decoder reads what we send and
//! these structs decode any feed (unknown fields are skipped). Alerts, occupancy,
//! congestion, extensions and the experimental fields are left out.

/// `FeedMessage`: the feed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeedMessage {
    /// Metadata about this feed and feed message.
    #[prost(message, required, tag = "1")]
    pub header: FeedHeader,
    /// Contents of the feed.
    #[prost(message, repeated, tag = "2")]
    pub entity: Vec<FeedEntity>,
}

/// `FeedHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeedHeader {
    /// Version of the feed specification ("2.0").
    #[prost(string, required, tag = "1")]
    pub gtfs_realtime_version: String,
    /// [`Incrementality`].
    #[prost(enumeration = "Incrementality", optional, tag = "2")]
    pub incrementality: Option<i32>,
    /// When the content was created, POSIX seconds.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
}

/// `FeedHeader.Incrementality`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Incrementality {
    /// The whole data set.
    FullDataset = 0,
    /// Changes only (unsupported by the specification).
    Differential = 1,
}

/// `FeedEntity`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeedEntity {
    /// Unique within a message.
    #[prost(string, required, tag = "1")]
    pub id: String,
    /// Deleted (incremental feeds only).
    #[prost(bool, optional, tag = "2")]
    pub is_deleted: Option<bool>,
    /// A trip's predictions.
    #[prost(message, optional, tag = "3")]
    pub trip_update: Option<TripUpdate>,
    /// A vehicle's position.
    #[prost(message, optional, tag = "4")]
    pub vehicle: Option<VehiclePosition>,
}

/// `TripUpdate`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TripUpdate {
    /// The trip.
    #[prost(message, required, tag = "1")]
    pub trip: TripDescriptor,
    /// The vehicle serving it.
    #[prost(message, optional, tag = "3")]
    pub vehicle: Option<VehicleDescriptor>,
    /// Per stop, sorted by stop_sequence.
    #[prost(message, repeated, tag = "2")]
    pub stop_time_update: Vec<trip_update::StopTimeUpdate>,
    /// When the progress was measured, POSIX seconds.
    #[prost(uint64, optional, tag = "4")]
    pub timestamp: Option<u64>,
    /// Current schedule deviation, s (late > 0).
    #[prost(int32, optional, tag = "5")]
    pub delay: Option<i32>,
}

/// Nested messages of [`TripUpdate`].
pub mod trip_update {
    /// `TripUpdate.StopTimeEvent`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StopTimeEvent {
        /// Deviation, s (late > 0).
        #[prost(int32, optional, tag = "1")]
        pub delay: Option<i32>,
        /// Absolute time, POSIX seconds.
        #[prost(int64, optional, tag = "2")]
        pub time: Option<i64>,
        /// Expected error, s (0: observed).
        #[prost(int32, optional, tag = "3")]
        pub uncertainty: Option<i32>,
    }

    /// `TripUpdate.StopTimeUpdate`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StopTimeUpdate {
        /// As in stop_times.txt.
        #[prost(uint32, optional, tag = "1")]
        pub stop_sequence: Option<u32>,
        /// As in stops.txt.
        #[prost(string, optional, tag = "4")]
        pub stop_id: Option<String>,
        /// Arrival.
        #[prost(message, optional, tag = "2")]
        pub arrival: Option<StopTimeEvent>,
        /// Departure.
        #[prost(message, optional, tag = "3")]
        pub departure: Option<StopTimeEvent>,
        /// [`stop_time_update::ScheduleRelationship`].
        #[prost(
            enumeration = "stop_time_update::ScheduleRelationship",
            optional,
            tag = "5"
        )]
        pub schedule_relationship: Option<i32>,
    }

    /// Nested enums of [`StopTimeUpdate`].
    pub mod stop_time_update {
        /// `StopTimeUpdate.ScheduleRelationship`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        pub enum ScheduleRelationship {
            /// Served as scheduled (not necessarily on time).
            Scheduled = 0,
            /// Not served.
            Skipped = 1,
            /// No data.
            NoData = 2,
            /// Frequency-based trip without exact times.
            Unscheduled = 3,
        }
    }
}

/// `VehiclePosition`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VehiclePosition {
    /// The trip it serves.
    #[prost(message, optional, tag = "1")]
    pub trip: Option<TripDescriptor>,
    /// The vehicle.
    #[prost(message, optional, tag = "8")]
    pub vehicle: Option<VehicleDescriptor>,
    /// Where it is.
    #[prost(message, optional, tag = "2")]
    pub position: Option<Position>,
    /// Stop sequence of the current stop (meaning set by `current_status`).
    #[prost(uint32, optional, tag = "3")]
    pub current_stop_sequence: Option<u32>,
    /// The current stop.
    #[prost(string, optional, tag = "7")]
    pub stop_id: Option<String>,
    /// [`vehicle_position::VehicleStopStatus`].
    #[prost(
        enumeration = "vehicle_position::VehicleStopStatus",
        optional,
        tag = "4"
    )]
    pub current_status: Option<i32>,
    /// When the position was measured, POSIX seconds.
    #[prost(uint64, optional, tag = "5")]
    pub timestamp: Option<u64>,
}

/// Nested enums of [`VehiclePosition`].
pub mod vehicle_position {
    /// `VehiclePosition.VehicleStopStatus`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum VehicleStopStatus {
        /// About to arrive at the stop.
        IncomingAt = 0,
        /// Standing at the stop.
        StoppedAt = 1,
        /// Departed, in transit to the stop.
        InTransitTo = 2,
    }
}

/// `Position`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Position {
    /// Degrees North, WGS-84.
    #[prost(float, required, tag = "1")]
    pub latitude: f32,
    /// Degrees East, WGS-84.
    #[prost(float, required, tag = "2")]
    pub longitude: f32,
    /// Degrees clockwise from true North.
    #[prost(float, optional, tag = "3")]
    pub bearing: Option<f32>,
    /// Odometer, metres.
    #[prost(double, optional, tag = "4")]
    pub odometer: Option<f64>,
    /// Speed, metres per second.
    #[prost(float, optional, tag = "5")]
    pub speed: Option<f32>,
}

/// `TripDescriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TripDescriptor {
    /// GTFS trip_id.
    #[prost(string, optional, tag = "1")]
    pub trip_id: Option<String>,
    /// GTFS route_id.
    #[prost(string, optional, tag = "5")]
    pub route_id: Option<String>,
    /// GTFS direction_id.
    #[prost(uint32, optional, tag = "6")]
    pub direction_id: Option<u32>,
    /// Scheduled start, local `HH:MM:SS` (may be past 24:00).
    #[prost(string, optional, tag = "2")]
    pub start_time: Option<String>,
    /// Service date, `YYYYMMDD`.
    #[prost(string, optional, tag = "3")]
    pub start_date: Option<String>,
    /// [`trip_descriptor::ScheduleRelationship`].
    #[prost(
        enumeration = "trip_descriptor::ScheduleRelationship",
        optional,
        tag = "4"
    )]
    pub schedule_relationship: Option<i32>,
}

/// Nested enums of [`TripDescriptor`].
pub mod trip_descriptor {
    /// `TripDescriptor.ScheduleRelationship` (values fleetwatch may write, and the others
    /// of version 2.0 so a decoder of another feed keeps them).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum ScheduleRelationship {
        /// A trip of the GTFS schedule.
        Scheduled = 0,
        /// Added, not in the schedule.
        Added = 1,
        /// Frequency-based, without exact times.
        Unscheduled = 2,
        /// Cancelled.
        Canceled = 3,
        /// A copy of a scheduled trip at another time.
        Duplicated = 6,
        /// Removed from the schedule.
        Deleted = 7,
    }
}

/// `VehicleDescriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VehicleDescriptor {
    /// Internal id.
    #[prost(string, optional, tag = "1")]
    pub id: Option<String>,
    /// Shown to passengers.
    #[prost(string, optional, tag = "2")]
    pub label: Option<String>,
    /// Registration plate.
    #[prost(string, optional, tag = "3")]
    pub license_plate: Option<String>,
}

impl Incrementality {
    /// The value's name in the proto file.
    pub fn as_str_name(self) -> &'static str {
        match self {
            Self::FullDataset => "FULL_DATASET",
            Self::Differential => "DIFFERENTIAL",
        }
    }
}

impl trip_update::stop_time_update::ScheduleRelationship {
    /// The value's name in the proto file.
    pub fn as_str_name(self) -> &'static str {
        match self {
            Self::Scheduled => "SCHEDULED",
            Self::Skipped => "SKIPPED",
            Self::NoData => "NO_DATA",
            Self::Unscheduled => "UNSCHEDULED",
        }
    }
}

impl vehicle_position::VehicleStopStatus {
    /// The value's name in the proto file.
    pub fn as_str_name(self) -> &'static str {
        match self {
            Self::IncomingAt => "INCOMING_AT",
            Self::StoppedAt => "STOPPED_AT",
            Self::InTransitTo => "IN_TRANSIT_TO",
        }
    }
}

impl trip_descriptor::ScheduleRelationship {
    /// The value's name in the proto file.
    pub fn as_str_name(self) -> &'static str {
        match self {
            Self::Scheduled => "SCHEDULED",
            Self::Added => "ADDED",
            Self::Unscheduled => "UNSCHEDULED",
            Self::Canceled => "CANCELED",
            Self::Duplicated => "DUPLICATED",
            Self::Deleted => "DELETED",
        }
    }
}
