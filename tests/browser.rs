//! The browser proof: headless Chromium opens the demo page the relay serves at `/` twice, one
//! page on WebTransport and one forced onto the WebSocket fallback, and chats in one room with a
//! native Rust client over raw QUIC. Every participant must see every message, in offset order.
//! A screenshot of the page after the round trip is written to
//! `target/tmp/browser-demo-webtransport.png` (the path is printed).
//!
//! The fallback tests make WebTransport really fail (a wrong certificate hash, UDP that goes
//! nowhere, a page that is no secure context) and count the page's WebSocket connections in the
//! `/metrics` of a relay binary of their own: the metrics recorder is process-wide, so an
//! in-process relay would count the other tests' pages too.
//!
//! Chromium is driven over the DevTools protocol (CDP) by `tests/common/browser.rs`, so the test
//! needs nothing but a `chromium` binary (`scripts/test` installs Debian's; `EDGERELAY_CHROMIUM`
//! names another one).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/process.rs"]
mod process;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use browser::Browser;
use common::{TestRelay, Transport, http_get, http_request, start, start_with, within};
use edgerelay::client::{Client, ClientOptions};
use edgerelay::proto::{Codec, Payload};
use process::RelayProcess;
use serde_json::{Value, json};

const ROOM: &str = "chat:browsers";
const ROUNDS: usize = 4;

fn page_url(relay: &TestRelay, sub: &str, transport: &str) -> String {
    let token = relay.token(sub, "acme", &["chat:*"]);
    format!("http://127.0.0.1:{}/#token={token}&room={ROOM}&transport={transport}&join", relay.relay.tcp_addr().port())
}

/// What a participant saw: (offset, sender, text).
type Seen = Vec<(u64, String, String)>;

fn seen_by_page(messages: &Value) -> Seen {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let text = m["data"]["text"].as_str().unwrap().to_owned();
            (m["offset"].as_u64().unwrap(), m["from"].as_str().unwrap().to_owned(), text)
        })
        .collect()
}

#[tokio::test]
async fn two_chromium_pages_and_a_rust_client_chat_in_order_over_webtransport_and_websocket() {
    let relay = start().await;
    let mut browser = Browser::launch().await;
    let wt_page = browser.open(&page_url(&relay, "alice", "auto")).await;
    let ws_page = browser.open(&page_url(&relay, "bob", "websocket")).await;
    // Both pages joined, each over the transport it was meant to use.
    for (page, transport) in [(&wt_page, "webtransport"), (&ws_page, "websocket")] {
        let used = browser.wait_for(page, "window.demo && demo.room && demo.state === 'open' && demo.transport").await;
        assert_eq!(used, json!(transport), "page meant for {transport}");
    }
    let mut rust = relay.connect(Transport::Quic, Codec::Json, "carol", "acme", &["chat:*"]).await;
    rust.join(ROOM).await.unwrap();

    // Round-robin publishing, each waiting for its ack: the acked offsets are the order.
    let mut sent: Seen = Vec::new();
    for round in 0..ROUNDS {
        for (page, who) in [(&wt_page, "alice"), (&ws_page, "bob")] {
            let text = format!("{who} says {round}");
            let position = browser.eval(page, &format!("demo.send({text:?})")).await;
            sent.push((position["offset"].as_u64().unwrap(), who.to_owned(), text));
        }
        let text = format!("carol says {round}");
        let payload = Payload::json(&json!({ "text": text }));
        let position = rust.publish(ROOM, &format!("r{round}"), payload).await.unwrap();
        sent.push((position.offset, "carol".to_owned(), text));
    }
    let total = sent.len() as u64;
    assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>(), "acks are contiguous");

    for page in [&wt_page, &ws_page] {
        let messages = browser.wait_for(page, &format!("demo.messages.length >= {total} && demo.messages")).await;
        assert_eq!(seen_by_page(&messages), sent, "a page sees every message in offset order");
    }
    let mut seen_by_rust: Seen = Vec::new();
    for _ in 0..total {
        let m = within("message at the Rust client", rust.next_message()).await.unwrap();
        let data: Value = serde_json::from_str(m.data.as_json().unwrap()).unwrap();
        seen_by_rust.push((m.position.offset, m.from, data["text"].as_str().unwrap().to_owned()));
    }
    assert_eq!(seen_by_rust, sent, "the Rust client sees every message in offset order");

    // Forward history on a stream of its own, and a network change: the page pads its first
    // packets and asks its room for what it missed (nothing here) on a new stream; the
    // connection carries on and the next message arrives once.
    let after = browser
        .eval(&wt_page, &format!("demo.client.historyAfter({ROOM:?}, {{ after: {} }}).then((p) => p.messages.map((m) => m.position.offset))", total - 2))
        .await;
    assert_eq!(after, json!([total - 1, total]), "historyAfter over WebTransport");
    browser.eval(&wt_page, "demo.client.networkChanged()").await;
    let payload = Payload::json(&json!({ "text": "carol after the change" }));
    let position = rust.publish(ROOM, "r-after", payload).await.unwrap();
    sent.push((position.offset, "carol".to_owned(), "carol after the change".to_owned()));
    let expect = format!("demo.messages.length >= {} && demo.messages", total + 1);
    let messages = browser.wait_for(&wt_page, &expect).await;
    assert_eq!(seen_by_page(&messages), sent, "nothing twice after the network change");
    let states = browser.eval(&wt_page, "demo.state + ' ' + demo.states.join(',')").await;
    assert!(!states.as_str().unwrap().contains("reconnecting"), "the connection carried on: {states}");

    // The page shows the transport in use and the last message: take its picture.
    let status = browser.eval(&wt_page, "document.getElementById('status').textContent").await;
    assert_eq!(status, json!("Connected over WebTransport"), "the status line says it in words");
    let png = browser.screenshot(&wt_page).await;
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-demo-webtransport.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot of the demo page after the round trip: {}", path.display());

    browser.close().await;
}

/// The demo page as two people use it: each opens it with a name (no token anywhere: the page
/// asks the relay's dev token endpoint), Alice on WebTransport as the page chooses and Bob forced
/// onto WebSocket. Each sees the other in the member list; what one types shows as "… is
/// typing…" on the other page (over WebTransport that view arrives as a datagram, over WebSocket
/// as a message: both decode the same way); a message sent with the form arrives and ends the
/// typing line; the connection state reads as words, and no JWT is on screen or in the address bar.
#[tokio::test]
async fn two_people_chat_on_the_demo_page_with_members_typing_and_no_token_on_screen() {
    let relay = start().await;
    let mut browser = Browser::launch().await;
    let port = relay.relay.tcp_addr().port();
    let url = |name: &str, extra: &str| format!("http://127.0.0.1:{port}/#name={name}&room=chat:demo&join{extra}");
    let alice = browser.open(&url("alice", "")).await;
    let used = browser.wait_for(&alice, "window.demo && demo.room && demo.state === 'open' && demo.transport").await;
    assert_eq!(used, json!("webtransport"));
    let bob = browser.open(&url("bob", "&transport=websocket")).await;
    browser.wait_for(&bob, "window.demo && demo.room && demo.state === 'open'").await;

    // The member list: the other one with a Call button, oneself marked as such.
    for (page, me, other) in [(&alice, "alice", "bob"), (&bob, "bob", "alice")] {
        let listed = browser
            .wait_for(
                page,
                &format!("(li => li && li.innerText)(document.querySelector('#people li[data-user={other}]'))"),
            )
            .await;
        assert!(listed.as_str().unwrap().contains(other), "{listed}");
        let own = browser.eval(page, &format!("document.querySelector('#people li[data-user={me}]').innerText")).await;
        assert_eq!(own, json!(format!("{me} (you)")));
    }

    // Typing, both ways.
    let type_into = |text: &str| {
        format!(
            "(t => {{ t.value = {text:?}; t.dispatchEvent(new Event('input')); return true; }})(document.getElementById('text'))"
        )
    };
    browser.eval(&bob, &type_into("hel")).await;
    browser.wait_for(&alice, "document.getElementById('typing').textContent === 'bob is typing…'").await;
    browser.eval(&alice, &type_into("h")).await;
    browser.wait_for(&bob, "document.getElementById('typing').textContent === 'alice is typing…'").await;
    assert_eq!(browser.eval(&alice, "document.getElementById('typing').textContent").await, json!("bob is typing…"));

    // Bob sends with the form: Alice reads it, and Bob no longer shows as typing.
    browser.eval(&bob, &format!("{}; document.getElementById('send-button').click()", type_into("hello alice"))).await;
    browser.wait_for(&alice, "document.getElementById('messages').innerText.includes('hello alice')").await;
    browser.wait_for(&alice, "document.getElementById('typing').textContent === ''").await;
    let seen = browser.eval(&alice, "demo.messages.map(m => [m.from, m.data.text])").await;
    assert_eq!(seen, json!([["bob", "hello alice"]]));

    for (page, words) in [(&alice, "Connected over WebTransport"), (&bob, "Connected over WebSocket")] {
        assert_eq!(browser.eval(page, "document.getElementById('status').textContent").await, json!(words));
        let shown = browser
            .eval(page, "document.body.innerText + location.href + [...document.querySelectorAll('input')].map(i => i.value).join()")
            .await;
        assert!(!shown.as_str().unwrap().contains("eyJ"), "a JWT is on screen: {shown}");
    }
    browser.save_screenshot(&alice, "browser-demo-chat.png", "demo-chat.png").await;
    browser.close().await;
}

/// History on the demo page: after a reload the page shows the room's latest page of messages
/// again, and scrolling to the top loads the earlier ones, each message once and in order.
#[tokio::test]
async fn the_demo_page_shows_history_after_a_reload_and_loads_earlier_on_scroll() {
    let relay = start().await;
    let mut browser = Browser::launch().await;
    let port = relay.relay.tcp_addr().port();
    let page = browser.open(&format!("http://127.0.0.1:{port}/#name=alice&room=chat:history&join")).await;
    browser.wait_for(&page, "window.demo && demo.room && demo.state === 'open'").await;
    browser
        .eval(&page, "(async () => { for (let i = 1; i <= 40; i++) await demo.send(`line ${i}`); return true; })()")
        .await;
    browser.wait_for(&page, "demo.messages.length === 40").await;

    browser.call(Some(&page), "Page.reload", json!({})).await;
    let shown = browser
        .wait_for(
            &page,
            "window.demo && demo.room && demo.chat.hasEarlier !== null && demo.messages.map(m => m.offset)",
        )
        .await;
    assert_eq!(shown, json!((11..=40).collect::<Vec<u64>>()), "the latest 30, as the page loads");
    assert_eq!(browser.eval(&page, "demo.chat.hasEarlier").await, json!(true));
    assert_eq!(browser.eval(&page, "demo.messages[0].data.text").await, json!("line 11"));
    browser.wait_for(&page, "document.querySelector('#messages li.earlier button')").await;

    browser.eval(&page, "document.getElementById('messages').scrollTop = 0; true").await;
    let all = browser.wait_for(&page, "demo.messages.length === 40 && demo.messages.map(m => m.offset)").await;
    assert_eq!(all, json!((1..=40).collect::<Vec<u64>>()), "every message once, oldest first");
    assert_eq!(browser.eval(&page, "demo.chat.hasEarlier").await, json!(false));
    let texts = browser
        .eval(&page, "[...document.querySelectorAll('#messages li[data-offset]')].map(li => li.lastChild.textContent)")
        .await;
    assert_eq!(texts, json!((1..=40).map(|i| format!("line {i}")).collect::<Vec<_>>()), "shown in order");
    assert_eq!(browser.eval(&page, "document.querySelector('#messages li.earlier')").await, Value::Null);
    browser.close().await;
}

/// Carol (a Rust client over QUIC) publishes messages `from..to` and records their positions.
async fn carol_publishes(relay: &TestRelay, sent: &mut Seen, from: usize, to: usize) {
    let rust = relay.connect(Transport::Quic, Codec::Json, "carol", "acme", &["chat:*"]).await;
    for i in from..to {
        let text = format!("carol says {i}");
        let position = rust.publish(ROOM, &format!("c{i}"), Payload::json(&json!({ "text": text }))).await.unwrap();
        sent.push((position.offset, "carol".to_owned(), text));
    }
    rust.close().await;
}

/// The relay goes away under both pages (drained, then down for a while, then back on the same
/// ports and data): each page reconnects by itself over the transport it had, rejoins from the
/// last offset it saw, and ends with every message exactly once, in order: the ones sent before
/// the restart and the ones sent after it, including any sent before the page was back.
#[tokio::test]
async fn pages_reconnect_after_the_relay_restarts_and_miss_nothing() {
    let relay = start().await;
    let mut browser = Browser::launch().await;
    let wt_page = browser.open(&page_url(&relay, "alice", "auto")).await;
    let ws_page = browser.open(&page_url(&relay, "bob", "websocket")).await;
    for page in [&wt_page, &ws_page] {
        browser.wait_for(page, "window.demo && demo.room && demo.state === 'open'").await;
    }
    let mut sent: Seen = Vec::new();
    carol_publishes(&relay, &mut sent, 0, 3).await;
    for page in [&wt_page, &ws_page] {
        browser.wait_for(page, "demo.messages.length >= 3").await;
    }

    let relay = relay.restart(Duration::from_millis(1500)).await;
    // Published at once, most likely before the pages are back: they get these by resuming.
    carol_publishes(&relay, &mut sent, 3, 6).await;
    for (page, transport) in [(&wt_page, "webtransport"), (&ws_page, "websocket")] {
        let messages = browser.wait_for(page, "demo.messages.length >= 6 && demo.messages").await;
        assert_eq!(seen_by_page(&messages), sent, "a page sees every message once, in offset order");
        let states = browser.wait_for(page, "demo.state === 'open' && demo.states").await;
        assert!(
            states.as_array().unwrap().contains(&json!("reconnecting")),
            "the page noticed the restart and reconnected: {states}"
        );
        assert_eq!(browser.eval(page, "demo.transport").await, json!(transport), "back on the same transport");
    }
    // After the restart the pages publish again, and see each other.
    let position = browser.eval(&wt_page, "demo.send('alice is back')").await;
    sent.push((position["offset"].as_u64().unwrap(), "alice".to_owned(), "alice is back".to_owned()));
    let messages = browser.wait_for(&ws_page, "demo.messages.length >= 7 && demo.messages").await;
    assert_eq!(seen_by_page(&messages), sent);

    browser.close().await;
}

/// `edgerelay_connections{transport="websocket"}` (open now) and
/// `edgerelay_connections_total{transport="websocket"}` (ever accepted) of a relay process.
async fn websockets(relay: &RelayProcess) -> (u64, u64) {
    let (status, body) = http_get(relay.tcp, "/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str| {
        let prefix = format!("{name}{{transport=\"websocket\"}} ");
        body.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
    };
    (value("edgerelay_connections"), value("edgerelay_connections_total"))
}

/// A relay binary of its own (its `/metrics` count only this test's connections) and the page
/// URL at which WebTransport fails the way `name` says.
struct Broken {
    name: &'static str,
    /// What the page must give as the reason for the fallback.
    reason: &'static str,
    relay: RelayProcess,
    _dir: tempfile::TempDir,
    /// Held open: the WebTransport port the page is told about, where nothing ever answers.
    _black_hole: Option<std::net::UdpSocket>,
    page: String,
}

impl Broken {
    /// The relay works, but the page pins a certificate hash that is not the relay's.
    async fn wrong_certificate_hash() -> Broken {
        let dir = tempfile::tempdir().unwrap();
        let mut relay = RelayProcess::new(dir.path());
        relay.start().await;
        let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let page = Self::url(&relay, "127.0.0.1", &format!("&cert={wrong}"));
        Broken {
            name: "wrong certificate hash",
            reason: "certificate rejected",
            relay,
            _dir: dir,
            _black_hole: None,
            page,
        }
    }

    /// UDP silently dropped: the relay's QUIC listener is on 127.0.0.2, and on 127.0.0.1 (where
    /// the page, opened at 127.0.0.1, looks for WebTransport) the same port is a socket that
    /// reads nothing and answers nothing. WebTransport can only time out.
    async fn udp_black_hole() -> Broken {
        let dir = tempfile::tempdir().unwrap();
        let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut relay = RelayProcess::new(dir.path());
        relay.udp = std::net::SocketAddr::from(([127, 0, 0, 2], hole.local_addr().unwrap().port()));
        relay.start().await;
        let page = Self::url(&relay, "127.0.0.1", "");
        Broken {
            name: "UDP black hole",
            reason: "no answer within 3000 ms",
            relay,
            _dir: dir,
            _black_hole: Some(hole),
            page,
        }
    }

    /// The page over plain http at a host name other than `localhost`, as on a LAN: not a
    /// secure context, so the browser offers no WebTransport at all.
    async fn insecure_page() -> Broken {
        let dir = tempfile::tempdir().unwrap();
        let mut relay = RelayProcess::new(dir.path());
        relay.start().await;
        let page = Self::url(&relay, "relay.test", "");
        Broken {
            name: "not a secure context",
            reason: "not a secure context",
            relay,
            _dir: dir,
            _black_hole: None,
            page,
        }
    }

    fn url(relay: &RelayProcess, host: &str, extra: &str) -> String {
        let token = relay.token("alice");
        format!("http://{host}:{}/#token={token}&room={ROOM}&join{extra}", relay.tcp.port())
    }

    async fn websockets(&self) -> (u64, u64) {
        websockets(&self.relay).await
    }

    /// Carol, a native client over raw QUIC straight to the relay's listener.
    async fn carol(&self) -> Client {
        let target = self.relay.quic_target(vec![self.relay.cert_pin().await]);
        let carol = Client::connect(target, ClientOptions::new(self.relay.token("carol")).codec(Codec::Json))
            .await
            .expect("carol connects");
        carol.join(ROOM).await.unwrap();
        carol
    }
}

/// The fallback as users meet it: WebTransport is tried first and really fails (a certificate
/// hash the relay's certificate does not match; UDP that silently goes nowhere; a page that is
/// no secure context, where the browser has no WebTransport), and the demo
/// page must settle on one WebSocket connection (sampled from the relay's `/metrics` over
/// ten seconds: one open, one ever accepted), say why it fell back, and chat both ways through
/// its form.
#[tokio::test]
async fn when_webtransport_fails_the_page_chats_over_one_stable_websocket() {
    let cases = [Broken::wrong_certificate_hash().await, Broken::udp_black_hole().await, Broken::insecure_page().await];
    let mut browser = Browser::launch().await;
    let mut pages = Vec::new();
    for case in &cases {
        pages.push(browser.open(&case.page).await);
    }
    for case in &cases {
        within(&format!("{}: a WebSocket connection", case.name), async {
            while case.websockets().await.1 == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }
    // Ten seconds: several times the WebTransport timeout and the first reconnect delays.
    let mut samples: Vec<Vec<(u64, u64)>> = vec![Vec::new(); cases.len()];
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (case, samples) in cases.iter().zip(&mut samples) {
            samples.push(case.websockets().await);
        }
    }
    for (case, samples) in cases.iter().zip(&samples) {
        println!("{}: WebSocket connections (open, accepted) every 0.5 s: {samples:?}", case.name);
    }
    for (case, samples) in cases.iter().zip(&samples) {
        assert!(samples.iter().all(|&s| s == (1, 1)), "{}: one stable WebSocket connection: {samples:?}", case.name);
    }

    for (case, page) in cases.iter().zip(&pages) {
        let status = browser.wait_for(page, "demo.room && demo.state === 'open' && demo.transport").await;
        assert_eq!(status, json!("websocket"), "{}", case.name);
        let line = browser.eval(page, "document.getElementById('status').textContent").await;
        let line = line.as_str().unwrap();
        assert!(
            line.contains("WebSocket fallback: WebTransport failed") && line.contains(case.reason),
            "{}: {line}",
            case.name
        );
        println!("{}: status line: {line}", case.name);

        // Alice types and presses Send; Carol gets it. Carol answers; it shows on the page.
        let mut carol = case.carol().await;
        browser.wait_for(page, "!document.getElementById('send-button').disabled").await;
        browser
            .eval(
                page,
                "document.getElementById('text').value = 'hello from the fallback'; \
                 document.getElementById('send-button').click()",
            )
            .await;
        let m = within("alice's message at carol", carol.next_message()).await.unwrap();
        let data: Value = serde_json::from_str(m.data.as_json().unwrap()).unwrap();
        assert_eq!((m.from.as_str(), data), ("alice", json!({"text": "hello from the fallback"})));
        carol.publish(ROOM, "c1", Payload::json(&json!({"text": "carol hears you"}))).await.unwrap();
        browser.wait_for(page, "document.getElementById('messages').innerText.includes('carol hears you')").await;
        carol.close().await;
        assert_eq!(case.websockets().await, (1, 1), "{}: still the one WebSocket connection", case.name);
    }

    browser.close().await;
}

/// `close()` while the client is still connecting ends it: `connect()` rejects instead of
/// connecting anyway, and the WebSocket it was opening does not stay open.
#[tokio::test]
async fn closing_a_client_while_it_connects_leaves_no_websocket_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::new(dir.path());
    relay.start().await;
    let mut browser = Browser::launch().await;
    let page = browser.open(&format!("http://127.0.0.1:{}/", relay.tcp.port())).await;
    // The demo page itself, not the blank document a new tab starts with (it has no base URL).
    browser.wait_for(&page, "location.protocol === 'http:' && document.readyState === 'complete' && window.demo").await;
    let script = format!(
        "(async () => {{ \
           const {{ EdgeRelay }} = await import('/sdk/index.js'); \
           const client = new EdgeRelay({{ token: {token:?}, transport: 'websocket', \
                                           webSocketUrl: `ws://${{location.host}}/v1/ws` }}); \
           const connecting = client.connect(); \
           client.close(); \
           try {{ await connecting; return 'connected after close()'; }} catch (e) {{ return e.message; }} \
         }})()",
        token = relay.token("alice"),
    );
    assert_eq!(browser.eval(&page, &script).await, json!("closed before it connected"));
    within("no WebSocket left open", async {
        while websockets(&relay).await.0 != 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    browser.close().await;
}

/// Pages opened at `http://localhost:…/` and `http://[::1]:…/` build their WebTransport URL from
/// the page's host (`https://[::1]:…` keeps its brackets) and reach a relay on IPv6 loopback
/// over WebTransport: Chromium takes `localhost` to `::1` for QUIC, which is why a relay that
/// listens on IPv4 only leaves such a page on the WebSocket fallback. Skipped where the machine
/// has no IPv6 loopback.
#[tokio::test]
async fn pages_at_localhost_and_ipv6_loopback_use_webtransport() {
    let (Ok(udp), Ok(tcp)) = (std::net::UdpSocket::bind("[::1]:0"), std::net::TcpListener::bind("[::1]:0")) else {
        println!("skipped: no IPv6 loopback here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::new(dir.path());
    (relay.udp, relay.tcp) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    drop((udp, tcp));
    relay.start().await;
    let mut browser = Browser::launch().await;
    for host in ["localhost", "[::1]"] {
        let token = relay.token("alice");
        let page = browser.open(&format!("http://{host}:{}/#token={token}&room={ROOM}&join", relay.tcp.port())).await;
        let transport = browser.wait_for(&page, "demo.room && demo.state === 'open' && demo.transport").await;
        assert_eq!(transport, json!("webtransport"), "page at {host}");
        let position = browser.eval(&page, &format!("demo.send('hello from {host}')")).await;
        assert!(position["offset"].as_u64().unwrap() >= 1, "page at {host}: {position}");
    }
    browser.close().await;
}

/// Carol, a native client of a relay process, over QUIC.
async fn carol_at(relay: &RelayProcess) -> Client {
    let target = relay.quic_target(vec![relay.cert_pin().await]);
    Client::connect(target, ClientOptions::new(relay.token("carol")).codec(Codec::Json)).await.unwrap()
}

/// Carol publishes `c{from}` ..= `c{to}` to [`ROOM`], as "message {i}".
async fn publish_numbers(carol: &Client, from: u64, to: u64) {
    for i in from..=to {
        carol.publish(ROOM, &format!("c{i}"), Payload::json(&json!({ "text": format!("message {i}") }))).await.unwrap();
    }
}

/// The offsets every tab lists in `expression` (its notifications), together, sorted.
async fn notified_in(browser: &mut Browser, tabs: &[String], expression: &str) -> Vec<u64> {
    let mut all: Vec<u64> = Vec::new();
    for tab in tabs {
        let list = browser.eval(tab, expression).await;
        all.extend(list.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()));
    }
    all.sort_unstable();
    all
}

/// Notifications the remaining tabs showed for `from..=to`, published as the leader tab closed:
/// the closing tab may still have shown the first of them (its page lives a moment after
/// `close_page`, and that notification is then the browser's one); the new leader shows the
/// rest, each once, in order.
fn notified_once_after_hand_over(shown: &[u64], from: u64, to: u64) {
    let first = shown.first().copied().unwrap_or(to + 1);
    assert!((from..=to).contains(&first), "the new leader notified nothing of {from}..={to}: {shown:?}");
    assert_eq!(shown, (first..=to).collect::<Vec<u64>>(), "the rest notified once, by the new leader");
}

/// Waits until a relay process holds one WebSocket after accepting two (a hand-over).
async fn one_connection_again(relay: &RelayProcess) {
    within("one connection again", async {
        while websockets(relay).await != (1, 2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// One connection for all tabs: three tabs of the same user (same origin, `shareKey`) hold one
/// WebSocket to the relay between them (its `/metrics`), all see every message once and in
/// order, and when the leader tab is closed while messages keep coming, another tab takes over
/// with a new connection and every remaining tab ends with every message exactly once, in order.
#[tokio::test]
async fn tabs_share_one_connection_and_a_closed_leader_hands_over_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::new(dir.path());
    relay.start().await;
    let mut browser = Browser::launch().await;
    let token = relay.token("alice");
    let setup = format!(
        "(async () => {{ \
           const {{ SharedRelay }} = await import('/sdk/index.js'); \
           const shared = new SharedRelay({{ shareKey: 'alice', token: {token:?}, transport: 'websocket', \
                                            webSocketUrl: `ws://${{location.host}}/v1/ws`, networkEvents: false }}); \
           window.shared = shared; window.seen = []; window.notified = []; \
           shared.room('{ROOM}').addEventListener('message', (e) => window.seen.push(e.detail.position.offset)); \
           shared.addEventListener('notify', (e) => window.notified.push(e.detail.position.offset)); \
           await shared.connect(); \
           await shared.join('{ROOM}'); \
           return true; \
         }})()"
    );
    let mut tabs = Vec::new();
    for _ in 0..3 {
        let tab = browser.open(&format!("http://127.0.0.1:{}/", relay.tcp.port())).await;
        browser
            .wait_for(&tab, "location.protocol === 'http:' && document.readyState === 'complete' && window.demo")
            .await;
        browser.eval(&tab, &setup).await;
        tabs.push(tab);
    }
    let mut leaders = Vec::new();
    for tab in &tabs {
        leaders.push(browser.eval(tab, "window.shared.isLeader").await == json!(true));
    }
    assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "one leader: {leaders:?}");
    assert_eq!(websockets(&relay).await, (1, 1), "three tabs, one connection");

    let carol = carol_at(&relay).await;
    let publish = |from: u64, to: u64| publish_numbers(&carol, from, to);
    publish(1, 10).await;
    for tab in &tabs {
        let seen = browser.wait_for(tab, "window.seen.length >= 10 && window.seen").await;
        assert_eq!(seen, json!((1..=10).collect::<Vec<u64>>()));
    }

    // Notified once per browser: in the leader's tab only.
    let mut notified: Vec<u64> = Vec::new();
    for tab in &tabs {
        let list = browser.eval(tab, "window.notified").await;
        notified.extend(list.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()));
    }
    assert_eq!(notified, (1..=10).collect::<Vec<u64>>(), "each message notified once");

    // The leader tab goes while messages keep coming.
    let leader = tabs.remove(leaders.iter().position(|l| *l).unwrap());
    browser.close_page(&leader).await;
    publish(11, 25).await;
    for tab in &tabs {
        let seen = browser.wait_for(tab, "window.seen.length >= 25 && window.seen").await;
        assert_eq!(seen, json!((1..=25).collect::<Vec<u64>>()), "every message once, in order, across the hand-over");
    }
    let mut leaders = 0;
    for tab in &tabs {
        if browser.wait_for(tab, "window.shared.state === 'open' && [window.shared.isLeader]").await == json!([true]) {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1, "another tab took over");
    // A follower publishes through the new leader; every tab sees it.
    let mut follower = None;
    for tab in &tabs {
        if browser.eval(tab, "window.shared.isLeader").await == json!(false) {
            follower = Some(tab.clone());
        }
    }
    let position =
        browser.eval(&follower.unwrap(), &format!("window.shared.publish('{ROOM}', {{ text: 'from a tab' }})")).await;
    assert_eq!(position["offset"], json!(26));
    for tab in &tabs {
        browser.wait_for(tab, "window.seen.length >= 26").await;
        assert_eq!(browser.eval(tab, "window.seen.length").await, json!(26));
    }
    // Across the hand-over too: the new leader notifies what came after, nothing twice.
    let notified_after = notified_in(&mut browser, &tabs, "window.notified").await;
    notified_once_after_hand_over(&notified_after, 11, 26);
    one_connection_again(&relay).await;
    carol.close().await;
    browser.close().await;
}

/// Whether a demo tab leads, and its status line.
const STATUS: &str = "[demo.leader, document.getElementById('sharing').textContent]";

/// The issue's proof on the demo page itself: three tabs of the page as one user (same origin and
/// user, so one `SharedRelay`) hold one WebSocket to the relay between them (its `/metrics`),
/// each tab's status line says whether it holds the connection (beside the state), and a message from someone else
/// raises one notification per browser, in one tab. When the leader tab is closed while messages
/// keep coming, another tab takes over with a new connection: both remaining tabs show every
/// message exactly once, in order, and the messages after the hand-over are notified once too.
#[tokio::test]
async fn three_demo_page_tabs_share_one_connection_hand_over_without_gap_and_notify_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::new(dir.path());
    relay.start().await;
    let mut browser = Browser::launch().await;
    let origin = format!("http://127.0.0.1:{}", relay.tcp.port());
    browser.call(None, "Browser.grantPermissions", json!({"origin": origin, "permissions": ["notifications"]})).await;
    let url = format!("{origin}/#token={}&room={ROOM}&transport=websocket&join", relay.token("alice"));
    let mut tabs = Vec::new();
    for _ in 0..3 {
        let tab = browser.open(&url).await;
        browser
            .wait_for(&tab, "window.demo && demo.room && demo.state === 'open' && demo.chat.hasEarlier !== null")
            .await;
        tabs.push(tab);
    }
    let mut leader = None;
    for tab in &tabs {
        let shown = browser.eval(tab, STATUS).await;
        let text = shown[1].as_str().unwrap();
        if shown[0] == json!(true) {
            assert!(leader.replace(tab.clone()).is_none(), "one leader");
            assert_eq!(text, "This tab holds the connection for all your tabs");
        } else {
            assert_eq!(text, "Connected through another of your tabs");
        }
    }
    let leader = leader.expect("a leader tab");
    assert_eq!(websockets(&relay).await, (1, 1), "three tabs of the demo page, one connection");

    let carol = carol_at(&relay).await;
    let publish = |from: u64, to: u64| publish_numbers(&carol, from, to);
    let offsets = "demo.messages.map((m) => m.offset)";
    let notified = "demo.notifications.map((n) => n.offset)";
    publish(1, 10).await;
    for tab in &tabs {
        let seen = browser.wait_for(tab, &format!("demo.messages.length >= 10 && {offsets}")).await;
        assert_eq!(seen, json!((1..=10).collect::<Vec<u64>>()));
    }
    // Once per browser: in the leader's tab only.
    for tab in &tabs {
        let list = browser.eval(tab, notified).await;
        let expected: Vec<u64> = if *tab == leader { (1..=10).collect() } else { vec![] };
        assert_eq!(list, json!(expected), "notifications of tab {tab} (leader: {})", *tab == leader);
    }

    // The leader tab goes while messages keep coming.
    tabs.retain(|t| *t != leader);
    browser.close_page(&leader).await;
    publish(11, 25).await;
    for tab in &tabs {
        let seen =
            browser.wait_for(tab, &format!("demo.messages.length >= 25 && demo.state === 'open' && {offsets}")).await;
        assert_eq!(seen, json!((1..=25).collect::<Vec<u64>>()), "every message once, in order, across the hand-over");
    }
    let mut leaders = 0;
    for tab in &tabs {
        let shown = browser.eval(tab, STATUS).await;
        if shown[0] == json!(true) {
            leaders += 1;
            assert_eq!(shown[1], json!("This tab holds the connection for all your tabs"));
        }
    }
    assert_eq!(leaders, 1, "another tab took over");
    let after = notified_in(&mut browser, &tabs, notified).await;
    notified_once_after_hand_over(&after, 11, 25);
    one_connection_again(&relay).await;
    // A follower's message goes through the new leader; both tabs show it once.
    let follower = {
        let mut found = None;
        for tab in &tabs {
            if browser.eval(tab, "demo.leader").await == json!(false) {
                found = Some(tab.clone());
            }
        }
        found.expect("a follower tab")
    };
    let position = browser.eval(&follower, "demo.send('from a follower tab')").await;
    assert_eq!(position["offset"], json!(26));
    for tab in &tabs {
        let seen = browser.wait_for(tab, &format!("demo.messages.length >= 26 && {offsets}")).await;
        assert_eq!(seen, json!((1..=26).collect::<Vec<u64>>()));
    }
    browser.save_screenshot(&follower, "browser-demo-tabs.png", "demo-tabs.png").await;
    carol.close().await;
    browser.close().await;
}

/// The React hooks (`@edgerelay/client/react`) in a real page: a chat made only of
/// `useConnectionState`, `useRoom`, `useMessages`, `usePresence` and `useTyping`, and a board of
/// `useSession` and `useTopic`, bundled with React by esbuild (`clients/js/tools/react-page.mjs`)
/// and rendered in StrictMode (effects run twice: the room is still joined once). Two such
/// pages: history on mount, members, typing, live messages, and unmounting the last component
/// that uses a room leaves it; the board shows the session's document, members and cursors as
/// they change and a topic's events, and unmounting it leaves the session and unsubscribes.
#[tokio::test]
async fn react_hooks_render_a_room_and_follow_it_in_chromium() {
    let out = tempfile::tempdir().unwrap();
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    let built = std::process::Command::new("node")
        .arg("tools/react-page.mjs")
        .arg(out.path())
        .current_dir(&sdk)
        .output()
        .expect("node runs");
    assert!(
        built.status.success(),
        "building the hooks' page needs `npm ci` in clients/js (scripts/test runs it): {}",
        String::from_utf8_lossy(&built.stderr)
    );
    const API_KEY: &str = "react-hooks-test-api-key-0123";
    let relay = start_with(|config| config.api.key = Some(API_KEY.into())).await;
    let carol = relay.connect(Transport::Quic, Codec::Json, "carol", "acme", &["chat:*"]).await;
    for i in 1..=3 {
        let data = Payload::json(&json!({ "text": format!("earlier {i}") }));
        carol.publish("chat:react", &format!("c{i}"), data).await.unwrap();
    }
    let page = |user: &str| {
        let mut claims = common::claims(user, "acme", &["chat:*", "news.*"]);
        claims.caps.session = vec!["doc:*".into()];
        let token = relay.sign(&claims);
        format!("file://{}/index.html#ws=ws://{}/v1/ws&token={token}", out.path().display(), relay.relay.tcp_addr())
    };
    let text = |id: &str| format!("document.getElementById('{id}')?.innerText");
    let mut browser = Browser::launch().await;
    let alice = browser.open(&page("alice")).await;
    browser.wait_for(&alice, &format!("{} === 'open over websocket'", text("status"))).await;
    let history = browser.wait_for(&alice, &format!("{} === 'joined' && {}", text("joined"), text("messages"))).await;
    assert_eq!(history, json!("1 carol: earlier 1\n2 carol: earlier 2\n3 carol: earlier 3"), "history on mount");
    assert_eq!(browser.eval(&alice, &text("earlier")).await, json!("false"));

    let bob = browser.open(&page("bob")).await;
    browser.wait_for(&bob, &format!("{} === 'joined'", text("joined"))).await;
    browser.wait_for(&alice, &format!("{} === 'alice:online\\nbob:online'", text("members"))).await;
    browser.eval(&bob, "window.app.type(); true").await;
    browser.wait_for(&alice, &format!("{} === 'bob is typing…'", text("typing"))).await;
    browser.eval(&bob, "window.app.send('hi from hooks').then(() => true)").await;
    let messages =
        browser.wait_for(&alice, &format!("{t}.includes('hi from hooks') && {t}", t = text("messages"))).await;
    assert_eq!(messages.as_str().unwrap().lines().count(), 4, "each message once: {messages}");
    let on_bob = browser.wait_for(&bob, &format!("{t}.includes('hi from hooks') && {t}", t = text("messages"))).await;
    assert_eq!(on_bob, messages, "bob's page shows the same");

    // Bob's last component using the room goes: he leaves it, and Alice's list says so.
    browser.eval(&bob, "window.app.unmount(); true").await;
    browser.wait_for(&alice, &format!("{} === 'alice:online'", text("members"))).await;

    // The board: Alice creates the session, both mount `useSession` and `useTopic`.
    assert_eq!(browser.eval(&alice, "window.app.createBoard()").await, json!(true));
    for page in [&alice, &bob] {
        browser.eval(page, "window.app.showBoard(); true").await;
        browser.wait_for(page, &format!("{} === 'v0 {{\"cards\":[]}}'", text("board"))).await;
    }
    browser.wait_for(&alice, &format!("{} === 'alice:true bob:true'", text("board-members"))).await;
    browser.eval(&bob, "window.app.patch([{ op: 'add', path: '/cards/-', value: 'from bob' }]).then(() => true)").await;
    for page in [&alice, &bob] {
        browser.wait_for(page, &format!("{} === 'v1 {{\"cards\":[\"from bob\"]}}'", text("board"))).await;
    }
    browser.eval(&bob, "window.app.cursor({ x: 3 }).then(() => true)").await;
    browser.wait_for(&alice, &format!("{} === 'bob@{{\"x\":3}}'", text("cursors"))).await;
    let api = format!("Bearer {API_KEY}");
    let events =
        json!({"tenant": "acme", "events": [{"topic": "news.world", "id": "n-1", "data": {"text": "hello news"}}]});
    let (status, body) = http_request(
        relay.relay.tcp_addr(),
        "POST",
        "/v1/api/events",
        &[("Authorization", &api), ("Content-Type", "application/json")],
        &events.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for page in [&alice, &bob] {
        browser.wait_for(page, &format!("{} === 'news.world hello news'", text("news"))).await;
    }
    // Bob's board goes: he leaves the session (Alice sees him gone) and unsubscribes.
    browser.eval(&bob, "window.app.showBoard(false); true").await;
    browser.wait_for(&alice, &format!("{} === 'alice:true bob:false'", text("board-members"))).await;
    browser.wait_for(&bob, "window.app.relay.subscriptions.length === 0").await;
    browser.close().await;
}

/// A page whose network fades without the browser noticing (a tunnel: no `online` event, no
/// `visibilitychange`): its WebTransport goes through a netsim UDP proxy (`wifi`) that drops
/// everything both ways for 8 s while a Rust client publishes 20 messages. The page sends
/// nothing into the fade, but the SDK told the relay at connect that it takes heartbeats
/// (docs/protocol.md), so the relay probes the stalled connection with its own (counted at the
/// proxy), Chromium acknowledges the first after the network's return, the relay resends, and
/// the page holds all 20 once, in order, without reconnecting; the relay's heartbeats never
/// reach the application as datagrams.
#[tokio::test]
async fn a_page_whose_network_fades_is_probed_by_the_relay_and_catches_up() {
    let relay = start().await;
    let upstream = relay.listen_addr(Transport::WebTransport);
    let wifi = netsim::Profile::named("wifi").expect("the wifi profile");
    let proxy = netsim::Proxy::start(netsim::ProxyConfig::udp(upstream, wifi).seed(5)).await.unwrap();
    let mut browser = Browser::launch().await;
    // Any page of the relay's origin, to import the SDK from.
    let page = browser.open(&format!("http://127.0.0.1:{}/", relay.relay.tcp_addr().port())).await;
    browser.wait_for(&page, "location.protocol === 'http:' && document.readyState === 'complete'").await;
    let token = relay.token("alice", "acme", &["chat:*"]);
    let port = proxy.local_addr().port();
    let setup = format!(
        r#"(async () => {{
            const {{ EdgeRelay, endpointUrls }} = await import(location.origin + "/sdk/index.js");
            const endpoints = await fetch("/v1/endpoints").then((r) => r.json());
            endpoints.webtransport_port = {port};
            const certHashes = await fetch("/v1/cert").then((r) => r.json()).then((c) => c.hashes);
            window.faded = {{ offsets: [], heartbeats: 0, states: [] }};
            const client = new EdgeRelay({{ token: {token:?}, transport: "webtransport", ...endpointUrls(location, endpoints), certHashes }});
            client.addEventListener("status", ({{ detail }}) => faded.states.push(detail.state));
            client.addEventListener("datagram", ({{ detail }}) => {{ if (detail.every((b) => b === 0)) faded.heartbeats++; }});
            await client.connect();
            const room = await client.join({ROOM:?});
            room.addEventListener("message", ({{ detail: m }}) => faded.offsets.push(m.position.offset));
            window.fadedClient = client;
            return client.transport;
        }})()"#
    );
    assert_eq!(browser.eval(&page, &setup).await, json!("webtransport"));
    let rust = relay.connect(Transport::Quic, Codec::Json, "carol", "acme", &["chat:*"]).await;
    let warm = rust.publish(ROOM, "warm", Payload::json(&json!({ "text": "before" }))).await.unwrap();
    browser.wait_for(&page, &format!("faded.offsets.includes({})", warm.offset)).await;

    proxy.set_blackout(true);
    let mut offsets = vec![warm.offset];
    for i in 0..20 {
        let payload = Payload::json(&json!({ "text": format!("into the fade {i}") }));
        offsets.push(rust.publish(ROOM, &format!("f{i}"), payload).await.unwrap().offset);
    }
    let (before, probes_before) = (proxy.stats().down.dropped_blackout, fade_probes(&relay).await);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let into_fade = proxy.stats().down.dropped_blackout - before;
    let probes = fade_probes(&relay).await - probes_before;
    proxy.set_blackout(false);
    let back = std::time::Instant::now();
    let expect = format!("faded.offsets.length >= {n} && faded.offsets", n = offsets.len());
    let seen = browser.wait_for(&page, &expect).await;
    println!(
        "the page caught up {:?} after the network returned; {into_fade} packets from the relay into the fade, {probes} of them probes",
        back.elapsed()
    );
    assert_eq!(seen, json!(offsets), "every message once, in order");
    // Every 50 ms once the relay's data is unacknowledged for 1 s, every 0.5 s after 5 s:
    // about 86 in 8 s (14 when they came every 0.5 s throughout). (The recorder is the
    // process's: another test's probes could only add to these.)
    assert!(probes >= 30, "{probes} probes from the relay into the fade");
    let states = browser.eval(&page, "faded.states").await;
    assert!(!states.as_array().unwrap().contains(&json!("reconnecting")), "the page reconnected: {states}");
    let heartbeats = browser.eval(&page, "faded.heartbeats").await;
    assert_eq!(heartbeats, json!(0), "the relay's heartbeats reached the application");
    rust.close().await;
    browser.close().await;
    proxy.shutdown().await;
}

/// The relay's `edgerelay_quic_fade_probes_total`.
async fn fade_probes(relay: &TestRelay) -> u64 {
    let (_, page) = relay.http_get("/metrics").await;
    let value = page.lines().find_map(|line| line.strip_prefix("edgerelay_quic_fade_probes_total "));
    value.expect("edgerelay_quic_fade_probes_total in /metrics").trim().parse::<f64>().unwrap() as u64
}
