//! `sqlx::migrate!` embeds the migration files at compile time but cannot tell Cargo to
//! watch the directory, so a newly added migration would be missing from an incremental
//! build. Rebuilding whenever `migrations/` changes keeps the binary's schema current.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
