//! `millrace registry`: a Confluent-compatible Schema Registry, stored in a
//! compacted `_schemas` topic in the same record format Confluent Schema
//! Registry and Karapace use, so one topic can be served by any of them.
//!
//! Where to look:
//! - [`api`]: the HTTP routes, content types and error bodies.
//! - [`service`]: what each call does; how a write is decided and committed.
//! - [`store`]: the state in memory, rebuilt by replaying the topic.
//! - [`records`]: the topic's key and value format.
//! - [`log`]: Kafka: creating, reading and writing the topic; the writer
//!   role that makes id allocation safe across instances.
//! - [`compat`]: compatibility levels and the Avro resolution checker.
//! - [`schema`]: parsing, identity ("same schema, same id"), normalization.
//! - [`client`]: a REST client for any Confluent-compatible registry.
//! - [`config`], [`server`], [`cli`]: the command and its configuration.

pub mod api;
pub mod cli;
pub mod client;
pub mod compat;
pub mod config;
pub mod error;
pub mod log;
pub mod metrics;
pub mod records;
pub mod schema;
pub mod server;
pub mod service;
pub mod store;
