//! Zero-configuration infrastructure: the embedded broker and the private PostgreSQL.

pub mod broker;
pub mod mqtt_gate;
pub mod postgres;
