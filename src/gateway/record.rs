//! A record as the gateway hands it to subscribers, with its JSON envelope
//! rendered once and shared by every subscriber that receives it.
//!
//! The envelope is a JSON object:
//!
//! ```json
//! {"partition":0,"offset":15,"timestamp":1763900000000,"key":"dev-1","value":{"hr":71}}
//! ```
//!
//! - `key` is the key as a string, `key_b64` (standard base64) when the key
//!   is not UTF-8, or `"key":null` when there is none.
//! - `value` is the decoded document (JSON and Avro topics) or null for a
//!   tombstone; raw topics carry `value_b64` instead. A value that does not
//!   decode comes as `"value":null,"error":"...","value_b64":"..."`.
//! - `timestamp` is the Kafka record timestamp in ms, or null.
//!
//! SSE events carry the envelope as their data (the position is the event
//! id); WebSocket messages add `"type":"record"` and `"position"`.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rdkafka::Message;
use serde_json::Value as Json;

use super::decode::{Decoder, Value};

/// One record of a bridged topic.
#[derive(Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// Kafka timestamp (ms since the epoch), if the record has one.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Value,
    /// Rendered on first use and shared.
    envelope: OnceLock<String>,
}

impl Record {
    pub fn new(
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        key: Option<Vec<u8>>,
        value: Value,
    ) -> Record {
        Record {
            partition,
            offset,
            timestamp,
            key,
            value,
            envelope: OnceLock::new(),
        }
    }

    /// Decodes a consumed Kafka message.
    pub fn from_message<M: Message>(message: &M, decoder: &Decoder) -> Record {
        Record::new(
            message.partition(),
            message.offset(),
            message.timestamp().to_millis(),
            message.key().map(<[u8]>::to_vec),
            decoder.decode(message.payload()),
        )
    }

    /// The decoded document filters see (null for raw, invalid and
    /// tombstone values).
    pub fn json_value(&self) -> &Json {
        static NULL: Json = Json::Null;
        match &self.value {
            Value::Json(json) => json,
            _ => &NULL,
        }
    }

    /// The value bytes of a raw record (what a binary frame carries).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.value {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The JSON envelope (see the module docs).
    pub fn envelope(&self) -> &str {
        self.envelope.get_or_init(|| self.render(true))
    }

    /// Approximate bytes this record costs a subscriber's buffer.
    pub fn size(&self) -> usize {
        let value = match &self.value {
            Value::Json(_) => self.envelope().len(),
            Value::Bytes(b) => b.len(),
            Value::Null => 0,
            Value::Invalid { bytes, .. } => bytes.len(),
        };
        64 + self.key.as_ref().map_or(0, Vec::len) + value
    }

    /// A WebSocket text message: the envelope with `type` and `position`.
    pub fn ws_text(&self, position: &str) -> String {
        let envelope = self.envelope();
        let mut out = String::with_capacity(envelope.len() + position.len() + 32);
        out.push_str(r#"{"type":"record","position":"#);
        out.push_str(&Json::String(position.to_string()).to_string());
        out.push(',');
        // The envelope is an object: `{...}`; splice its fields in.
        out.push_str(envelope.get(1..).unwrap_or("}"));
        out
    }

    /// A WebSocket binary message: a 4-byte big-endian length, a JSON header
    /// of that length (the envelope without the value, with `type` and
    /// `position`), then the value bytes untouched.
    pub fn ws_binary(&self, position: &str) -> Vec<u8> {
        let mut header = String::with_capacity(128);
        header.push_str(r#"{"type":"record","position":"#);
        header.push_str(&Json::String(position.to_string()).to_string());
        header.push(',');
        let meta = self.render(false);
        header.push_str(meta.get(1..).unwrap_or("}"));
        let value: &[u8] = match &self.value {
            Value::Bytes(b) => b,
            Value::Invalid { bytes, .. } => bytes,
            Value::Json(_) | Value::Null => &[],
        };
        let mut out = Vec::with_capacity(4 + header.len() + value.len());
        let len = u32::try_from(header.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(value);
        out
    }

    fn render(&self, with_value: bool) -> String {
        let mut fields = serde_json::Map::new();
        fields.insert("partition".into(), Json::from(self.partition));
        fields.insert("offset".into(), Json::from(self.offset));
        fields.insert(
            "timestamp".into(),
            self.timestamp.map_or(Json::Null, Json::from),
        );
        match &self.key {
            None => {
                fields.insert("key".into(), Json::Null);
            }
            Some(key) => match std::str::from_utf8(key) {
                Ok(text) => {
                    fields.insert("key".into(), Json::from(text));
                }
                Err(_) => {
                    fields.insert("key_b64".into(), Json::from(BASE64.encode(key)));
                }
            },
        }
        if with_value {
            match &self.value {
                Value::Json(json) => {
                    fields.insert("value".into(), json.clone());
                }
                Value::Bytes(bytes) => {
                    fields.insert("value_b64".into(), Json::from(BASE64.encode(bytes)));
                }
                Value::Null => {
                    fields.insert("value".into(), Json::Null);
                }
                Value::Invalid { error, bytes } => {
                    fields.insert("value".into(), Json::Null);
                    fields.insert("error".into(), Json::from(error.as_str()));
                    fields.insert("value_b64".into(), Json::from(BASE64.encode(bytes)));
                }
            }
        } else if let Value::Invalid { error, .. } = &self.value {
            fields.insert("error".into(), Json::from(error.as_str()));
        }
        Json::Object(fields).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Json {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn envelope_of_a_json_record() {
        let r = Record::new(
            2,
            15,
            Some(1_700_000_000_000),
            Some(b"dev-1".to_vec()),
            Value::Json(json!({"hr": 71, "note": "a\nb"})),
        );
        assert_eq!(
            parse(r.envelope()),
            json!({"partition": 2, "offset": 15, "timestamp": 1_700_000_000_000_i64,
                   "key": "dev-1", "value": {"hr": 71, "note": "a\nb"}})
        );
        // SSE data must be one line: newlines inside strings stay escaped.
        assert!(!r.envelope().contains('\n'));
        assert_eq!(
            parse(&r.ws_text("0:1,1:2,2:16")),
            json!({"type": "record", "position": "0:1,1:2,2:16", "partition": 2,
                   "offset": 15, "timestamp": 1_700_000_000_000_i64, "key": "dev-1",
                   "value": {"hr": 71, "note": "a\nb"}})
        );
    }

    #[test]
    fn raw_values_are_base64_in_json_and_untouched_in_binary_frames() {
        let samples: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let r = Record::new(
            0,
            7,
            None,
            Some(vec![0xff, 0x00]),
            Value::Bytes(samples.clone()),
        );
        let env = parse(r.envelope());
        assert_eq!(env["key_b64"], json!("/wA="));
        assert_eq!(env["timestamp"], Json::Null);
        assert_eq!(
            BASE64.decode(env["value_b64"].as_str().unwrap()).unwrap(),
            samples
        );
        let frame = r.ws_binary("0:8");
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        let header = parse(std::str::from_utf8(&frame[4..4 + len]).unwrap());
        assert_eq!(header["position"], json!("0:8"));
        assert_eq!(header["offset"], json!(7));
        assert!(header.get("value_b64").is_none());
        assert_eq!(&frame[4 + len..], samples.as_slice());
    }

    #[test]
    fn undecodable_values_are_delivered_with_the_reason() {
        let r = Record::new(
            0,
            1,
            None,
            None,
            Value::Invalid {
                error: "invalid JSON: x".into(),
                bytes: b"{x".to_vec(),
            },
        );
        let env = parse(r.envelope());
        assert_eq!(env["value"], Json::Null);
        assert_eq!(env["key"], Json::Null);
        assert_eq!(env["error"], json!("invalid JSON: x"));
        assert_eq!(env["value_b64"], json!("e3g="));
        assert_eq!(r.json_value(), &Json::Null);
    }
}
