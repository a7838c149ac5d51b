//! Integration tests against a real PostgreSQL and real MQTT brokers (one binary,
//! so the private PostgreSQL starts once).

mod api;
mod ingest;
mod map;
mod no_loss;
mod rules;
mod support;
