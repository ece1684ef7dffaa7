//! Avro topics in the gateway: Confluent-framed values decoded to JSON with
//! writer schemas from the registry, through the same decoder pipelines use.
//!
//! Schemas are cached by id, so the registry is asked once per schema. The
//! first lookup of an id blocks (the registry client is synchronous);
//! `block_in_place` keeps that off the async workers' hot path when it
//! happens on a history reader's task. While the registry is unreachable a
//! record whose schema is not cached reaches the subscriber as an
//! undecodable value with the reason (the gateway never holds back the
//! live tail for one topic's registry).

use std::sync::{Arc, Mutex};

use serde_json::Value as Json;

use super::decode::StructuredDecoder;
use crate::avro::{self, DecodeError, SchemaCache};
use crate::config::RegistryConfig;

/// Decodes one Avro topic's values.
pub struct AvroTopicDecoder {
    decoder: avro::Decoder,
    schemas: Mutex<SchemaCache>,
}

impl AvroTopicDecoder {
    /// A decoder over `registry`, with the writer schema as reader schema.
    pub fn new(registry: &RegistryConfig) -> Arc<AvroTopicDecoder> {
        Arc::new(AvroTopicDecoder {
            decoder: avro::Decoder::new(None),
            schemas: Mutex::new(SchemaCache::new(Some(registry))),
        })
    }
}

impl StructuredDecoder for AvroTopicDecoder {
    fn decode(&self, payload: &[u8]) -> Result<Json, String> {
        let run = || {
            let mut schemas = self.schemas.lock().unwrap_or_else(|p| p.into_inner());
            self.decoder
                .decode(payload, &mut *schemas)
                .map_err(|e| match e {
                    DecodeError::Record { message, .. } => message,
                    DecodeError::Unavailable { message, .. } => {
                        format!("schema registry unavailable: {message}")
                    }
                })
        };
        // On a multi-threaded runtime's worker, tell tokio this may block;
        // elsewhere (the live tail's thread) just run it.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        }
    }
}
