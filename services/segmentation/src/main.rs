//! segmentation: one replica of the segmentation consumer group.

fn main() -> anyhow::Result<()> {
    backorder_core::service::run_service(
        "segmentation",
        |service| async move { segmentation::start(&service).await },
    )?;
    Ok(())
}
