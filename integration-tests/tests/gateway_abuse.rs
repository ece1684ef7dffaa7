//! The gateway against hostile clients (issue #13): whatever a client sends,
//! it gets a clear refusal and the gateway keeps answering everyone else.
//! Needs the broker (`scripts/kafka start`).

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use millrace_integration_tests::gateway::{Sse, TxWriter, gateway_yaml, token_for};
use millrace_integration_tests::{Millrace, create_topics, unique};
use tokio_tungstenite::tungstenite;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A client frame header: FIN + binary, masked, with a 64-bit length.
fn masked_binary_header(len: u64, mask: [u8; 4]) -> Vec<u8> {
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&mask);
    header
}

/// A client sending one 1 MiB frame (clients only answer pings) is closed
/// with 1009, message too big, as soon as the frame's header arrives: the
/// gateway does not wait for (and buffer) the payload first.
#[test]
fn a_websocket_frame_over_the_limit_is_closed_with_1009() -> anyhow::Result<()> {
    let rt = runtime();
    let topic = unique("gw-abuse-ws");
    rt.block_on(create_topics(&[(&topic, 1)]))?;
    let mut gw = Millrace::start_gateway(&gateway_yaml(&format!("  - topic: {topic}"), ""))?;
    gw.wait_ready(Duration::from_secs(60))?;
    let token = token_for(&[&topic]);

    let stream = TcpStream::connect(("127.0.0.1", gw.ops_port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let url = format!(
        "ws://127.0.0.1:{}/v1/topics/{topic}/ws?access_token={token}",
        gw.ops_port
    );
    let (mut socket, response) =
        tungstenite::client(url, stream).map_err(|e| anyhow::anyhow!("handshake: {e}"))?;
    assert_eq!(response.status().as_u16(), 101);

    // The header of a 1 MiB frame and the first 64 KiB of its payload,
    // written raw: a well-behaved client library would not send it.
    let mask = [1, 2, 3, 4];
    socket
        .get_mut()
        .write_all(&masked_binary_header(1 << 20, mask))?;
    socket.get_mut().write_all(&vec![0u8; 64 * 1024])?;
    socket.get_mut().flush()?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        anyhow::ensure!(Instant::now() < deadline, "no close frame within 10 s");
        match socket.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {} // `ready`
            Err(e) => anyhow::bail!("no close frame, the connection ended with: {e}"),
        }
    };
    assert_eq!(code, Some(1009), "close code");
    gw.stop_cleanly()
}

/// `[0,1,...,n-1]`
fn list(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!("[{}]", items.join(","))
}

/// Percent-encodes a filter for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Hostile filters (nested list macros, ~24 million steps per record) are
/// refused with a 400 naming why, by several clients at once, while the
/// heaviest filters allowed are connected and records flow; meanwhile
/// `/healthz` answers within 1 s every time.
#[test]
fn hostile_filters_are_refused_and_the_gateway_stays_responsive() -> anyhow::Result<()> {
    let rt = runtime();
    let topic = unique("gw-abuse-filter");
    rt.block_on(create_topics(&[(&topic, 2)]))?;
    let writer = TxWriter::new(&unique("gw-abuse-tx"))?;
    let records: Vec<(String, i32, Vec<u8>)> = (0..200)
        .map(|i| {
            let value = format!(r#"{{"n": {i}, "l": {}}}"#, list(50));
            (format!("k{i}"), i % 2, value.into_bytes())
        })
        .collect();
    writer.write(&topic, &records, true)?;
    let mut gw = Millrace::start_gateway(&gateway_yaml(
        &format!("  - topic: {topic}"),
        "limits: {requests_per_second: 1000, request_burst: 1000}",
    ))?;
    gw.wait_ready(Duration::from_secs(60))?;
    let token = token_for(&[&topic]);
    let port = gw.ops_port;

    let l = list(30);
    let hostile = format!(
        "{l}.all(a, {l}.all(b, {l}.all(c, {l}.all(d, {l}.all(e, a + b + c + d + e >= 0)))))"
    );
    let hostile_url = format!(
        "http://127.0.0.1:{port}/v1/topics/{topic}/sse?start=earliest&access_token={token}&filter={}",
        encode(&hostile)
    );
    // The heaviest kind allowed: one list macro over the record's list,
    // comparing against the list again (quadratic in its length).
    let heavy = "value.l.exists(x, x in value.l && x < 0)";
    let heavy_url = format!(
        "http://127.0.0.1:{port}/v1/topics/{topic}/sse?start=earliest&access_token={token}&filter={}",
        encode(heavy)
    );

    rt.block_on(async {
        let mut heavy_subscribers = Vec::new();
        for _ in 0..4 {
            match Sse::open(&heavy_url, &[]).await? {
                Ok(sse) => heavy_subscribers.push(sse),
                Err((status, body)) => anyhow::bail!("heavy filter refused: {status} {body}"),
            }
        }
        let attackers: Vec<_> = (0..6)
            .map(|_| {
                let url = hostile_url.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    for _ in 0..20 {
                        let response = client
                            .get(&url)
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await?;
                        let status = response.status().as_u16();
                        let body = response.text().await.unwrap_or_default();
                        anyhow::ensure!(status == 400, "hostile filter got {status}: {body}");
                        anyhow::ensure!(body.contains("list macros"), "{body}");
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        let client = reqwest::Client::new();
        let health = format!("http://127.0.0.1:{port}/healthz");
        while !attackers.iter().all(|a| a.is_finished()) {
            let started = Instant::now();
            let response = client
                .get(&health)
                .timeout(Duration::from_secs(5))
                .send()
                .await?;
            let took = started.elapsed();
            anyhow::ensure!(
                response.status().as_u16() == 200,
                "healthz {}",
                response.status()
            );
            anyhow::ensure!(took < Duration::from_secs(1), "healthz took {took:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for attacker in attackers {
            attacker.await??;
        }
        drop(heavy_subscribers);
        anyhow::Ok(())
    })?;
    gw.stop_cleanly()
}
