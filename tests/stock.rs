//! Placeholder: filled by its issue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
