//! The admin UI (`/admin/`) in headless Chromium, against a relay with real clients: an operator
//! signs in with the server API key, sees the connected clients by transport and their room with
//! its member count, browses the room's history newest first, disconnects a user (the client is
//! closed with 133 `disconnected` and may come back), and revokes a token and a user's tokens
//! (closed with 114 `token_revoked`, and refused when they try again). Without the key neither
//! the admin endpoints nor the page give anything away.
//!
//! A screenshot of the signed-in page is written to `target/tmp/admin.png`, and to
//! `docs/admin.png` with `EDGERELAY_UPDATE_SCREENSHOTS=1`.

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::Browser;
use common::{Transport, claims, closed_with, http_get, http_request, start_with};
use edgerelay::client::ClientError;
use edgerelay::proto::{Codec, ErrorCode, Payload};
use serde_json::{Value, json};

const KEY: &str = "admin-ui-test-api-key";
const ROOM: &str = "lobby";

/// Sets an input's value as a user typing would (its `input` listeners run).
fn type_into(id: &str, value: &str) -> String {
    format!(
        "(() => {{ const e = document.getElementById('{id}'); e.value = '{value}'; \
         e.dispatchEvent(new Event('input')); return true; }})()"
    )
}

/// Clicks an armed (two-click) button: the first click arms it, the second acts.
fn click_twice(selector: &str) -> String {
    format!("(() => {{ const b = document.querySelector(\"{selector}\"); b.click(); b.click(); return true; }})()")
}

#[tokio::test]
async fn an_operator_signs_in_sees_clients_and_rooms_browses_history_disconnects_and_revokes() {
    let relay = start_with(|config| config.api.key = Some(KEY.into())).await;
    let tcp = relay.relay.tcp_addr();

    // Two users in one room: alice over WebSocket, bob over raw QUIC with a token id.
    let alice_token = relay.token("alice", "acme", &["*"]);
    let mut bob_claims = claims("bob", "acme", &["*"]);
    bob_claims.jti = Some("bob-t1".into());
    let bob_token = relay.sign(&bob_claims);
    let mut alice = relay.try_connect(Transport::WebSocket, Codec::Json, &alice_token).await.unwrap();
    let mut bob = relay.try_connect(Transport::Quic, Codec::Postcard, &bob_token).await.unwrap();
    alice.join(ROOM).await.unwrap();
    bob.join(ROOM).await.unwrap();
    let publish = async |client: &edgerelay::client::Client, i: usize| {
        client.publish(ROOM, &format!("m{i}"), Payload::json(&json!({"text": format!("hello {i}")}))).await.unwrap();
    };
    for i in 1..=2 {
        publish(&alice, i).await;
    }

    // Without the key: the endpoints refuse, the page itself holds no data.
    for path in ["/v1/api/admin/nodes", "/v1/api/admin/rooms", "/v1/api/admin/connections", "/v1/api/admin/metrics"] {
        let (status, body) = http_get(tcp, path).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, _) = http_request(tcp, "GET", path, &[("authorization", "Bearer wrong-key-wrong-key")], "").await;
        assert_eq!(status, 401, "{path} with a wrong key");
    }
    let (status, page) = http_get(tcp, "/admin/").await;
    assert_eq!(status, 200);
    assert!(!page.contains("alice") && !page.contains(ROOM));

    let mut browser = Browser::launch().await;
    let page = browser.open(&format!("http://127.0.0.1:{}/admin/", tcp.port())).await;
    browser
        .call(
            Some(&page),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
    browser.wait_for(&page, "!document.getElementById('login').hidden").await;

    // A wrong key is refused and the page stays on the sign-in form.
    browser.eval(&page, &type_into("key", "not-the-key-at-all")).await;
    browser.eval(&page, "document.querySelector('#login button').click(), true").await;
    browser.wait_for(&page, "document.getElementById('login-error').textContent.includes('refused')").await;
    assert_eq!(browser.eval(&page, "document.getElementById('app').hidden").await, json!(true));

    // The right key: connections by transport, the room with both members.
    browser.eval(&page, &type_into("key", KEY)).await;
    browser.eval(&page, "document.querySelector('#login button').click(), true").await;
    let transports = browser
        .wait_for(
            &page,
            "(() => { const rows = [...document.querySelectorAll('#connections tr[data-user]')]; \
             const t = (u) => rows.find(r => r.dataset.user === u)?.querySelector('.badge')?.textContent; \
             return t('alice') && t('bob') ? [t('alice'), t('bob')] : null; })()",
        )
        .await;
    assert_eq!(transports, json!(["websocket", "quic"]));
    let chips = browser
        .wait_for(
            &page,
            "(() => { const c = (t) => document.querySelector(`[data-transport=${t}] b`)?.textContent; \
             return c('quic') ? [c('quic'), c('websocket')] : null; })()",
        )
        .await;
    assert_eq!(chips, json!(["1", "1"]));
    let members = browser
        .wait_for(&page, &format!("document.querySelector('#rooms tr[data-room=\"{ROOM}\"] .members')?.textContent"))
        .await;
    assert_eq!(members, json!("2"));
    assert_eq!(browser.eval(&page, "document.querySelectorAll('#nodes tr').length").await, json!(1));
    // Live metrics: a rate once two samples were taken; publishes between them show.
    browser.wait_for(&page, "document.querySelector('[data-metric=\"Connections\"] .value')").await;
    for i in 3..=5 {
        publish(&alice, i).await;
    }
    browser
        .wait_for(&page, "Number(document.querySelector('[data-metric=\"Publishes\"] .value')?.textContent) > 0")
        .await;

    // History: newest first, with offsets; "Older" pages further back.
    browser.eval(&page, &format!("document.querySelector('#rooms tr[data-room=\"{ROOM}\"]').click(), true")).await;
    let offsets = browser
        .wait_for(
            &page,
            "(() => { const o = [...document.querySelectorAll('#history tr[data-offset]')].map(r => Number(r.dataset.offset)); \
             return o.length === 5 ? o : null; })()",
        )
        .await;
    let offsets: Vec<u64> = serde_json::from_value(offsets).unwrap();
    assert!(offsets.windows(2).all(|w| w[0] == w[1] + 1), "newest first, consecutive: {offsets:?}");
    let newest_text = browser.eval(&page, "document.querySelector('#history tr[data-offset] .data').textContent").await;
    assert!(newest_text.as_str().unwrap().contains("hello 5"), "{newest_text}");
    browser.save_screenshot(&page, "admin.png", "admin.png").await;

    // Disconnect alice: the client gets the documented close, and may come back.
    browser.eval(&page, &type_into("tenant", "acme")).await;
    browser.eval(&page, &type_into("user", "alice")).await;
    browser.wait_for(&page, "!document.getElementById('user-actions').hidden").await;
    browser
        .wait_for(
            &page,
            "[...document.querySelectorAll('#connections tr[data-user]')].every(r => r.dataset.user === 'alice')",
        )
        .await;
    browser.eval(&page, &click_twice("#disconnect")).await;
    assert_eq!(closed_with(&mut alice).await, Some(ErrorCode::DISCONNECTED));
    browser.wait_for(&page, "document.getElementById('status').textContent.includes('alice disconnected')").await;
    browser.wait_for(&page, "document.querySelectorAll('#connections tr[data-user]').length === 0").await;
    let mut alice =
        relay.try_connect(Transport::WebSocket, Codec::Json, &alice_token).await.expect("a disconnect is not a ban");
    browser.wait_for(&page, "document.querySelectorAll('#connections tr[data-user=alice]').length === 1").await;

    // Revoke alice's tokens: closed with token_revoked, and the token is refused from now on.
    browser.eval(&page, &click_twice("#revoke-user")).await;
    assert_eq!(closed_with(&mut alice).await, Some(ErrorCode::TOKEN_REVOKED));
    assert_eq!(
        refusal(relay.try_connect(Transport::WebSocket, Codec::Json, &alice_token).await),
        Some(ErrorCode::TOKEN_REVOKED)
    );

    // Revoke bob's token by its id, from his row.
    browser.eval(&page, &type_into("user", "bob")).await;
    browser.wait_for(&page, "document.querySelector('#connections tr[data-user=bob] button.danger')").await;
    browser.eval(&page, &click_twice("#connections tr[data-user=bob] button.danger")).await;
    assert_eq!(closed_with(&mut bob).await, Some(ErrorCode::TOKEN_REVOKED));
    assert_eq!(
        refusal(relay.try_connect(Transport::Quic, Codec::Postcard, &bob_token).await),
        Some(ErrorCode::TOKEN_REVOKED)
    );

    // Signing out forgets the key: a reload shows the sign-in form again.
    browser.eval(&page, "document.getElementById('logout').click(), true").await;
    browser.eval(&page, "location.reload(), true").await;
    browser.wait_for(&page, "document.readyState === 'complete' && !document.getElementById('login').hidden").await;
    let stored: Value = browser.eval(&page, "sessionStorage.getItem('edgerelay.admin.key')").await;
    assert_eq!(stored, Value::Null);
    browser.close().await;
    relay.relay.shutdown().await;
}

fn refusal<T>(connected: Result<T, ClientError>) -> Option<ErrorCode> {
    match connected {
        Err(ClientError::Rejected { code, .. } | ClientError::Closed { code: Some(code), .. }) => Some(code),
        _ => None,
    }
}

#[tokio::test]
async fn admin_endpoints_check_their_queries() {
    let relay = start_with(|config| config.api.key = Some(KEY.into())).await;
    let tcp = relay.relay.tcp_addr();
    let auth = format!("Bearer {KEY}");
    let get = |path: &'static str| {
        let auth = auth.clone();
        async move {
            let (status, body) = http_request(tcp, "GET", path, &[("authorization", &auth)], "").await;
            (status, serde_json::from_str::<Value>(&body).unwrap_or(Value::Null))
        }
    };
    for path in [
        "/v1/api/admin/rooms?limit=0",
        "/v1/api/admin/rooms?limit=501",
        "/v1/api/admin/rooms?tenant=no%20spaces",
        "/v1/api/admin/connections?unknown=1",
        "/v1/api/admin/connections?offset=-1",
    ] {
        let (status, body) = get(path).await;
        assert_eq!((status, &body["error"]), (400, &json!("bad_request")), "{path}: {body}");
    }
    let client = relay.connect(Transport::WebSocket, Codec::Json, "cy", "globex", &["*"]).await;
    client.join("r1").await.unwrap();
    let (status, nodes) = get("/v1/api/admin/nodes").await;
    assert_eq!(status, 200);
    assert_eq!(nodes["nodes"][0]["node"], json!("local"));
    assert_eq!(nodes["nodes"][0]["connections"]["websocket"], json!(1));
    let (_, rooms) = get("/v1/api/admin/rooms?tenant=acme").await;
    assert_eq!(rooms["total"], json!(0), "tenants are apart: {rooms}");
    let (_, rooms) = get("/v1/api/admin/rooms?tenant=globex&q=r").await;
    assert_eq!(rooms["rooms"], json!([{"tenant": "globex", "room": "r1", "members": 1, "connections_here": 1}]));
    let (_, metrics) = get("/v1/api/admin/metrics").await;
    assert!(metrics["values"]["edgerelay_connections"].as_f64().unwrap() >= 1.0, "{metrics}");
    relay.relay.shutdown().await;
}
