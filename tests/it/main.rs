//! Integration tests against a real PostgreSQL and real MQTT brokers (one binary,
//! so the private PostgreSQL starts once).

mod api;
mod backup;
mod broker_auth;
mod broker_faults;
mod database;
mod deliver;
mod demo;
mod drivers;
mod failover;
mod gateway;
mod infra;
mod ingest;
mod map;
mod monitoring;
mod no_loss;
mod order;
mod replay;
mod reports;
mod rules;
mod stream;
mod support;
mod tls;
mod transit;
