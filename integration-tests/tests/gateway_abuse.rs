//! The gateway against hostile clients (issue #13): whatever a client sends,
//! it gets a clear refusal and the gateway keeps answering everyone else.
//! Needs the broker (`scripts/kafka start`).

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use millrace_integration_tests::gateway::{gateway_yaml, token_for};
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
