//! Ingest: MQTT consumer, payload decoding, validation.

pub mod decode;
pub mod device;
pub mod mqtt;
pub mod topic;
pub mod validate;
