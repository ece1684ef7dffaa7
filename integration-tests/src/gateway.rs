//! Helpers for gateway tests: an SSE client, token minting, a
//! transactional writer, and a gateway file.

use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::util::Timeout;

use crate::bootstrap;

/// A 40-byte HS256 secret shared by gateway files and tokens in tests.
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// An HS256 token with these claims.
pub fn hs256(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encodable claims")
}

/// An RS256 token signed with the test key in `fixtures/`.
pub fn rs256(claims: &serde_json::Value) -> String {
    let pem =
        std::fs::read(crate::repo_root().join("integration-tests/fixtures/rs256-test-private.pem"))
            .expect("test key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("RSA key"),
    )
    .expect("encodable claims")
}

/// A token for every topic, valid for an hour.
pub fn token_for(topics: &[&str]) -> String {
    hs256(
        &serde_json::json!({"sub": "tests", "exp": now_secs() + 3600, "topics": topics}),
        SECRET,
    )
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `message` when the event has no `event:` line.
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// A Server-Sent Events subscription read as a client would.
pub struct Sse {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Sse {
    /// Opens `url` with extra headers. `Err((status, body))` when the
    /// server refuses.
    pub async fn open(
        url: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Result<Sse, (u16, String)>> {
        let mut request = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.context("connecting")?;
        let status = response.status().as_u16();
        if status != 200 {
            return Ok(Err((status, response.text().await.unwrap_or_default())));
        }
        Ok(Ok(Sse {
            response,
            buffer: Vec::new(),
        }))
    }

    /// The next event; `None` when the server ended the stream. Fails if
    /// none comes within `within`.
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<Option<SseEvent>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(event) = self.parse_one() {
                return Ok(Some(event));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .context("no event in time")??;
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }

    /// Parses one complete event (ending in a blank line) off the buffer;
    /// comment-only blocks (heartbeats) are skipped.
    fn parse_one(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buffer.windows(2).position(|w| w == b"\n\n")?;
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut event = SseEvent {
                event: "message".into(),
                ..Default::default()
            };
            let mut fields = 0;
            let mut data: Vec<&str> = Vec::new();
            for line in text.lines() {
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                fields += 1;
                match name {
                    "event" => event.event = value.to_string(),
                    "id" => event.id = Some(value.to_string()),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            if fields > 0 {
                event.data = data.join("\n");
                return Some(event);
            }
        }
    }
}

/// Writes records in Kafka transactions, committing or aborting each batch,
/// as a pipeline's exactly-once output would look to the gateway.
pub struct TxWriter {
    producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
}

impl TxWriter {
    pub fn new(id: &str) -> anyhow::Result<TxWriter> {
        let producer: ThreadedProducer<_> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("transactional.id", id)
            .set("linger.ms", "2")
            .create()?;
        producer.init_transactions(Timeout::After(Duration::from_secs(30)))?;
        Ok(TxWriter { producer })
    }

    /// One transaction of (key, partition, value) records.
    pub fn write(
        &self,
        topic: &str,
        records: &[(String, i32, Vec<u8>)],
        commit: bool,
    ) -> anyhow::Result<()> {
        self.producer.begin_transaction()?;
        for (key, partition, value) in records {
            let mut record = BaseRecord::to(topic)
                .key(key)
                .partition(*partition)
                .payload(value);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        if e.rdkafka_error_code()
                            != Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        {
                            bail!("produce: {e}");
                        }
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        let timeout = Timeout::After(Duration::from_secs(30));
        if commit {
            self.producer.commit_transaction(timeout)?;
        } else {
            self.producer.abort_transaction(timeout)?;
        }
        Ok(())
    }
}

/// A gateway file for tests: `topics` is YAML list items, `extra` more
/// top-level sections. Listens on `{ops_port}` with HS256 [`SECRET`].
pub fn gateway_yaml(topics: &str, extra: &str) -> String {
    gateway_yaml_http(topics, "", extra)
}

/// [`gateway_yaml`] with more `http:` settings (indented two spaces).
pub fn gateway_yaml_http(topics: &str, http: &str, extra: &str) -> String {
    format!(
        r#"
gateway: it
topics:
{topics}
http:
  listen: "127.0.0.1:{{ops_port}}"
{http}
auth:
  mode: jwt
  hs256_secret: "{SECRET}"
{extra}
"#
    )
}
