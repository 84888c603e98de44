//! Stripe, reached through its real protocols.
//!
//! # Layout
//! - [`signature`]: the `Stripe-Signature` header of webhook deliveries, verified as
//!   Stripe specifies (timestamped HMAC-SHA256, several secrets during a rotation).

pub mod signature;
