//! Integration tests against a real PostgreSQL and real MQTT brokers (one binary,
//! so the private PostgreSQL starts once).

mod api;
mod ingest;
mod no_loss;
mod reports;
mod rules;
mod support;
