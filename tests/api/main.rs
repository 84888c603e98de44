//! HTTP API tests: the real app on port 0, a fresh database per test, both stores.

#[path = "../common/mod.rs"]
mod common;
mod helpers;

mod alerts;
mod bad_input;
mod connections;
mod docs;
mod finance;
mod freshness;
mod live;
mod metering;
mod metrics;
mod outage;
mod periods;
mod reads;
mod request_ids;
mod reservations;
mod rules;
mod sealed;
mod stripe;
mod tenants;
mod whatif;
