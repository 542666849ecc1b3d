//! The event contracts of DESIGN.md as Rust types. Each record type knows
//! its Avro full name (the schema in `schemas/` it reads and writes), its
//! Kafka key, and how to validate what the schema cannot express.
//!
//! The same types deserialize from the CLI's JSON lines: instants there are
//! RFC 3339 strings and dates `YYYY-MM-DD`, on the wire Avro
//! `timestamp-millis` and `date` (see [`wire_time`]).

pub mod internal;
pub mod offers;
pub mod orders;
pub mod shipments;
pub mod stock;
pub mod wire_time;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::ValidationError;

/// One Avro record type of a topic.
pub trait AvroRecord: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The record's Avro full name, as in its schema file.
    const FULL_NAME: &'static str;
    /// The Kafka message key the contract names (order id, sku, ...).
    fn key(&self) -> &str;
    /// Checks what the schema cannot: non-empty lists, positive quantities,
    /// well-formed addresses. The default accepts everything.
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

/// All record types that may appear on one topic, as one enum: a consumer
/// decodes any of them by the writer schema's full name.
pub trait TopicEvent: Sized + Send + Sync + 'static {
    /// Full names this topic may carry.
    const RECORDS: &'static [&'static str];
    /// Decodes an Avro value of record `full_name`.
    fn from_avro(full_name: &str, value: &apache_avro::types::Value) -> Result<Self, DecodeError>;
    fn validate(&self) -> Result<(), ValidationError>;
    /// The event's own id, for logs and idempotency.
    fn event_id(&self) -> &str;
    /// The business id logs should carry (order id, sku, dedup key).
    fn business_id(&self) -> &str;
}

/// Why a message could not become an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record {0} is not expected on this topic")]
    UnexpectedRecord(String),
    #[error("record {record} does not match its Rust type: {source}")]
    Shape {
        record: String,
        #[source]
        source: apache_avro::Error,
    },
}

/// Deserializes an Avro value into one record type.
pub fn record_from_avro<T: AvroRecord>(value: &apache_avro::types::Value) -> Result<T, DecodeError> {
    apache_avro::from_value::<T>(value).map_err(|source| DecodeError::Shape {
        record: T::FULL_NAME.to_string(),
        source,
    })
}

/// Builds a [`TopicEvent`] enum over record types, with decode by name.
macro_rules! topic_event {
    ($(#[$meta:meta])* $name:ident { $($variant:ident($record:ty)),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $($variant($record)),+
        }

        impl $crate::events::TopicEvent for $name {
            const RECORDS: &'static [&'static str] =
                &[$(<$record as $crate::events::AvroRecord>::FULL_NAME),+];

            fn from_avro(
                full_name: &str,
                value: &apache_avro::types::Value,
            ) -> Result<Self, $crate::events::DecodeError> {
                $(
                    if full_name == <$record as $crate::events::AvroRecord>::FULL_NAME {
                        return $crate::events::record_from_avro::<$record>(value).map($name::$variant);
                    }
                )+
                Err($crate::events::DecodeError::UnexpectedRecord(full_name.to_string()))
            }

            fn validate(&self) -> Result<(), $crate::domain::ValidationError> {
                match self {
                    $($name::$variant(r) => $crate::events::AvroRecord::validate(r)),+
                }
            }

            fn event_id(&self) -> &str {
                match self {
                    $($name::$variant(r) => &r.event_id),+
                }
            }

            fn business_id(&self) -> &str {
                match self {
                    $($name::$variant(r) => $crate::events::AvroRecord::key(r)),+
                }
            }
        }
    };
}
pub(crate) use topic_event;
