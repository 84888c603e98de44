//! Operator commands of the `usage-ledger` binary that act on the ledger through the
//! engine, as library code: each has a clap `Args` struct and an async `run` that
//! writes its report to a writer, so the binary only wires them and tests drive them
//! without a process.
//!
//! # Layout
//! - [`brands`]: `brands set` registers a brand on a plan or changes it; `brands show`.
//! - [`reset`]: `reset`, the runbook's quota reset done with compensating events.
//! - [`replay`]: `replay rebuild|verify|as-of|export|verify-export`, for auditors.
//! - [`stripe`]: `stripe reconcile`, the payments whose webhook never arrived.
//! - [`pricing`]: `pricing verify`, the catalog's prices against Stripe's.

pub mod brands;
pub mod pricing;
pub mod replay;
pub mod reset;
pub mod stripe;

/// Actor names are stored in every event a command appends; a login name longer than
/// this is a misconfigured environment, not a person.
pub const ACTOR_CHARS_MAX: usize = 64;

/// The actor recorded on events appended from the command line: `cli:<login>`, with
/// the login from `$USER` (`cli` when unset), so the audit trail says who ran it.
pub fn cli_actor() -> String {
    let user = std::env::var("USER").unwrap_or_default();
    actor_for(&user)
}

/// `cli:<login>` with the login reduced to visible ASCII and [`ACTOR_CHARS_MAX`]
/// characters: the value lands in event payloads read by auditors and finance.
fn actor_for(user: &str) -> String {
    let clean: String = user
        .chars()
        .filter(char::is_ascii_graphic)
        .take(ACTOR_CHARS_MAX)
        .collect();
    match clean.is_empty() {
        true => "cli".to_owned(),
        false => format!("cli:{clean}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_names_the_login_and_falls_back_to_cli() {
        // Proves the audit trail gets `cli:<login>`, never an empty or unbounded actor.
        assert_eq!(actor_for("alice"), "cli:alice");
        assert_eq!(actor_for(""), "cli");
        assert_eq!(actor_for(" \t"), "cli");
        assert_eq!(
            actor_for(&"x".repeat(500)).len(),
            "cli:".len() + ACTOR_CHARS_MAX
        );
    }
}
