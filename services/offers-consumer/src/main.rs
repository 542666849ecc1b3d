//! offers-consumer: one replica of the offers-consumer consumer group.

fn main() -> anyhow::Result<()> {
    backorder_core::service::run_service("offers-consumer", |service| async move {
        offers_consumer::start(&service).await
    })?;
    Ok(())
}
