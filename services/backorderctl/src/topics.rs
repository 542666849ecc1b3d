//! `backorderctl topics`: topic administration.

use std::io::Write;

use backorder_core::config::Settings;
use backorder_core::kafka::Topics;
use backorder_core::kafka::admin::{CreatedTopics, create_topics};
use clap::Subcommand;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};

use crate::CtlError;

/// `topics` subcommands.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every topic and dead-letter topic that does not exist yet.
    ///
    /// Idempotent: existing topics are left exactly as they are (the
    /// partitions column shows the count this project configures, which is
    /// what a newly created topic gets). BACKORDER_TOPIC_PREFIX is applied.
    Create,
}

/// The table `topics create` prints: every topic in `wanted`, marked
/// created or existing.
pub fn render_table(wanted: &[(String, i32)], report: &CreatedTopics) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["topic", "partitions", "status"]);
    for (name, partitions) in wanted {
        let status = if report.created.contains(name) {
            "created"
        } else if report.existing.contains(name) {
            "existing"
        } else {
            "unknown"
        };
        table.add_row([name.clone(), partitions.to_string(), status.to_string()]);
    }
    if let Some(column) = table.column_mut(1) {
        column.set_cell_alignment(CellAlignment::Right);
    }
    table.to_string()
}

/// Runs `topics`.
pub async fn run(command: TopicsCommand, settings: &Settings, out: &mut impl Write) -> Result<(), CtlError> {
    match command {
        TopicsCommand::Create => {
            let wanted = Topics::new(&settings.topic_prefix).all();
            let report = create_topics(settings, &wanted).await.map_err(CtlError::Topics)?;
            writeln!(out, "{}", render_table(&wanted, &report))?;
            writeln!(
                out,
                "{} created, {} already existed ({})",
                report.created.len(),
                report.existing.len(),
                settings.kafka_bootstrap_servers
            )?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_topic_with_its_status() {
        let wanted = Topics::new("t-").all();
        let report = CreatedTopics {
            created: vec!["t-orders.v1".into(), "t-orders.v1.dlq".into()],
            existing: vec!["t-stock.v1".into()],
        };
        let table = render_table(&wanted, &report);
        for (name, _) in &wanted {
            assert!(table.contains(name.as_str()), "{name} missing:\n{table}");
        }
        let line = |topic: &str| {
            table
                .lines()
                .find(|l| l.contains(&format!(" {topic} ")))
                .unwrap_or_default()
                .to_string()
        };
        assert!(line("t-orders.v1").contains("created"), "{table}");
        assert!(line("t-orders.v1").contains(" 6 "), "{table}");
        assert!(line("t-stock.v1").contains("existing"), "{table}");
        assert!(line("t-orders.v1.dlq").contains(" 1 "), "{table}");
    }
}
