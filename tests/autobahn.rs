//! The Autobahn WebSocket conformance cases, run by kosoku (PyPI; scripts/test installs it into
//! .venv from tests/python/requirements.txt) against `/v1/ws-echo` of a real relay on loopback.
//! The echo path runs the same framing, permessage-deflate and socket code as `/v1/ws` (see
//! `transport/websocket/echo.rs`); permessage-deflate is on, so clients that offer it get it.
//!
//! kosoku runs through `tests/python/kosoku_run.py`, which fixes its 0.1.0 compression case file
//! for Python 3 (it hashed a `str`: "Strings must be encoded before hashing"; see the script).
//! Run: every case but 9.* (performance: up to 16 MiB messages) and, of the compression cases
//! 12.* / 13.*, those with messages up to 4 KiB (12.x.1-12.x.5 and 13.x.1-13.x.5: 60 cases
//! of 1000 messages each). The larger ones (8-128 KiB, which found the deflater bug
//! `deflate::tests::large_messages_compress_whole_with_context_takeover` now pins) take tens of
//! minutes on a shared machine; they are run by hand, and a full run's summary is in
//! docs/fuzzing.md. Every case run must be OK, NON-STRICT or INFORMATIONAL; a FAILED or ERROR
//! case fails the test with its id.

mod common;

use std::path::Path;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_cases_pass_against_the_websocket_server() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let kosoku = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/kosoku");
    let runner = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/kosoku_run.py");
    assert!(
        kosoku.exists(),
        "{} missing: run scripts/test (it installs tests/python/requirements.txt)",
        kosoku.display()
    );
    // Every section but 9, and the compression cases with messages up to 4 KiB.
    let mut include: Vec<String> = ["1", "2", "3", "4", "5", "6", "7", "10"].map(|s| format!("{s}.*")).into();
    // Explicit ids: kosoku's `12.*.1` also matches 12.x.10-18.
    for (section, groups) in [(12, 5), (13, 7)] {
        for group in 1..=groups {
            include.extend((1..=5).map(|size| format!("{section}.{group}.{size}")));
        }
    }
    let relay = common::start_with(|c| {
        c.websocket.echo = true;
        c.websocket.permessage_deflate = true;
        // Case 1.1.6 and friends send 64 KiB and more in one message.
        c.limits.max_frame_bytes = 1 << 20;
        c.limits.outbox_bytes = 1 << 21;
    })
    .await;
    let reports = tempfile::tempdir().unwrap();
    let url = format!("ws://{}{}", relay.relay.tcp_addr(), edgerelay::transport::websocket::ECHO_PATH);
    let run = tokio::process::Command::new(&python)
        .arg(&runner)
        .arg(&url)
        .args(include.iter().flat_map(|case| ["-i", case.as_str()]))
        .args(["-p", "2", "-o"])
        .arg(reports.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run).await.expect("kosoku within 600 s").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    let mut cases = 0;
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(reports.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.contains("_case_") || !name.ends_with(".json") {
            continue;
        }
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        cases += 1;
        let behavior = report["behavior"].as_str().unwrap_or("?");
        let close = report["behaviorClose"].as_str().unwrap_or("?");
        let fine = |b: &str| matches!(b, "OK" | "NON-STRICT" | "INFORMATIONAL");
        if !fine(behavior) || !fine(close) {
            bad.push(format!("{}: {behavior}/{close} {}", report["id"], report["result"]));
        }
    }
    // 247 cases of sections 1-10 and 60 compression cases.
    assert!(cases >= 300, "only {cases} case reports\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(bad.is_empty(), "failed cases:\n{}", bad.join("\n"));
    assert!(output.status.success(), "kosoku exit {:?}\n{stdout}\n{stderr}", output.status);
}

/// permessage-deflate end to end on `/v1/ws`: negotiated in the upgrade, a compressed `hello`
/// is understood (the relay answers `welcome`, compressed), and a deflate bomb closes with 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_is_negotiated_and_a_deflate_bomb_closes_with_1009() {
    use edgerelay::config::WebSocketConfig;
    use edgerelay::proto::Codec;
    use edgerelay::transport::websocket::deflate::{Deflater, negotiate};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let relay = common::start_with(|c| c.websocket.permessage_deflate = true).await;
    let cfg = WebSocketConfig { permessage_deflate: true, compress_min_bytes: 0, ..WebSocketConfig::default() };
    let agreed = negotiate(["permessage-deflate"], &cfg).unwrap();
    let compressed_frame = |payload: &[u8]| {
        let mut deflated = Vec::new();
        assert!(Deflater::new(&agreed, &cfg).deflate(payload, &mut deflated));
        let mut frame = vec![0xC1u8]; // FIN, RSV1, text
        let len = deflated.len();
        assert!(len < 65_536);
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        frame.extend_from_slice(&[0, 0, 0, 0]); // a zero mask
        frame.extend_from_slice(&deflated);
        frame
    };
    let connect = || async {
        let mut stream = tokio::net::TcpStream::connect(relay.relay.tcp_addr()).await.unwrap();
        let request = "GET /v1/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                       Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                       Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("sec-websocket-extensions: permessage-deflate"), "{head}");
        stream
    };
    // Reads one server frame: (first byte, payload).
    async fn frame(stream: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
        let first = stream.read_u8().await.unwrap();
        let len = match stream.read_u8().await.unwrap() {
            126 => u64::from(stream.read_u16().await.unwrap()),
            127 => stream.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await.unwrap();
        (first, payload)
    }

    let mut stream = connect().await;
    let hello = Codec::Json.encode(&relay.raw_hello());
    stream.write_all(&compressed_frame(&hello)).await.unwrap();
    let (first, payload) = frame(&mut stream).await;
    assert_eq!(first & 0x0F, 0x1, "a text frame");
    assert_eq!(first & 0x40, 0x40, "the welcome comes compressed");
    let mut inflater = edgerelay::transport::websocket::deflate::Inflater::new(&agreed);
    let welcome = inflater.inflate(&payload, 1 << 20).unwrap();
    assert!(String::from_utf8_lossy(&welcome).contains("welcome"), "{}", String::from_utf8_lossy(&welcome));

    // 10 MB of spaces in about 10 KB: far past limits.max_frame_bytes (64 KiB) once inflated.
    let mut bomb = br#"{"ping":{"req":1,"pad":""#.to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 10_000_000));
    let mut stream = connect().await;
    stream.write_all(&compressed_frame(&hello)).await.unwrap();
    frame(&mut stream).await;
    stream.write_all(&compressed_frame(&bomb)).await.unwrap();
    let close = loop {
        let (first, payload) = frame(&mut stream).await;
        if first & 0x0F == 0x8 {
            break payload;
        }
    };
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1009, "{}", String::from_utf8_lossy(&close[2..]));
    assert_eq!(&close[2..], b"message_too_big");
}
