//! fleetwatch: fleet GPS telemetry processor.
//!
//! Pipeline: `ingest::mqtt → ingest::decode → ingest::validate → store → ack`.

pub mod api;
pub mod app;
pub mod config;
pub mod demo;
pub mod domain;
pub mod geo;
pub mod infra;
pub mod ingest;
pub mod pipeline;
pub mod replay;
pub mod rules;
pub mod sim;
pub mod store;
pub mod telemetry;
