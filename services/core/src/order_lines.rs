//! Order lines as every service sees them: the states a line goes through
//! (one enum, mapped to the `order_lines.status` column here) and the
//! questions several services ask about an order's lines.

use tokio_postgres::GenericClient;

/// Where an order line stands (`order_lines.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStatus {
    /// Waiting: an in-stock line to ship, a backordered one for stock.
    Open,
    /// Stock reserved for it (an arrival served it).
    Allocated,
    Shipped,
    Cancelled,
}

impl LineStatus {
    /// The value stored in `order_lines.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            LineStatus::Open => "open",
            LineStatus::Allocated => "allocated",
            LineStatus::Shipped => "shipped",
            LineStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "open" => LineStatus::Open,
            "allocated" => LineStatus::Allocated,
            "shipped" => LineStatus::Shipped,
            "cancelled" => LineStatus::Cancelled,
            _ => return None,
        })
    }
}

/// Whether the order still has a backordered line waiting for stock.
pub async fn has_open_backorder<C: GenericClient>(client: &C, order_id: &str) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM order_lines
                             WHERE order_id = $1 AND availability = 'BACKORDERED' AND status = $2)",
            &[&order_id, &LineStatus::Open.as_str()],
        )
        .await?;
    row.try_get(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_the_column_values() {
        for status in [
            LineStatus::Open,
            LineStatus::Allocated,
            LineStatus::Shipped,
            LineStatus::Cancelled,
        ] {
            assert_eq!(LineStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(LineStatus::parse("lost"), None);
    }
}
