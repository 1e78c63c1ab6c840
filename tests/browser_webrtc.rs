//! 1:1 WebRTC calls between real browsers (issue 17): headless Chromium with a fake camera and
//! microphone opens the demo page the relay serves at `/` as two (or three) users, who call each
//! other through the page's buttons. The relay carries only the signaling (`call` frames); the
//! media goes peer to peer, checked with `getStats()` on both sides: video frames decoded keep
//! increasing, and the selected candidate pair is of the expected type.
//!
//! - Through coturn (`testing::TurnServer`, started here on loopback with `use-auth-secret` and the
//!   relay's `[turn]` secret) with `iceTransportPolicy: "relay"`: the selected pair is `relay` on
//!   both ends, so the media provably went through coturn with the credentials the relay minted.
//!   An expired credential gets Chromium no relay candidate, only coturn's 401 (and tests/ice.rs
//!   checks the same, plus forged credentials, with coturn's own `turnutils_uclient`).
//! - Without TURN: host candidates on loopback (after a first call the callee declines).
//! - One page on the WebSocket fallback (a certificate hash that is not the relay's, as a user
//!   meets it): signaling needs no QUIC.
//! - Two pages of the callee (two devices): both ring, one answers, the other stops ringing and
//!   says the call was answered elsewhere.
//! - A page whose connection is closed mid-call reconnects by itself, rejoins, and gets video
//!   again over a new peer connection.
//!
//! Each call prints its setup times from the pages' clocks (initiate → ring on the callee's page,
//! answer → both pages `connected`, answer → first remote video frame on both); nothing here
//! asserts a duration. `call_setup_figures` repeats a call `EDGERELAY_CALL_FIGURES` times
//! (default 3) and prints p50/p99 for docs/performance.md. Screenshots of the callee's page
//! ringing and in the call are written to `target/tmp/browser-webrtc-{ringing,call}.png`, and to
//! `docs/demo-{ringing,call}.png` when `EDGERELAY_UPDATE_SCREENSHOTS` is set.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::time::Duration;

use base64::Engine as _;
use browser::{Browser, CALL_FLAGS};
use common::{TestRelay, http_request, start_with, within};
use edgerelay::testing::TurnServer;
use serde_json::{Value, json};

const ROOM: &str = "chat:callers";
const SECRET: &str = "edgerelay-webrtc-test-secret";
const API_KEY: &str = "webrtc-test-api-key-0123456789";

async fn launch() -> Browser {
    Browser::launch_with(&CALL_FLAGS).await
}

/// The demo page for `user`, joined to [`ROOM`]; `extra` is appended to the fragment.
fn page_url(relay: &TestRelay, user: &str, extra: &str) -> String {
    let token = relay.call_token(user, "acme", &["chat:*"]);
    format!("http://127.0.0.1:{}/#token={token}&room={ROOM}&join{extra}", relay.relay.tcp_addr().port())
}

/// A fragment that pins a certificate hash the relay's is not: WebTransport fails, the page falls
/// back to WebSocket by itself.
fn wrong_cert() -> String {
    format!("&cert={}", base64::engine::general_purpose::STANDARD.encode([7u8; 32]))
}

/// Opens the page and waits until it joined; returns it and the transport it used.
async fn open(browser: &mut Browser, url: &str) -> (String, String) {
    let page = browser.open(url).await;
    let transport =
        browser.wait_for(&page, "window.demo && demo.room && demo.state === 'open' && demo.transport").await;
    (page, transport.as_str().unwrap().to_owned())
}

async fn click(browser: &mut Browser, page: &str, selector: &str) {
    let script = format!("(b => b && !b.disabled && (b.click(), true))(document.querySelector({selector:?}))");
    browser.wait_for(page, &script).await;
}

/// `demo.callStats()` once the page's peer connection has a selected pair and decoded more than
/// `frames` video frames (polled, bounded).
async fn decoding(browser: &mut Browser, page: &str, frames: u64) -> Value {
    within(&format!("more than {frames} video frames decoded"), async {
        loop {
            let stats = browser.eval(page, "demo.callStats()").await;
            if stats["framesDecoded"].as_u64().unwrap_or(0) > frames && stats["local"].is_string() {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// What one call took, in ms, from the pages' clocks.
#[derive(Debug, Clone, Copy)]
struct Setup {
    ring: f64,
    connected: f64,
    first_frame: f64,
}

/// Caller's page clicks "Call" next to `callee` in the room's list; `callee`'s page (the first of
/// `callee_pages`) rings, answers; both are connected and decode each other's video; the
/// selected candidate pairs are `candidate_type` on both ends. Returns the call's setup times.
async fn video_call(
    browser: &mut Browser,
    caller: &str,
    callee: &str,
    callee_pages: &[&str],
    candidate_type: &str,
) -> Setup {
    let answering = callee_pages[0];
    browser.eval(caller, "demo.timings = {}; demo.callLog = []; true").await;
    for page in callee_pages {
        browser.eval(page, "demo.timings = {}; demo.callLog = []; true").await;
    }
    click(browser, caller, &format!("#people li[data-user={callee}] button")).await;
    browser.wait_for(caller, "demo.call && demo.call.state === 'ringing' && demo.call.role === 'caller'").await;
    for page in callee_pages {
        let text = browser.wait_for(page, "document.getElementById('ring').className === 'on' && document.getElementById('ring-text').textContent").await;
        assert!(text.as_str().unwrap().contains("is calling (video)"), "{text}");
    }
    click(browser, answering, "#answer").await;
    for page in [caller, answering] {
        browser.wait_for(page, "demo.call.state === 'connected' && demo.call.inCall && demo.timings.connected").await;
    }

    // Media flows both ways, and keeps flowing.
    for page in [caller, answering] {
        let first = decoding(browser, page, 5).await;
        let later = decoding(browser, page, first["framesDecoded"].as_u64().unwrap() + 10).await;
        println!("{page}: {first} then {later}");
        for stats in [&first, &later] {
            assert_eq!(
                (stats["local"].as_str(), stats["remote"].as_str()),
                (Some(candidate_type), Some(candidate_type)),
                "{stats}"
            );
        }
        assert_eq!(later["connectionState"], json!("connected"));
        browser.wait_for(page, "demo.timings.firstFrame").await;
    }
    let caller_times = browser.eval(caller, "demo.timings").await;
    let callee_times = browser.eval(answering, "demo.timings").await;
    let ms = |t: &Value, key: &str| t[key].as_f64().unwrap_or_else(|| panic!("no {key} in {t}"));
    let answered = ms(&callee_times, "answered");
    let setup = Setup {
        ring: ms(&callee_times, "ring") - ms(&caller_times, "initiated"),
        connected: ms(&caller_times, "connected").max(ms(&callee_times, "connected")) - answered,
        first_frame: ms(&caller_times, "firstFrame").max(ms(&callee_times, "firstFrame")) - answered,
    };
    println!("call setup ({candidate_type}): {setup:?}");
    setup
}

/// The callee's page hangs up: both pages show the end, and the caller's status says who.
async fn hang_up(browser: &mut Browser, caller: &str, callee: &str) {
    click(browser, callee, "#hang-up").await;
    for page in [caller, callee] {
        let log = browser.wait_for(page, "demo.call.state === 'ended' && demo.callLog").await;
        let end = log.as_array().unwrap().last().unwrap().clone();
        assert_eq!((&end["reason"], &end["side"]), (&json!("hangup"), &json!("callee")), "{log}");
        assert_eq!(browser.eval(page, "demo.call.peer").await, Value::Null, "peer connection closed");
    }
    let status = browser.eval(caller, "document.getElementById('call-status').textContent").await;
    assert!(status.as_str().unwrap().contains("ended: hung up by"), "{status}");
}

/// A relay (with coturn and its `[turn]` settings when `turn`), a browser, and the pages of Alice
/// and Bob, joined; `bob_extra` is appended to Bob's fragment. With `turn` both pages call with
/// `iceTransportPolicy: "relay"`.
struct Pages {
    turn: Option<TurnServer>,
    relay: TestRelay,
    browser: Browser,
    alice: String,
    bob: String,
    /// The transport each page ended up on.
    transports: (String, String),
}

impl Pages {
    async fn open(turn: bool, bob_extra: &str) -> Pages {
        let turn = turn.then(|| TurnServer::start(SECRET).expect("turnserver starts (apt-get install coturn)"));
        let relay = start_with(|config| {
            config.api.key = Some(API_KEY.into());
            if let Some(turn) = &turn {
                config.turn.urls = vec![turn.turn_url()];
                config.turn.secret = Some(SECRET.into());
            }
        })
        .await;
        let mut browser = launch().await;
        let ice = if turn.is_some() { "&ice=relay" } else { "" };
        let (alice, alice_transport) = open(&mut browser, &page_url(&relay, "alice", ice)).await;
        let (bob, bob_transport) = open(&mut browser, &page_url(&relay, "bob", &format!("{ice}{bob_extra}"))).await;
        Pages { turn, relay, browser, alice, bob, transports: (alice_transport, bob_transport) }
    }

    fn turn(&self) -> &TurnServer {
        self.turn.as_ref().expect("started with coturn")
    }
}

#[tokio::test]
async fn a_video_call_through_coturn_with_the_relays_credentials() {
    let mut p = Pages::open(true, "").await;
    video_call(&mut p.browser, &p.alice, "bob", &[&p.bob], "relay").await;

    // The relay candidates are coturn's: allocated with the credentials the relay minted (it
    // has no other users).
    for page in [&p.alice, &p.bob] {
        let stats = p.browser.eval(page, "demo.callStats()").await;
        assert_eq!(stats["localUrl"], json!(p.turn().turn_url()), "{stats}");
    }

    // A picture of the call as Bob sees it, in a window of a usual size.
    let metrics = json!({"width": 1024, "height": 900, "deviceScaleFactor": 1, "mobile": false});
    p.browser.call(Some(&p.bob), "Emulation.setDeviceMetricsOverride", metrics).await;
    p.browser.save_screenshot(&p.bob, "browser-webrtc-call.png", "demo-call.png").await;
    hang_up(&mut p.browser, &p.alice, &p.bob).await;
    p.browser.close().await;
}

/// ICE gathering in a page with `iceTransportPolicy: "relay"` and these ICE servers: the types
/// of the candidates found and the `icecandidateerror` codes.
async fn gather(browser: &mut Browser, page: &str, servers: &Value) -> Value {
    let script = format!(
        "(async (iceServers) => {{ \
           const peer = new RTCPeerConnection({{ iceServers, iceTransportPolicy: 'relay' }}); \
           const types = [], errors = []; \
           peer.onicecandidate = (e) => e.candidate && types.push(e.candidate.type); \
           peer.onicecandidateerror = (e) => errors.push(e.errorCode); \
           peer.createDataChannel('probe'); \
           await peer.setLocalDescription(await peer.createOffer()); \
           await new Promise((done) => {{ \
             peer.onicegatheringstatechange = () => peer.iceGatheringState === 'complete' && done(); \
             setTimeout(done, 15000); }}); \
           peer.close(); \
           return {{ types, errors }}; \
         }})({servers})"
    );
    browser.eval(page, &script).await
}

/// The browser's side of "coturn refuses an expired credential" (tests/ice.rs checks it with
/// coturn's own client): with the credential the relay hands the page, Chromium allocates a relay
/// candidate on coturn; with the same user's credential minted a day and an hour ago (expired an
/// hour ago) it gets none, and coturn's 401.
#[tokio::test]
async fn coturn_refuses_an_expired_credential_in_the_browser() {
    let mut p = Pages::open(true, "").await;
    let fresh = p.browser.eval(&p.alice, "demo.client.iceServers().then((s) => s.iceServers)").await;
    let found = gather(&mut p.browser, &p.alice, &fresh).await;
    assert_eq!(found["types"], json!(["relay"]), "{found}");

    let expired =
        edgerelay::ice::turn_credential(SECRET.as_bytes(), "acme", "alice", common::now_secs() - 86_400 - 3600, 86_400);
    let servers =
        json!([{"urls": [p.turn().turn_url()], "username": expired.username, "credential": expired.password}]);
    let found = gather(&mut p.browser, &p.alice, &servers).await;
    assert_eq!(found["types"], json!([]), "no relay candidate with an expired credential: {found}");
    assert!(found["errors"].as_array().unwrap().contains(&json!(401)), "coturn answered 401: {found}");
    p.browser.close().await;
}

#[tokio::test]
async fn a_video_call_without_turn_over_host_candidates() {
    let mut p = Pages::open(false, "").await;
    // Declined first: Bob's page rings, he presses Decline, both pages say so.
    click(&mut p.browser, &p.alice, "#people li[data-user=bob] button").await;
    p.browser.wait_for(&p.bob, "document.getElementById('ring').className === 'on'").await;
    p.browser.save_screenshot(&p.bob, "browser-webrtc-ringing.png", "demo-ringing.png").await;
    click(&mut p.browser, &p.bob, "#reject").await;
    for (page, text) in [(&p.alice, "Call with bob ended: declined"), (&p.bob, "Call with alice ended: declined")] {
        let status = p
            .browser
            .wait_for(page, "demo.call.state === 'ended' && document.getElementById('call-status').textContent")
            .await;
        assert_eq!(status, json!(text));
    }
    assert_eq!(p.browser.eval(&p.bob, "document.getElementById('ring').className").await, json!(""));
    // Then answered.
    video_call(&mut p.browser, &p.alice, "bob", &[&p.bob], "host").await;
    // Both pages report their link's quality from getStats() (every 5 s): the relay accepts them.
    let accepted = within("two quality reports accepted", async {
        loop {
            let (_, metrics) = p.relay.http_get("/metrics").await;
            let accepted = metrics
                .lines()
                .find(|l| l.starts_with("edgerelay_call_quality_reports_total{result=\"accepted\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            if accepted >= 2.0 {
                return accepted;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    hang_up(&mut p.browser, &p.alice, &p.bob).await;
    // The ended call's history entry keeps both sides' reports.
    let api = format!("Bearer {API_KEY}");
    let path = "/v1/api/calls/acme/users/alice?limit=1";
    // The history writer stores the ended call in the background: wait until the entry says so.
    let entry: Value = within("the ended call's history entry", async {
        loop {
            let (status, body) =
                http_request(p.relay.relay.tcp_addr(), "GET", path, &[("Authorization", &api)], "").await;
            assert_eq!(status, 200, "{body}");
            let entry: Value = serde_json::from_str(&body).unwrap();
            if !entry["calls"][0]["ended_ms"].is_null() {
                return entry;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let quality = &entry["calls"][0]["quality"]["participants"];
    let samples: u64 =
        quality.as_array().unwrap_or(&Vec::new()).iter().map(|q| q["samples"].as_u64().unwrap_or(0)).sum();
    assert!(samples >= 2 && quality.as_array().unwrap().len() == 2, "{accepted} accepted; {entry}");
    p.browser.close().await;
}

/// Bob's page cannot use WebTransport (the hash it pins is not the relay's certificate's) and
/// falls back to WebSocket by itself; the call is the same, signaling over the WebSocket.
#[tokio::test]
async fn a_video_call_with_the_callee_on_the_websocket_fallback() {
    let mut p = Pages::open(true, &wrong_cert()).await;
    assert_eq!((p.transports.0.as_str(), p.transports.1.as_str()), ("webtransport", "websocket"));
    let reason = p.browser.eval(&p.bob, "demo.fallbackReason").await;
    assert!(reason.as_str().unwrap().contains("certificate rejected"), "{reason}");
    video_call(&mut p.browser, &p.alice, "bob", &[&p.bob], "relay").await;
    hang_up(&mut p.browser, &p.alice, &p.bob).await;
    p.browser.close().await;
}

/// Bob's connection is closed under his page in the middle of the call (the server API's
/// `disconnect`, as an app's backend would, or as a network change does): the page reconnects by
/// itself as a new device, finds the call `reconnecting` with its side away and rejoins it; Alice's
/// page makes a new offer and the video flows again both ways.
#[tokio::test]
async fn a_page_that_lost_its_connection_rejoins_the_call() {
    let mut p = Pages::open(false, "").await;
    video_call(&mut p.browser, &p.alice, "bob", &[&p.bob], "host").await;
    let peers = "demo.callLog.filter((e) => e.event === 'peer').length";
    let before = p.browser.eval(&p.alice, peers).await;

    let api = format!("Bearer {API_KEY}");
    let (status, body) = http_request(
        p.relay.relay.tcp_addr(),
        "POST",
        "/v1/api/disconnect",
        &[("Authorization", &api), ("Content-Type", "application/json")],
        r#"{"tenant":"acme","user":"bob"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    for page in [&p.alice, &p.bob] {
        let log = p.browser.wait_for(page, "demo.callLog.some((e) => e.event === 'state' && e.state === 'reconnecting') && demo.call.state === 'connected' && demo.call.inCall && demo.callLog").await;
        let states: Vec<&str> = log
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "state")
            .map(|e| e["state"].as_str().unwrap())
            .collect();
        assert!(states.ends_with(&["reconnecting", "connected"]), "{page}: {log}");
    }
    // Alice's page opens its new peer connection after `connected` (it fetches ICE servers
    // first): wait for it, then check it was exactly one.
    let want = before.as_u64().expect("a count") + 1;
    p.browser.wait_for(&p.alice, &format!("{peers} >= {want}")).await;
    let after = p.browser.eval(&p.alice, peers).await;
    assert_eq!(after.as_u64(), Some(want), "one new peer connection on Alice's side");
    for page in [&p.alice, &p.bob] {
        let first = decoding(&mut p.browser, page, 5).await;
        decoding(&mut p.browser, page, first["framesDecoded"].as_u64().unwrap() + 10).await;
    }
    hang_up(&mut p.browser, &p.alice, &p.bob).await;
    p.browser.close().await;
}

/// Bob has the page open in two tabs of one browser, which share one connection held by the
/// first: a call from Alice rings in both, Bob answers in the other tab (a follower: its
/// signaling goes through the first tab), and the video flows between Alice and that tab while
/// the first shows the call as elsewhere. Then that follower tab places a call to Alice, which
/// rings and connects too; and when the first tab (holding the connection) closes mid-call, the
/// tab in the call takes over the connection, rejoins the call, and the video flows again.
#[tokio::test]
async fn a_follower_tab_answers_and_places_calls_through_the_shared_connection() {
    let mut p = Pages::open(false, "").await;
    let (first, browser) = (p.bob.clone(), &mut p.browser);
    let (second, _) = open(browser, &page_url(&p.relay, "bob", "")).await;
    let leaders = [browser.eval(&first, "demo.leader").await, browser.eval(&second, "demo.leader").await];
    assert_eq!(leaders, [json!(true), json!(false)], "the first tab holds bob's connection");

    video_call(browser, &p.alice, "bob", &[&second, &first], "host").await;
    let elsewhere = browser
        .wait_for(&first, "demo.call.state === 'connected' && document.getElementById('call-status').textContent")
        .await;
    assert_eq!(elsewhere, json!("In a call with alice on another device or tab"));
    assert_eq!(browser.eval(&first, "[demo.call.inCall, demo.call.peer]").await, json!([false, null]));
    hang_up(browser, &p.alice, &second).await;

    // The follower tab calls: its offer and candidates go out through the leader tab.
    video_call(browser, &second, "alice", &[&p.alice], "host").await;

    // The tab holding the connection closes mid-call: the other takes over with a new connection
    // (a new device to the relay), finds the call reconnecting and rejoins it; video flows again.
    browser.close_page(&first).await;
    for page in [&p.alice, &second] {
        browser.wait_for(page, "demo.callLog.some((e) => e.event === 'state' && e.state === 'reconnecting') && demo.call.state === 'connected' && demo.call.inCall").await;
    }
    assert_eq!(browser.eval(&second, "demo.leader").await, json!(true), "the tab in the call took over");
    for page in [&p.alice, &second] {
        let first = decoding(browser, page, 5).await;
        decoding(browser, page, first["framesDecoded"].as_u64().unwrap() + 10).await;
    }
    hang_up(browser, &second, &p.alice).await;
    p.browser.close().await;
}

/// Bob has the page open twice (two devices, one of them on the fallback): both ring, he answers
/// on the first, the second stops ringing and says the call was answered on another device.
#[tokio::test]
async fn the_callees_other_device_stops_ringing_when_one_answers() {
    let mut p = Pages::open(false, "").await;
    let (phone, browser) = (p.bob.clone(), &mut p.browser);
    // Its own connection (`share=off`): pages of one user in one browser share one otherwise.
    let (laptop, laptop_transport) =
        open(browser, &page_url(&p.relay, "bob", &format!("{}&share=off", wrong_cert()))).await;
    assert_eq!(laptop_transport, "websocket");
    video_call(browser, &p.alice, "bob", &[&phone, &laptop], "host").await;

    let log = browser.wait_for(&laptop, "document.getElementById('ring').className === '' && demo.callLog").await;
    let events: Vec<&str> = log.as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["call", "state", "ring", "state", "answered_elsewhere"], "{log}");
    let status = browser.eval(&laptop, "document.getElementById('call-status').textContent").await;
    assert_eq!(status, json!("alice's call was answered on another device"));
    let call = browser.eval(&laptop, "[demo.call.state, demo.call.inCall, demo.call.peer]").await;
    assert_eq!(call, json!(["connected", false, null]));

    // The end reaches the other device too.
    hang_up(browser, &p.alice, &phone).await;
    browser.wait_for(&laptop, "demo.call.state === 'ended'").await;
    p.browser.close().await;
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Call setup times over `EDGERELAY_CALL_FIGURES` calls (default 3) between the same two pages,
/// through coturn: printed as p50/p99, asserted on nothing but the calls working.
#[tokio::test]
async fn call_setup_figures() {
    let calls: usize =
        std::env::var("EDGERELAY_CALL_FIGURES").ok().and_then(|n| n.parse().ok()).unwrap_or(3).clamp(1, 200);
    let mut p = Pages::open(true, "").await;
    let browser = &mut p.browser;
    let mut setups = Vec::new();
    for _ in 0..calls {
        setups.push(video_call(browser, &p.alice, "bob", &[&p.bob], "relay").await);
        hang_up(browser, &p.alice, &p.bob).await;
    }
    for (what, pick) in [
        ("initiate -> ring on the callee's page", (|s: &Setup| s.ring) as fn(&Setup) -> f64),
        ("answer -> both pages connected", |s| s.connected),
        ("answer -> first remote video frame on both pages (TURN)", |s| s.first_frame),
    ] {
        let mut values: Vec<f64> = setups.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        println!(
            "{what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {calls} calls",
            percentile(&values, 50.0),
            percentile(&values, 99.0),
            values[values.len() - 1]
        );
    }
    p.browser.close().await;
}
