//! fleetwatch: fleet GPS telemetry processor.
//!
//! The data's way: `sources` (the MQTT consumer, the device gateway) hand
//! deliveries with an ack handle to the `pipeline` (decode, validate, `geo`, `rules`),
//! whose records go to the sinks (`store`: the writer, then the acks; the alert
//! outbox). `app` wires them; `health`, `telemetry` and `domain` sit at the bottom.

pub mod api;
pub mod app;
pub mod config;
pub mod demo;
pub mod domain;
pub mod geo;
pub mod health;
pub mod infra;
pub mod pipeline;
pub mod replay;
pub mod rules;
pub mod sim;
pub mod sources;
pub mod store;
pub mod telemetry;
