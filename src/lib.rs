//! Millrace: an exactly-once stream processor that runs beside Apache Kafka
//! or Redpanda.
//!
//! Where to look:
//! - [`config`]: the pipeline file, its defaults and its validation.
//! - [`pipeline`] and [`steps`]: what happens to a record (decode, steps,
//!   encode), without any I/O.
//! - [`expr`]: CEL expressions used by steps.
//! - [`format`] and [`avro`]: record values to JSON documents and back;
//!   Avro in the Confluent wire format with a schema registry.
//! - [`runtime`]: the Kafka side — the processing loop, the transaction that
//!   commits outputs and offsets together, rebalance handling.
//! - [`ops`] and [`metrics`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`registry`]: `millrace registry`, a Confluent-compatible schema
//!   registry, and the client `millrace schemas` uses.
//! - [`gateway`]: `millrace gateway`, Kafka topics to SSE and WebSocket
//!   subscribers with exact resume.

pub mod admin;
pub mod avro;
pub mod cli;
pub mod config;
pub mod expr;
pub mod format;
pub mod gateway;
pub mod generator;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod registry;
pub mod reset;
pub mod runtime;
pub mod state;
pub mod steps;
pub mod telemetry;
pub mod topic_id;
