//! A real browser: headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from `integration-tests/browser/`) opens a page on its
//! own origin that subscribes with `EventSource` and with `WebSocket`, and
//! must receive exactly the committed records.
//!
//! Skipped only when Chromium or Node is missing and `CI` is not set.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use millrace_integration_tests::gateway::{TxWriter, gateway_yaml_http, token_for};
use millrace_integration_tests::{
    BrowserTooling, Millrace, browser_tooling, create_topics, free_port, progress, read_committed,
    unique,
};
use rdkafka::Message;
use serde_json::{Value, json};

#[test]
fn chromium_receives_records_over_event_source_and_websocket() -> anyhow::Result<()> {
    let Some(BrowserTooling { chromium, dir }) = browser_tooling("browser")? else {
        return Ok(());
    };

    let rt = tokio::runtime::Runtime::new()?;
    let topic = unique("gw-browser");
    rt.block_on(create_topics(&[(&topic, 2)]))?;
    let writer = TxWriter::new(&unique("gw-browser-tx"))?;
    const N: usize = 60;
    for (batch, commit) in [(0, true), (1, false), (2, true)] {
        let records: Vec<(String, i32, Vec<u8>)> = (0..N / 2)
            .map(|i| {
                let seq = batch * 1000 + i;
                let v = json!({"seq": seq, "aborted": !commit, "text": "héllo\nwörld"});
                (format!("k{i}"), (i % 2) as i32, v.to_string().into_bytes())
            })
            .collect();
        writer.write(&topic, &records, commit)?;
    }

    let page_port = free_port();
    let mut gw = Millrace::start_gateway(&gateway_yaml_http(
        &format!("  - topic: {topic}"),
        &format!("  cors: {{allowed_origins: [\"http://127.0.0.1:{page_port}\"]}}"),
        "",
    ))?;
    gw.wait_ready(Duration::from_secs(60))?;

    let output = Command::new("node")
        .arg(dir.join("subscribe.mjs"))
        .arg(format!("http://127.0.0.1:{}", gw.ops_port))
        .arg(&topic)
        .arg(token_for(&[&topic]))
        .arg(N.to_string())
        .env("PAGE_PORT", page_port.to_string())
        .env("CHROMIUM", &chromium)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success(),
        "the browser script failed: {stderr}\ngateway log:\n{}",
        gw.log_tail(30)
    );
    let results: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(results["errors"], json!([]), "{stderr}");

    let mut expected: BTreeMap<i32, Vec<(i64, Value)>> = BTreeMap::new();
    for m in read_committed(&topic)? {
        let v: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        expected
            .entry(m.partition())
            .or_default()
            .push((m.offset(), v));
    }
    for transport in ["sse", "ws"] {
        let mut got: BTreeMap<i32, Vec<(i64, Value)>> = BTreeMap::new();
        for item in results[transport].as_array().cloned().unwrap_or_default() {
            let record = if transport == "sse" {
                &item["record"]
            } else {
                &item
            };
            got.entry(record["partition"].as_i64().unwrap_or(-1) as i32)
                .or_default()
                .push((
                    record["offset"].as_i64().unwrap_or(-1),
                    record["value"].clone(),
                ));
        }
        assert_eq!(got, expected, "{transport}: what the browser received");
    }
    // EventSource exposes each event's position as lastEventId; after the
    // last record it is the position after the last record of every
    // partition.
    let last = results["sse"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or_default();
    let want = expected
        .iter()
        .map(|(p, r)| format!("{p}:{}", r.last().map_or(0, |(o, _)| o + 1)))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(last["id"].as_str(), Some(want.as_str()));
    progress(&format!(
        "browser received {N} records over SSE and WebSocket"
    ));
    gw.stop_cleanly()
}
