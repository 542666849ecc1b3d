//! orders-consumer: one replica of the orders.v1 consumer group.

fn main() -> anyhow::Result<()> {
    backorder_core::service::run_service("orders-consumer", |service| async move {
        orders_consumer::start(&service).await
    })?;
    Ok(())
}
