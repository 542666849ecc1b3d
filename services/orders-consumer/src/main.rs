//! orders-consumer: one replica of the orders.v1 consumer group.

use backorder_core::service::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let service = Service::init("orders-consumer").await?;
    orders_consumer::start(&service).await?;
    service.run_until_shutdown().await?;
    Ok(())
}
