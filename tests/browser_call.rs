//! The call page (`/call/`) in real browsers: headless Chromium with fake camera and microphone
//! opens it for three participants of one call over WebTransport. Each page must decode the other
//! two's video and audio, and keep decoding; a fourth participant joins late and must render its
//! first frame of everyone soon after it joined (the page measures it with `performance.now()`;
//! the bound here is generous, the figure is printed); the highlighted tile must follow the
//! participant whose microphone is on while the others are muted. Simulcast: with everyone on
//! the top layer the publishers stop encoding the base layer (`layers_wanted`); a fifth page that
//! asks for the base layer only (`maxLayer=0`) makes them resume it and renders 180p while the
//! others keep 360p.
//!
//! A screenshot of the late joiner's page is written to `target/tmp/browser-call.png`, and to
//! `docs/media-call.png` when `EDGERELAY_UPDATE_SCREENSHOTS` is set.

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::{Browser, CALL_FLAGS, decoded};
use common::{TestRelay, start};
use serde_json::{Value, json};

const ROOM: &str = "call:standup";

fn call_url(relay: &TestRelay, user: &str) -> String {
    browser::call_url(relay, user, ROOM)
}

/// Every page's camera layers somebody receives (`layers_wanted`), as the page last heard.
async fn wanted_everywhere(browser: &mut Browser, pages: &[(&str, String)], wanted: [bool; 2]) {
    let expected = serde_json::to_string(&wanted).unwrap();
    for (_, page) in pages {
        browser.wait_for(page, &format!("JSON.stringify(callStats().sent.videoLayersWanted) === '{expected}'")).await;
    }
}

/// `window.callStats()` of a page.
async fn stats(browser: &mut Browser, page: &str) -> Value {
    browser.eval(page, "callStats()").await
}

/// Waits until every page sees `speaker` as the dominant speaker, with its tile highlighted and
/// no other; returns nothing, panics with the pages' view when it does not happen.
async fn speaker_everywhere(browser: &mut Browser, pages: &[(&str, String)], speaker: &str) {
    for (user, page) in pages {
        let expression = if *user == speaker {
            format!(
                "(s => s.dominant === {speaker:?} && s.selfSpeaking && Object.values(s.tiles).every(t => !t.speaking))(callStats())"
            )
        } else {
            format!(
                "(s => s.dominant === {speaker:?} && !s.selfSpeaking && Object.entries(s.tiles).every(([u, t]) => t.speaking === (u === {speaker:?})))(callStats())"
            )
        };
        browser.wait_for(page, &expression).await;
        // The highlight is what a person sees: the tile's outline.
        let highlighted = browser
            .eval(
                page,
                "[...document.querySelectorAll('.tile.speaking .name span:last-child')].map(e => e.textContent)",
            )
            .await;
        let expected = if *user == speaker { format!("{speaker} (you)") } else { speaker.to_owned() };
        assert_eq!(highlighted, json!([expected]), "{user}'s page highlights {speaker}");
    }
}

async fn click(browser: &mut Browser, page: &str, button: &str) {
    browser.eval(page, &format!("document.getElementById({button:?}).click()")).await;
}

#[tokio::test]
async fn three_chromium_pages_call_each_other_a_late_joiner_renders_at_once_and_the_speaker_is_highlighted() {
    let relay = start().await;
    let mut browser = Browser::launch_with(&CALL_FLAGS).await;

    let users = ["alice", "bob", "carol"];
    let mut pages: Vec<(&str, String)> = Vec::new();
    for user in users {
        let page = browser.open(&call_url(&relay, user)).await;
        pages.push((user, page));
    }
    for (user, page) in &pages {
        let s = browser
            .wait_for(
                page,
                "(s => s.state === 'open' && s.sent.audioFrames > 0 && s.sent.videoFrames[0] > 0 && s)(callStats())",
            )
            .await;
        assert_eq!(s["transport"], json!("webtransport"), "{user}");
        assert_eq!(s["user"], json!(user));
    }

    // Each page decodes the other two's video and audio, and keeps decoding.
    for (user, page) in &pages {
        let others: Vec<&str> = users.iter().copied().filter(|u| u != user).collect();
        let first = decoded(&mut browser, page, &others, 10, 25).await;
        println!("{user} decoded: {}", first["tiles"]);
    }
    for (user, page) in &pages {
        let now = stats(&mut browser, page).await;
        let others: Vec<&str> = users.iter().copied().filter(|u| u != user).collect();
        let video = others.iter().map(|o| now["tiles"][o]["videoFrames"].as_u64().unwrap()).min().unwrap();
        let audio = others.iter().map(|o| now["tiles"][o]["audioFrames"].as_u64().unwrap()).min().unwrap();
        // One more second of media, at least, from each of the others.
        let later = decoded(&mut browser, page, &others, video + 10, audio + 40).await;
        println!("{user} decoded later: {}", later["tiles"]);
    }

    // A fourth participant joins late: the relay's cached groups give it a keyframe of everyone
    // at once, without a keyframe round trip to the publishers.
    let dave = browser.open(&call_url(&relay, "dave")).await;
    let s = decoded(&mut browser, &dave, &users, 1, 1).await;
    for user in users {
        let tile = &s["tiles"][user];
        let join = tile["joinToFirstFrameMs"].as_u64().unwrap();
        let subscribe = tile["subscribeToFirstFrameMs"].as_u64().unwrap();
        println!("dave joined late: first frame of {user} {join} ms after joining, {subscribe} ms after subscribing");
        assert!(join < 2000, "dave renders {user} soon after joining: {join} ms");
    }
    for (user, page) in &pages {
        let s = browser.wait_for(page, "(s => s.tiles.dave?.videoFrames > 0 && s)(callStats())").await;
        assert_eq!(s["participants"], json!(4), "{user} counts four in the call");
    }
    pages.push(("dave", dave));

    // The speaker indicator follows the one participant whose microphone is on.
    for (user, page) in &pages {
        if *user != "alice" {
            click(&mut browser, page, "mic").await;
        }
    }
    for (user, page) in &pages {
        let muted = if *user == "alice" { vec![] } else { vec!["alice"] };
        let expression = format!(
            "(s => Object.entries(s.tiles).every(([u, t]) => t.micMuted === !{muted:?}.includes(u)))(callStats())"
        );
        browser.wait_for(page, &expression).await;
    }
    speaker_everywhere(&mut browser, &pages, "alice").await;
    // Bob unmutes, Alice mutes: the highlight moves to Bob.
    click(&mut browser, &pages[1].1, "mic").await;
    click(&mut browser, &pages[0].1, "mic").await;
    speaker_everywhere(&mut browser, &pages, "bob").await;

    // Simulcast: everybody receives the top layer, so the publishers stop encoding the base
    // layer (dynacast, 2 s after nobody needs it). Erin asks for the base layer only: it
    // resumes at the publishers, Erin renders 180p while the others keep 360p.
    wanted_everywhere(&mut browser, &pages, [false, true]).await;
    let erin = browser.open(&format!("{}&maxLayer=0", call_url(&relay, "erin"))).await;
    let all = ["alice", "bob", "carol", "dave"];
    // Only Bob's microphone is on now.
    let s = decoded(&mut browser, &erin, &all, 5, 0).await;
    for user in all {
        assert_eq!(
            (&s["tiles"][user]["videoLayer"], &s["tiles"][user]["videoSize"]),
            (&json!(0), &json!("320x180")),
            "erin gets {user}'s base layer"
        );
        println!(
            "erin (base layer only): first frame of {user} {} ms after joining",
            s["tiles"][user]["joinToFirstFrameMs"]
        );
    }
    wanted_everywhere(&mut browser, &pages, [true, true]).await;
    for (user, page) in &pages {
        let s = browser.wait_for(page, "(s => s.tiles.erin?.videoFrames > 0 && s)(callStats())").await;
        for (other, tile) in s["tiles"].as_object().unwrap() {
            if other != "erin" {
                assert_eq!(tile["videoSize"], json!("640x360"), "{user} still gets {other}'s top layer");
            }
        }
    }
    // The client refuses media on a WebSocket connection, saying why, before asking the relay.
    let script = format!(
        "(async () => {{ \
           const {{ EdgeRelay }} = await import('/sdk/index.js'); \
           const client = new EdgeRelay({{ token: {token:?}, transport: 'websocket', \
                                           webSocketUrl: `ws://${{location.host}}/v1/ws` }}); \
           await client.connect(); \
           await client.join({ROOM:?}); \
           const refusals = []; \
           for (const attempt of [() => client.publishTrack({ROOM:?}, {{ name: 'cam', kind: 'video', codec: 'vp8', \
                                    layers: [{{ width: 320, height: 180, bitrate: 200000 }}] }}), \
                                  () => client.openGroup(1, 0, 1, true)]) {{ \
             try {{ await attempt(); refusals.push('accepted'); }} catch (e) {{ refusals.push([e.code, e.message]); }} \
           }} \
           client.close(); \
           return refusals; \
         }})()",
        token = relay.token("erin", "acme", &["call:*"]),
    );
    let refusals = browser.eval(&erin, &script).await;
    for refusal in refusals.as_array().unwrap() {
        assert_eq!(refusal[0], json!(140), "{refusal}");
        assert!(refusal[1].as_str().unwrap().contains("media needs WebTransport"), "{refusal}");
    }
    browser.close_page(&erin).await;

    // No page reported a failure (encoder, decoder, sending, receiving).
    for (user, page) in &pages {
        assert_eq!(browser.eval(page, "callStats().errors").await, json!([]), "{user}'s page");
    }

    // A picture of the call as Dave sees it, in a window of a usual size.
    let dave = &pages[3].1;
    browser.wait_for(dave, "(s => Object.keys(s.tiles).length === 3 && Object.values(s.tiles).every(t => t.videoFrames > 20))(callStats())").await;
    let metrics = json!({"width": 1280, "height": 720, "deviceScaleFactor": 1, "mobile": false});
    browser.call(Some(dave), "Emulation.setDeviceMetricsOverride", metrics).await;
    browser.save_screenshot(dave, "browser-call.png", "media-call.png").await;
    browser.close().await;
}
