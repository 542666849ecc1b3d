//! shipments-consumer: one replica of the shipments-consumer consumer group.

fn main() -> anyhow::Result<()> {
    backorder_core::service::run_service("shipments-consumer", |service| async move {
        shipments_consumer::start(&service).await
    })?;
    Ok(())
}
