//! Topic names and partition counts, in one place.

/// Every topic of DESIGN.md, with the partition count `topics create` uses.
/// Inputs are keyed by order, sku or offer, so partitions bound the
/// replicas of their consumer that can work in parallel.
pub const TOPICS: &[(&str, i32)] = &[
    (ORDERS, 6),
    (STOCK, 6),
    (SHIPMENTS, 6),
    (OFFER_RESPONSES, 3),
    (BACKORDER_DELAYS, 3),
    (EMAIL_REQUESTS, 6),
    (BACKORDER_DECISIONS, 3),
];

pub const ORDERS: &str = "orders.v1";
pub const STOCK: &str = "stock.v1";
pub const SHIPMENTS: &str = "shipments.v1";
pub const OFFER_RESPONSES: &str = "offer-responses.v1";
pub const BACKORDER_DELAYS: &str = "backorder-delays.v1";
pub const EMAIL_REQUESTS: &str = "email-requests.v1";
pub const BACKORDER_DECISIONS: &str = "backorder-decisions.v1";

/// Topics the services consume, which each get a `<topic>.dlq`.
pub const CONSUMED: &[&str] = &[
    ORDERS,
    STOCK,
    SHIPMENTS,
    OFFER_RESPONSES,
    BACKORDER_DELAYS,
    EMAIL_REQUESTS,
];

/// Topic names with the configured prefix applied.
#[derive(Debug, Clone, Default)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The full name of a base topic (`orders.v1` -> `<prefix>orders.v1`).
    pub fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    /// The dead-letter topic of a full topic name.
    pub fn dead_letter_of(full_topic: &str) -> String {
        format!("{full_topic}.dlq")
    }

    /// Every topic to create, with partitions: all of [`TOPICS`] plus a
    /// dead-letter topic (one partition) per consumed topic.
    pub fn all(&self) -> Vec<(String, i32)> {
        let mut all: Vec<(String, i32)> = TOPICS.iter().map(|(t, p)| (self.name(t), *p)).collect();
        all.extend(CONSUMED.iter().map(|t| (Self::dead_letter_of(&self.name(t)), 1)));
        all
    }
}
