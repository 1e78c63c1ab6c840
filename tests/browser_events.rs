//! Chromium's `EventSource` on the relay's SSE endpoint (docs/events.md): a page of another
//! origin (CORS) receives a persistent topic's events, and after the relay ends its stream (the
//! server API's `disconnect`) the browser reconnects by itself with `Last-Event-ID` and gets
//! exactly the events it missed, then live ones. Needs a `chromium` binary (see
//! `tests/common/browser.rs`).

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::Browser;
use common::{http_request, start_with};
use serde_json::{Value, json};

const API_KEY: &str = "browser-events-api-key-0123456789";

async fn publish(tcp: std::net::SocketAddr, ids: std::ops::RangeInclusive<u32>) {
    let events: Vec<Value> =
        ids.map(|n| json!({"topic": "orders.eu.created", "id": format!("e{n}"), "data": {"n": n}})).collect();
    let body = json!({"tenant": "acme", "events": events}).to_string();
    let auth = format!("Bearer {API_KEY}");
    let (status, answer) = http_request(tcp, "POST", "/v1/api/events", &[("authorization", &auth)], &body).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn event_source_receives_and_resumes_with_last_event_id() {
    let relay = start_with(|config| {
        config.api.key = Some(API_KEY.into());
        config.events.persistent = vec!["orders.>".into()];
    })
    .await;
    let tcp = relay.relay.tcp_addr();
    let token = relay.token("alice", "acme", &["orders.*"]);
    let mut browser = Browser::launch().await;
    // The page's origin is relay.test; the stream is on 127.0.0.1: a cross-origin request.
    let page = browser.open(&format!("http://relay.test:{}/healthz", tcp.port())).await;
    // The script must run in the loaded page, not in the blank one before it.
    browser.wait_for(&page, "location.pathname === '/healthz' && document.readyState === 'complete'").await;
    let source = format!("http://127.0.0.1:{}/v1/events?token={token}&topic=orders.eu.created", tcp.port());
    let script = format!(
        "window.got = []; window.opened = 0; const es = new EventSource({source:?}); \
         es.onopen = () => window.opened++; \
         es.onmessage = (e) => window.got.push([e.lastEventId, JSON.parse(e.data).id]); 'ok'"
    );
    assert_eq!(browser.eval(&page, &script).await, json!("ok"));
    browser.wait_for(&page, "window.opened === 1").await;
    publish(tcp, 1..=3).await;
    let got = browser.wait_for(&page, "window.got.length >= 3 && window.got").await;
    let epoch = got[0][0].as_str().unwrap().split('-').next().unwrap().to_owned();
    let want = |ns: std::ops::RangeInclusive<u32>| -> Value {
        ns.map(|n| json!([format!("{epoch}-{n}"), format!("e{n}")])).collect::<Vec<_>>().into()
    };
    assert_eq!(got, want(1..=3));

    // The relay ends the stream; events published meanwhile arrive after the browser's own
    // reconnect (it sends Last-Event-ID), once each, then live ones.
    let auth = format!("Bearer {API_KEY}");
    let body = json!({"tenant": "acme", "user": "alice"}).to_string();
    let (status, _) = http_request(tcp, "POST", "/v1/api/disconnect", &[("authorization", &auth)], &body).await;
    assert_eq!(status, 200);
    publish(tcp, 4..=6).await;
    browser.wait_for(&page, "window.opened === 2").await;
    publish(tcp, 7..=7).await;
    let got = browser.wait_for(&page, "window.got.length >= 7 && window.got").await;
    assert_eq!(got, want(1..=7), "nothing lost, nothing twice");
    browser.close().await;
    relay.relay.shutdown().await;
}
