//! The records of the `_schemas` topic: JSON keys and values in the format
//! Confluent Schema Registry and Karapace write, so one topic can be served
//! by any of the three. Pure encoding and decoding, no I/O.
//!
//! Keys (the byte layout matters: compaction merges records by key bytes,
//! so Millrace writes keys exactly as Confluent does, field order included):
//!
//! | keytype | key | value |
//! |---|---|---|
//! | `SCHEMA` | `{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}` | `{"subject","version","id","schema","deleted"}` (+ `schemaType` when not Avro, `references` when any); tombstone = permanent delete |
//! | `CONFIG` | `{"keytype":"CONFIG","subject":"s","magic":0}` (no `subject` for the global level) | `{"compatibilityLevel":"FULL"}`; tombstone = level removed |
//! | `DELETE_SUBJECT` | `{"keytype":"DELETE_SUBJECT","subject":"s","magic":0}` | `{"subject":"s","version":3}`: versions up to 3 soft-deleted |
//! | `CLEAR_SUBJECT` | `{"keytype":"CLEAR_SUBJECT","subject":"s","magic":0}` | `{"subject":"s"}` |
//! | `NOOP` | `{"keytype":"NOOP","magic":0}` | Millrace: `{"maxId":N}`, the highest id ever allocated (see [`Record::Noop`]) |
//!
//! Other key types (`MODE`, `CONTEXT`, `ASSOC`) are read and ignored.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::compat::CompatibilityLevel;

/// The schema type Confluent assumes when a record or request names none.
pub const AVRO: &str = "AVRO";

/// A reference from one schema to a named type registered under another
/// subject (Confluent's `references`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reference {
    /// The referenced type's full name as the referring schema uses it.
    pub name: String,
    pub subject: String,
    pub version: u32,
}

/// The value of a `SCHEMA` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaValue {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
    #[serde(
        rename = "schemaType",
        default = "avro",
        skip_serializing_if = "is_avro"
    )]
    pub schema_type: String,
}

fn avro() -> String {
    AVRO.to_string()
}

fn is_avro(t: &str) -> bool {
    t == AVRO
}

/// One record of the `_schemas` topic, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A version of a subject. `None` is a tombstone: the version is
    /// permanently deleted.
    Schema {
        subject: String,
        version: u32,
        value: Option<SchemaValue>,
    },
    /// The compatibility level of a subject, or the global one when
    /// `subject` is `None`. `level: None` removes it.
    Config {
        subject: Option<String>,
        level: Option<CompatibilityLevel>,
    },
    /// Soft-deletes every version of `subject` up to `version`.
    DeleteSubject { subject: String, version: u32 },
    /// Forgets `subject`'s soft-deleted versions (Confluent writes it when
    /// entering import mode).
    ClearSubject { subject: String },
    /// Confluent writes a NOOP tombstone to learn the topic's end offset.
    /// Millrace gives its NOOP a value, `{"maxId": N}`: the highest schema
    /// id allocated so far. Ids must never be reused, but the record that
    /// carries the highest id can vanish from a compacted topic once its
    /// version is permanently deleted; the NOOP (written with every
    /// Millrace transaction) keeps the high-water mark. Confluent ignores
    /// NOOP values and Karapace ignores NOOP records.
    Noop { max_id: Option<u32> },
    /// A key type this registry does not act on (`MODE`, `CONTEXT`, ...).
    Ignored { keytype: String },
}

/// Why a record of the topic could not be decoded. Such records are logged
/// and skipped, as Confluent and Karapace do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record without a key")]
    NoKey,
    #[error("key is not a JSON object with a `keytype`: {0}")]
    BadKey(String),
    #[error("{keytype} value is invalid: {message}")]
    BadValue { keytype: String, message: String },
}

#[derive(Deserialize)]
struct RawKey {
    keytype: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    magic: Option<u32>,
}

#[derive(Deserialize)]
struct RawConfigValue {
    #[serde(rename = "compatibilityLevel", default)]
    compatibility_level: Option<String>,
}

#[derive(Deserialize)]
struct RawDeleteSubjectValue {
    subject: String,
    version: u32,
}

#[derive(Deserialize)]
struct RawClearSubjectValue {
    subject: String,
}

#[derive(Deserialize, Serialize)]
struct NoopValue {
    #[serde(rename = "maxId", default)]
    max_id: Option<u32>,
}

impl Record {
    /// Decodes a record from its key and value bytes (`None`: tombstone).
    pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Record, RecordError> {
        let key = key.filter(|k| !k.is_empty()).ok_or(RecordError::NoKey)?;
        let raw: RawKey = serde_json::from_slice(key)
            .map_err(|e| RecordError::BadKey(format!("{e}: {}", String::from_utf8_lossy(key))))?;
        let keytype = raw
            .keytype
            .ok_or_else(|| RecordError::BadKey(String::from_utf8_lossy(key).into_owned()))?;
        // An empty value is a tombstone too (Karapace treats it so).
        let value = value.filter(|v| !v.is_empty());
        let bad = |message: String| RecordError::BadValue {
            keytype: keytype.clone(),
            message,
        };
        let need_subject = |subject: Option<String>| {
            subject.ok_or_else(|| RecordError::BadKey(format!("{keytype} key without a subject")))
        };
        match keytype.as_str() {
            "SCHEMA" => {
                let subject = need_subject(raw.subject)?;
                let version = raw.version.ok_or_else(|| {
                    RecordError::BadKey("SCHEMA key without a version".to_string())
                })?;
                if let Some(magic) = raw.magic
                    && magic > 1
                {
                    return Err(RecordError::BadKey(format!(
                        "SCHEMA key with unknown magic {magic}"
                    )));
                }
                let value = match value {
                    None => None,
                    Some(bytes) => Some(
                        serde_json::from_slice::<SchemaValue>(bytes)
                            .map_err(|e| bad(e.to_string()))?,
                    ),
                };
                Ok(Record::Schema {
                    subject,
                    version,
                    value,
                })
            }
            "CONFIG" => {
                let level = match value {
                    None => None,
                    Some(bytes) => {
                        let raw: RawConfigValue =
                            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
                        match raw.compatibility_level {
                            None => None,
                            Some(text) => {
                                Some(CompatibilityLevel::parse(&text).ok_or_else(|| {
                                    bad(format!("unknown compatibilityLevel `{text}`"))
                                })?)
                            }
                        }
                    }
                };
                Ok(Record::Config {
                    subject: raw.subject,
                    level,
                })
            }
            "DELETE_SUBJECT" => {
                let bytes = value.ok_or_else(|| bad("no value".to_string()))?;
                let v: RawDeleteSubjectValue =
                    serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
                Ok(Record::DeleteSubject {
                    subject: v.subject,
                    version: v.version,
                })
            }
            "CLEAR_SUBJECT" => {
                let subject = match value {
                    Some(bytes) => {
                        serde_json::from_slice::<RawClearSubjectValue>(bytes)
                            .map_err(|e| bad(e.to_string()))?
                            .subject
                    }
                    None => need_subject(raw.subject)?,
                };
                Ok(Record::ClearSubject { subject })
            }
            "NOOP" => {
                // Anything but a Millrace mark counts as a plain NOOP.
                let max_id = value
                    .and_then(|bytes| serde_json::from_slice::<NoopValue>(bytes).ok())
                    .and_then(|v| v.max_id);
                Ok(Record::Noop { max_id })
            }
            _ => Ok(Record::Ignored {
                keytype: keytype.clone(),
            }),
        }
    }

    /// Encodes the record as (key, value) bytes; `None` is a tombstone.
    pub fn encode(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            Record::Schema {
                subject,
                version,
                value,
            } => (
                format!(
                    r#"{{"keytype":"SCHEMA","subject":{},"version":{version},"magic":1}}"#,
                    json_string(subject)
                )
                .into_bytes(),
                value.as_ref().map(to_json),
            ),
            Record::Config { subject, level } => {
                let key = match subject {
                    Some(s) => format!(
                        r#"{{"keytype":"CONFIG","subject":{},"magic":0}}"#,
                        json_string(s)
                    ),
                    None => r#"{"keytype":"CONFIG","magic":0}"#.to_string(),
                };
                // Confluent writes the subject into the value too; Karapace
                // reads only `compatibilityLevel`.
                let value = level.map(|level| {
                    let text = match subject {
                        Some(s) => format!(
                            r#"{{"subject":{},"compatibilityLevel":"{}"}}"#,
                            json_string(s),
                            level.as_str()
                        ),
                        None => format!(r#"{{"compatibilityLevel":"{}"}}"#, level.as_str()),
                    };
                    text.into_bytes()
                });
                (key.into_bytes(), value)
            }
            Record::DeleteSubject { subject, version } => (
                format!(
                    r#"{{"keytype":"DELETE_SUBJECT","subject":{},"magic":0}}"#,
                    json_string(subject)
                )
                .into_bytes(),
                Some(
                    format!(
                        r#"{{"subject":{},"version":{version}}}"#,
                        json_string(subject)
                    )
                    .into_bytes(),
                ),
            ),
            Record::ClearSubject { subject } => (
                format!(
                    r#"{{"keytype":"CLEAR_SUBJECT","subject":{},"magic":0}}"#,
                    json_string(subject)
                )
                .into_bytes(),
                Some(format!(r#"{{"subject":{}}}"#, json_string(subject)).into_bytes()),
            ),
            Record::Noop { max_id } => (
                br#"{"keytype":"NOOP","magic":0}"#.to_vec(),
                max_id.map(|max_id| {
                    to_json(&NoopValue {
                        max_id: Some(max_id),
                    })
                }),
            ),
            Record::Ignored { keytype } => (
                format!(r#"{{"keytype":{},"magic":0}}"#, json_string(keytype)).into_bytes(),
                None,
            ),
        }
    }
}

fn json_string(s: &str) -> String {
    Json::String(s.to_string()).to_string()
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs and maps of strings and numbers cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(subject: &str, version: u32, id: u32) -> SchemaValue {
        SchemaValue {
            subject: subject.into(),
            version,
            id,
            schema: r#""string""#.into(),
            deleted: false,
            references: vec![],
            schema_type: AVRO.into(),
        }
    }

    #[test]
    fn keys_are_byte_for_byte_what_confluent_writes() {
        let (key, val) = Record::Schema {
            subject: "vitals-value".into(),
            version: 3,
            value: Some(value("vitals-value", 3, 7)),
        }
        .encode();
        assert_eq!(
            String::from_utf8(key).unwrap(),
            r#"{"keytype":"SCHEMA","subject":"vitals-value","version":3,"magic":1}"#
        );
        assert_eq!(
            String::from_utf8(val.unwrap()).unwrap(),
            r#"{"subject":"vitals-value","version":3,"id":7,"schema":"\"string\"","deleted":false}"#
        );
        let (key, val) = Record::Config {
            subject: Some("s".into()),
            level: Some(CompatibilityLevel::Full),
        }
        .encode();
        assert_eq!(key, br#"{"keytype":"CONFIG","subject":"s","magic":0}"#);
        assert_eq!(
            val.unwrap(),
            br#"{"subject":"s","compatibilityLevel":"FULL"}"#
        );
        let (key, _) = Record::Config {
            subject: None,
            level: Some(CompatibilityLevel::Backward),
        }
        .encode();
        assert_eq!(key, br#"{"keytype":"CONFIG","magic":0}"#);
        let (key, val) = Record::DeleteSubject {
            subject: "s".into(),
            version: 2,
        }
        .encode();
        assert_eq!(
            key,
            br#"{"keytype":"DELETE_SUBJECT","subject":"s","magic":0}"#
        );
        assert_eq!(val.unwrap(), br#"{"subject":"s","version":2}"#);
        let (key, val) = Record::Noop { max_id: Some(9) }.encode();
        assert_eq!(key, br#"{"keytype":"NOOP","magic":0}"#);
        assert_eq!(val.unwrap(), br#"{"maxId":9}"#);
    }

    #[test]
    fn records_round_trip() {
        let mut with_refs = value("a", 1, 2);
        with_refs.references = vec![Reference {
            name: "com.acme.Other".into(),
            subject: "other".into(),
            version: 1,
        }];
        with_refs.schema_type = "PROTOBUF".into();
        for record in [
            Record::Schema {
                subject: "a \"quoted\" subject".into(),
                version: 1,
                value: Some(with_refs),
            },
            Record::Schema {
                subject: "a".into(),
                version: 4,
                value: None,
            },
            Record::Config {
                subject: None,
                level: Some(CompatibilityLevel::FullTransitive),
            },
            Record::Config {
                subject: Some("a".into()),
                level: None,
            },
            Record::DeleteSubject {
                subject: "a".into(),
                version: 3,
            },
            Record::ClearSubject {
                subject: "a".into(),
            },
            Record::Noop { max_id: Some(12) },
            Record::Noop { max_id: None },
        ] {
            let (key, value) = record.encode();
            assert_eq!(
                Record::decode(Some(&key), value.as_deref()),
                Ok(record.clone()),
                "{}",
                String::from_utf8_lossy(&key)
            );
        }
    }

    #[test]
    fn reads_what_karapace_and_confluent_write() {
        // Karapace: global config with an explicit null subject.
        let r = Record::decode(
            Some(br#"{"keytype":"CONFIG","subject":null,"magic":0}"#),
            Some(br#"{"compatibilityLevel":"NONE"}"#),
        );
        assert_eq!(
            r,
            Ok(Record::Config {
                subject: None,
                level: Some(CompatibilityLevel::None)
            })
        );
        // Keys in another field order (Karapace's deprecated format), magic
        // 0 schema keys (old Confluent), unknown value fields (newer
        // Confluent: md5, metadata, ruleSet) and no `deleted` field.
        let r = Record::decode(
            Some(br#"{"subject":"s","magic":0,"keytype":"SCHEMA","version":2}"#),
            Some(
                br#"{"subject":"s","version":2,"id":5,"md5":"x","schema":"\"int\"","metadata":{}}"#,
            ),
        )
        .unwrap();
        let Record::Schema {
            subject,
            version,
            value: Some(v),
        } = r
        else {
            panic!("not a schema record: {r:?}")
        };
        assert_eq!((subject.as_str(), version, v.id), ("s", 2, 5));
        assert!(!v.deleted);
        assert_eq!(v.schema_type, AVRO);
        // Confluent's NOOP tombstone; MODE records are ignored.
        assert_eq!(
            Record::decode(Some(br#"{"keytype":"NOOP","magic":0}"#), None),
            Ok(Record::Noop { max_id: None })
        );
        assert_eq!(
            Record::decode(
                Some(br#"{"keytype":"MODE","subject":"s","magic":0}"#),
                Some(br#"{"mode":"READONLY"}"#)
            ),
            Ok(Record::Ignored {
                keytype: "MODE".into()
            })
        );
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(Record::decode(None, Some(b"{}")), Err(RecordError::NoKey));
        assert!(matches!(
            Record::decode(Some(b"not json"), None),
            Err(RecordError::BadKey(_))
        ));
        assert!(matches!(
            Record::decode(
                Some(br#"{"keytype":"SCHEMA","subject":"s","magic":1}"#),
                None
            ),
            Err(RecordError::BadKey(_))
        ));
        assert!(matches!(
            Record::decode(
                Some(br#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#),
                Some(br#"{"subject":"s"}"#)
            ),
            Err(RecordError::BadValue { .. })
        ));
        assert!(matches!(
            Record::decode(
                Some(br#"{"keytype":"CONFIG","magic":0}"#),
                Some(br#"{"compatibilityLevel":"SIDEWAYS"}"#)
            ),
            Err(RecordError::BadValue { .. })
        ));
    }
}
