//! `refinery::embed_migrations!` reads `migrations/` at compile time, and
//! cargo does not know that: without this, a new migration file is left
//! out of the binaries until something else in core changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
