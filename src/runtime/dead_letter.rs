//! Dead letters: the record exactly as it was consumed (key, value, headers,
//! timestamp), plus headers that say where it came from and why it failed.

use rdkafka::message::Header;
use rdkafka::message::{Headers, OwnedHeaders};

use crate::pipeline::Failure;
use crate::steps::Origin;

/// Header names, stable for consumers of the dead-letter topic.
pub mod header {
    pub const PIPELINE: &str = "millrace.pipeline";
    pub const REASON: &str = "millrace.reason";
    pub const ERROR: &str = "millrace.error";
    pub const AT: &str = "millrace.at";
    pub const SOURCE_TOPIC: &str = "millrace.source.topic";
    pub const SOURCE_PARTITION: &str = "millrace.source.partition";
    pub const SOURCE_OFFSET: &str = "millrace.source.offset";
    pub const SOURCE_TIMESTAMP: &str = "millrace.source.timestamp";
}

/// The headers of a dead letter: the original ones first, then Millrace's.
pub fn headers<H: Headers>(
    pipeline: &str,
    origin: &Origin,
    timestamp: Option<i64>,
    failure: &Failure,
    original: Option<&H>,
) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(original) = original {
        for h in original.iter() {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let partition = origin.partition.to_string();
    let offset = origin.offset.to_string();
    let timestamp = timestamp.map(|t| t.to_string());
    let mut add = |key: &str, value: &str| {
        let current = std::mem::replace(&mut out, OwnedHeaders::new());
        out = current.insert(Header {
            key,
            value: Some(value),
        });
    };
    add(header::PIPELINE, pipeline);
    add(header::REASON, failure.reason.as_str());
    add(header::ERROR, &failure.message);
    add(header::AT, &failure.at);
    add(header::SOURCE_TOPIC, &origin.topic);
    add(header::SOURCE_PARTITION, &partition);
    add(header::SOURCE_OFFSET, &offset);
    if let Some(ts) = &timestamp {
        add(header::SOURCE_TIMESTAMP, ts);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::FailureReason;

    #[test]
    fn headers_keep_originals_and_say_why() {
        let original = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some("abc"),
        });
        let failure = Failure {
            reason: FailureReason::Decode,
            at: "source in".into(),
            message: "invalid JSON".into(),
        };
        let origin = Origin {
            topic: "in".into(),
            partition: 2,
            offset: 17,
        };
        let h = headers("p", &origin, Some(5), &failure, Some(&original));
        let pairs: Vec<(String, String)> = h
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(pairs[0], ("trace".into(), "abc".into()));
        assert!(pairs.contains(&("millrace.reason".into(), "decode".into())));
        assert!(pairs.contains(&("millrace.source.partition".into(), "2".into())));
        assert!(pairs.contains(&("millrace.source.offset".into(), "17".into())));
        assert!(pairs.contains(&("millrace.error".into(), "invalid JSON".into())));
    }
}
