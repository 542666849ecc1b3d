//! sender: one replica of the email delivery service.

fn main() -> anyhow::Result<()> {
    backorder_core::service::run_service("sender", |service| async move { sender::start(&service).await })?;
    Ok(())
}
