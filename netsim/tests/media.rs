//! Priorities in one congestion domain (docs/media.md): a subscriber behind a 1 Mbit/s link
//! receives a 3 Mbit/s video track, an audio track and the room's chat on one QUIC connection.
//! Video cannot fit, so the relay drops its stale groups; audio (priority above video) and chat
//! (above all media) must still arrive whole. The latencies seen are printed.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Transport;
use edgerelay::client::Event;
use edgerelay::client::media::MediaEvent;
use edgerelay::proto::Payload;
use edgerelay::proto::media::{FLAG_KEYFRAME, GroupHeader, LayerInfo, TrackKind};
use netsim::{LinkConfig, Profile, Proxy};
use support::{connect, connect_via, proxy_config};

const ROOM: &str = "call:saturated";
const SECONDS: u64 = 4;

fn narrow_link() -> Profile {
    let mut profile = Profile::perfect("1 Mbit/s down");
    profile.down = LinkConfig {
        delay: Duration::from_millis(10),
        rate_bps: Some(1_000_000),
        queue_bytes: 24 * 1024,
        mtu: Some(1500),
        ..LinkConfig::perfect()
    };
    profile
}

/// Microseconds since `epoch`, in the first 8 bytes of a payload.
fn stamped(epoch: Instant, len: usize) -> Vec<u8> {
    let mut payload = vec![0u8; len.max(8)];
    payload[..8].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_be_bytes());
    payload
}

fn age_ms(epoch: Instant, payload: &[u8]) -> f64 {
    let sent = u64::from_be_bytes(payload[..8].try_into().unwrap_or([0; 8]));
    (epoch.elapsed().as_micros() as u64).saturating_sub(sent) as f64 / 1000.0
}

fn p95(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() * 95 / 100).copied().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_video_subscriber_still_gets_its_chat_and_audio() {
    let relay = common::start_with(|c| c.media.queue_bytes = 1 << 20).await;
    let proxy = Proxy::start(proxy_config(&relay, Transport::Quic, narrow_link(), 5)).await.unwrap();
    let mut viewer = connect_via(&relay, Transport::Quic, &proxy, "viewer", ROOM).await.unwrap();
    viewer.join(ROOM).await.unwrap();
    let target = relay.target(Transport::Quic);
    let speaker = connect(&relay, Transport::Quic, target, "speaker", ROOM).await.unwrap();
    speaker.join(ROOM).await.unwrap();
    let one_layer = |bitrate| vec![LayerInfo { width: 1280, height: 720, bitrate }];
    let mic = speaker.publish_track(ROOM, "mic", TrackKind::Audio, "opus", one_layer(32_000)).await.unwrap();
    let cam = speaker.publish_track(ROOM, "cam", TrackKind::Video, "vp8", one_layer(3_000_000)).await.unwrap();
    viewer.subscribe_track(mic, 0, false).await.unwrap();
    viewer.subscribe_track(cam, 0, false).await.unwrap();

    let epoch = Instant::now();
    // The speaker: 20 ms audio frames (5 per group), 30 fps video at 3 Mbit/s (12.5 KB frames,
    // a 1 s group), a chat message every 200 ms, for SECONDS.
    let send = async {
        let mut audio_group = None;
        let mut video_group: Option<edgerelay::client::media::GroupWriter> = None;
        let mut chat = 0u32;
        for tick in 0..(SECONDS * 50) {
            if tick % 5 == 0 {
                let header = GroupHeader { track: mic, layer: 0, group: tick / 5 + 1, flags: 0 };
                audio_group = Some(speaker.open_group(header, TrackKind::Audio).await.unwrap());
            }
            if let Some(group) = audio_group.as_mut() {
                group.frame(tick * 20_000, 0x80 | 20, &stamped(epoch, 80)).await.unwrap();
            }
            if tick % 5 == 4
                && let Some(group) = audio_group.take()
            {
                group.finish();
            }
            if tick % 5 < 3 {
                // ~30 fps: three video frames per 100 ms.
                let frame = tick / 5 * 3 + tick % 5;
                if frame % 30 == 0 {
                    if let Some(group) = video_group.take() {
                        group.finish();
                    }
                    let header = GroupHeader { track: cam, layer: 0, group: frame / 30 + 1, flags: FLAG_KEYFRAME };
                    video_group = Some(speaker.open_group(header, TrackKind::Video).await.unwrap());
                }
                if let Some(group) = video_group.as_mut() {
                    group.frame(frame * 33_333, 0, &stamped(epoch, 12_500)).await.unwrap();
                }
            }
            if tick % 10 == 0 {
                chat += 1;
                let text = format!("{}", epoch.elapsed().as_micros());
                speaker.publish(ROOM, &format!("c{chat}"), Payload::json(&text)).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(group) = video_group.take() {
            group.finish();
        }
        chat
    };
    let mut audio_frames = 0u64;
    let mut audio_ages = Vec::new();
    let mut chat_ages = Vec::new();
    let mut video = (0u64, 0u64); // (groups complete, groups reset)
    let mut chats = 0u32;
    let mut video_frames: HashMap<u64, u64> = HashMap::new();
    let mut events = viewer.take_events();
    let receive = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(SECONDS + 4);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                event = viewer.next_media() => match event {
                    Some(MediaEvent::Frame { track, frame, .. }) if track == mic => {
                        audio_frames += 1;
                        audio_ages.push(age_ms(epoch, &frame.payload));
                    }
                    Some(MediaEvent::Frame { group, .. }) => *video_frames.entry(group).or_default() += 1,
                    Some(MediaEvent::End { track, reset, .. }) if track == cam => match reset {
                        None => video.0 += 1,
                        Some(_) => video.1 += 1,
                    },
                    Some(_) => {}
                    None => break,
                },
                event = events.recv() => match event {
                    Some(Event::Message(m)) => {
                        chats += 1;
                        let sent: String = serde_json::from_slice(&m.data.0).unwrap_or_default();
                        let sent: u64 = sent.parse().unwrap_or(0);
                        chat_ages.push((epoch.elapsed().as_micros() as u64).saturating_sub(sent) as f64 / 1000.0);
                    }
                    Some(Event::Closed { code, reason }) => panic!("viewer closed: {code:?} {reason}"),
                    Some(_) => {}
                    None => break,
                },
            }
        }
    };
    let (sent_chats, ()) = tokio::join!(send, receive);
    let stats = proxy.stats();
    eprintln!(
        "audio frames {audio_frames}/{} p95 {:.0} ms; chat {chats}/{sent_chats} p95 {:.0} ms; video groups whole {} reset {}; down {:?}",
        SECONDS * 50,
        p95(audio_ages.clone()),
        p95(chat_ages.clone()),
        video.0,
        video.1,
        stats.down
    );
    assert_eq!(chats, sent_chats, "every chat message arrives");
    assert!(audio_frames >= SECONDS * 50 * 98 / 100, "audio keeps flowing: {audio_frames} of {}", SECONDS * 50);
    assert!(video.1 > 0, "the link was saturated: stale video groups were dropped");
}
