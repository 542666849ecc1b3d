//! Timer keys and kinds of the order lifecycle, in core because several
//! services schedule and cancel them (a cancellation in orders-consumer
//! stops what a shipment scheduled in shipments-consumer). Keys are
//! `kind:order:...` and every scope ends in `:` before the next part, so a
//! scope never matches another order (`o-1` vs `o-10`); a whole key is
//! cancelled exactly (`timers::cancel`), a scope with `timers::cancel_scope`.

/// Timer kind of the nurture cadence (fired by the orders-consumer).
pub const NURTURE: &str = "nurture";
/// Timer kind of the delivered follow-up (fired by the shipments-consumer).
pub const DELIVERED_FOLLOWUP: &str = "delivered-followup";
/// Timer kind of the win-back email (fired by the shipments-consumer).
pub const WIN_BACK: &str = "win-back";

/// Every nurture timer of an order.
pub fn nurture_prefix(order_id: &str) -> String {
    format!("{NURTURE}:{order_id}:")
}

/// The nurture check number `step` of an order (1 is the first, one
/// interval after the order was placed). A new key per step: a fired timer
/// stays fired, and the next step is scheduled while the current one fires.
pub fn nurture(order_id: &str, step: u32) -> String {
    format!("{}{step}", nurture_prefix(order_id))
}

/// Every delivered follow-up timer of an order.
pub fn followup_prefix(order_id: &str) -> String {
    format!("{DELIVERED_FOLLOWUP}:{order_id}:")
}

/// The delivered follow-up of one shipment.
pub fn followup(order_id: &str, shipment_id: &str) -> String {
    format!("{}{shipment_id}", followup_prefix(order_id))
}

/// The win-back timer of one order: each order whose backordered lines
/// were all delivered (or cancelled) can earn one; the per-customer limit
/// is checked when it fires.
pub fn win_back(customer_id: &str, order_id: &str) -> String {
    format!("{WIN_BACK}:{customer_id}:{order_id}")
}

/// What a parked event waits for when it needs the order stored (see
/// `backorder_core::kafka::parking`); the orders handler announces it.
pub fn order_state(order_id: &str) -> String {
    format!("order:{order_id}")
}

/// What a parked event waits for when it needs a shipment's dispatch stored.
pub fn shipment_state(shipment_id: &str) -> String {
    format!("shipment:{shipment_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_never_matches_another_order() {
        assert!(nurture("o-10", 1).starts_with(&nurture_prefix("o-10")));
        assert!(!nurture("o-10", 1).starts_with(&nurture_prefix("o-1")));
        assert!(!followup("o-10", "s").starts_with(&followup_prefix("o-1")));
    }
}
