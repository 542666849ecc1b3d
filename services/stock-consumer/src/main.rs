//! stock-consumer: one replica of the stock-consumer consumer group.

fn main() -> anyhow::Result<()> {
    backorder_core::service::run_service("stock-consumer", |service| async move {
        stock_consumer::start(&service).await
    })?;
    Ok(())
}
