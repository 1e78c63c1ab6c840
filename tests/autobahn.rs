//! The Autobahn WebSocket conformance cases, run by kosoku (PyPI; scripts/test installs it into
//! .venv from tests/python/requirements.txt) against `/v1/ws-echo` of a real relay on loopback.
//! The echo path runs the same framing, permessage-deflate and socket code as `/v1/ws` (see
//! `transport/websocket/echo.rs`); permessage-deflate is on, so clients that offer it get it.
//!
//! Excluded: 9.* (performance: up to 16 MiB messages, minutes on a shared CI machine) and the
//! compression cases 12.* / 13.*, which kosoku 0.1.0 cannot run ("Strings must be encoded before
//! hashing" in its Python 3 port of the case file, before any byte reaches the relay); the
//! summary of a full run is in docs/fuzzing.md. Every case run must be OK, NON-STRICT or
//! INFORMATIONAL; a FAILED or ERROR case fails the test with its id.

mod common;

use std::path::Path;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_cases_pass_against_the_websocket_server() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let kosoku = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/kosoku");
    assert!(
        kosoku.exists(),
        "{} missing: run scripts/test (it installs tests/python/requirements.txt)",
        kosoku.display()
    );
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
        .arg(&kosoku)
        .arg(&url)
        .args(["-x", "9.*", "-x", "12.*", "-x", "13.*", "-p", "2", "-o"])
        .arg(reports.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run).await.expect("kosoku within 300 s").unwrap();
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
    assert!(cases >= 240, "only {cases} case reports\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(bad.is_empty(), "failed cases:\n{}", bad.join("\n"));
    assert!(output.status.success(), "kosoku exit {:?}\n{stdout}\n{stderr}", output.status);
}
