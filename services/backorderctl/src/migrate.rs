//! `backorderctl migrate`: applies the database migrations of
//! `services/core/migrations` (under an advisory lock, so concurrent runs
//! are safe).

use std::io::Write;

use backorder_core::config::Settings;
use backorder_core::db;

use crate::{CtlError, connect, db_error};

/// What `migrate` prints for `applied` migrations.
pub fn describe(applied: usize) -> String {
    match applied {
        0 => "database schema is up to date (0 migrations applied)".to_string(),
        1 => "applied 1 migration".to_string(),
        n => format!("applied {n} migrations"),
    }
}

/// Runs `migrate`.
pub async fn run(settings: &Settings, out: &mut impl Write) -> Result<(), CtlError> {
    let pool = connect(settings).await?;
    let applied = db::migrate(&pool).await.map_err(db_error(settings))?;
    writeln!(out, "{}", describe(applied))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_naturally() {
        assert_eq!(describe(0), "database schema is up to date (0 migrations applied)");
        assert_eq!(describe(1), "applied 1 migration");
        assert_eq!(describe(3), "applied 3 migrations");
    }
}
