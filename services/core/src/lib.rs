//! Shared library of the backorder services.
//!
//! Where things are:
//! - [`events`] and `schemas/`: the event contracts; [`codec`]: Avro on the wire.
//! - [`kafka`]: topics, producer, dead letters and the consumer runtime.
//! - [`db`], [`clock`], [`timers`]: PostgreSQL, the injectable clock and
//!   durable timers; [`backlog`]: gauges of due timers and overdue promises.
//! - [`config`], [`telemetry`], [`lifecycle`], [`http`], [`service`]: what
//!   every binary needs to start, be observed and stop cleanly.
//! - [`domain`]: newtypes that validate at the boundary, currencies, geography.
//! - [`policy`]: the business policy file; [`links`]: signed one-click links;
//!   [`campaigns`]: ending campaigns when their lines close.
//!
//! Business decisions live in the service crates: `orders-consumer`
//! decides lifecycle emails, `sender` renders and delivers them.

pub mod backlog;
pub mod campaigns;
pub mod clock;
pub mod codec;
pub mod config;
pub mod db;
pub mod domain;
pub mod email_decisions;
pub mod events;
pub mod http;
pub mod kafka;
pub mod lifecycle;
pub mod links;
pub mod order_lines;
pub mod policy;
pub mod promises;
pub mod service;
pub mod stock_release;
pub mod telemetry;
pub mod timer_keys;
pub mod timers;

pub use deadpool_postgres;
pub use rdkafka;
pub use tokio_postgres;
