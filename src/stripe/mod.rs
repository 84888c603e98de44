//! Stripe, reached through its real protocols.
//!
//! # Layout
//! - [`signature`]: the `Stripe-Signature` header of webhook deliveries, verified as
//!   Stripe specifies (timestamped HMAC-SHA256, several secrets during a rotation).
//! - [`event`]: the parts of Stripe events and Checkout Sessions the ledger reads.
//! - [`client`]: the calls to Stripe's API: create a Checkout Session, list events
//!   and prices.
//! - [`pricing`]: the catalog's prices compared with Stripe's Prices.

pub mod client;
pub mod event;
pub mod pricing;
pub mod signature;
