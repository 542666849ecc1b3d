//! Test support: every test gets its own world on the shared local stack
//! (`make up`): a fresh PostgreSQL database, a unique topic prefix and
//! consumer groups, unique recipient addresses, and the real service
//! binaries as child processes it can SIGTERM or SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

pub mod app;
pub mod browser;
pub mod campaigns;
pub mod interop;
pub mod moto;
pub mod private_moto;
pub mod private_pg;
pub mod private_tansu;
pub mod process;
pub mod scenario;
pub mod ses_proxy;
pub mod sns_signer;
pub mod stock;
pub mod wait;

pub use app::{TestApp, order_placed};
pub use wait::wait_until;
