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

/// Simulcast under netsim's `3g` profile (2 Mbit/s down, 80 ms ± 20 ms, 1 % loss): a viewer
/// behind it is moved to a lower layer by its connection's estimate while a viewer on a clean
/// link keeps the top layer, and the 3g viewer's audio keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_3g_gets_a_lower_layer_and_whole_audio_while_others_keep_the_top_layer() {
    const SECONDS: u64 = 20;
    let relay = common::start_with(|_| {}).await;
    let profile = Profile::named("3g").expect("the 3g profile");
    let proxy = Proxy::start(proxy_config(&relay, Transport::Quic, profile, 9)).await.unwrap();
    let mut mobile = connect_via(&relay, Transport::Quic, &proxy, "mobile", ROOM).await.unwrap();
    mobile.join(ROOM).await.unwrap();
    let target = relay.target(Transport::Quic);
    let mut desk = connect(&relay, Transport::Quic, target.clone(), "desk", ROOM).await.unwrap();
    desk.join(ROOM).await.unwrap();
    let speaker = connect(&relay, Transport::Quic, target, "speaker", ROOM).await.unwrap();
    speaker.join(ROOM).await.unwrap();
    let layers = simulcast();
    let mic = speaker.publish_track(ROOM, "mic", TrackKind::Audio, "opus", layers[..1].to_vec()).await.unwrap();
    let cam = speaker.publish_track(ROOM, "cam", TrackKind::Video, "vp8", layers.clone()).await.unwrap();
    for viewer in [&mobile, &desk] {
        viewer.subscribe_track(mic, 0, false).await.unwrap();
        viewer.subscribe_track(cam, 2, false).await.unwrap();
    }
    let send = send_simulcast(&speaker, mic, cam, SECONDS);
    let until = tokio::time::Instant::now() + Duration::from_secs(SECONDS + 3);
    let ((), mobile, desk) = tokio::join!(send, watch(&mut mobile, mic, until), watch(&mut desk, mic, until));
    eprintln!(
        "3g viewer: audio {} received, {} missing, whole video groups by layer {:?}; clean viewer: audio {} received, {} missing, layers {:?}; down {:?}",
        mobile.audio,
        mobile.audio_missing,
        mobile.whole,
        desk.audio,
        desk.audio_missing,
        desk.whole,
        proxy.stats().down
    );
    // 3g loses 1 % of packets each way: the audio groups they delay must still arrive (see
    // `audio_deadline_ms` in src/media/queue.rs).
    assert_eq!(mobile.audio_missing, 0, "no audio gap behind 3g");
    assert_eq!(desk.audio_missing, 0, "no audio gap on the clean link");
    assert!(mobile.audio >= SECONDS * 50 * 9 / 10, "the 3g viewer's audio keeps flowing: {}", mobile.audio);
    assert_eq!(desk.whole.last(), Some(&2), "the clean viewer keeps the top layer");
    assert!(mobile.whole.last().is_some_and(|l| *l < 2), "the 3g viewer ends on a lower layer");
}

/// A 150 kbit/s, 500 kbit/s and 1.5 Mbit/s simulcast video track's layers.
fn simulcast() -> Vec<LayerInfo> {
    [(320, 180, 150_000), (640, 360, 500_000), (1280, 720, 1_500_000)]
        .map(|(width, height, bitrate)| LayerInfo { width, height, bitrate })
        .to_vec()
}

/// Sends `seconds` of a call: 30 fps on every layer of `cam` at its bitrate, 1 s groups (all
/// layers start together, as simulcast encoders with a common keyframe interval do); 20 ms audio
/// frames on `mic`, 5 per group.
async fn send_simulcast(speaker: &edgerelay::client::Client, mic: u64, cam: u64, seconds: u64) {
    let layers = simulcast();
    let mut video: Vec<Option<edgerelay::client::media::GroupWriter>> = vec![None, None, None];
    let mut audio: Option<edgerelay::client::media::GroupWriter> = None;
    for tick in 0..seconds * 50 {
        if tick % 5 == 0 {
            let header = GroupHeader { track: mic, layer: 0, group: tick / 5 + 1, flags: 0 };
            audio = Some(speaker.open_group(header, TrackKind::Audio).await.unwrap());
        }
        if let Some(group) = audio.as_mut() {
            group.frame(tick * 20_000, 0x80 | 20, &[0x11; 80]).await.unwrap();
        }
        if tick % 5 == 4
            && let Some(group) = audio.take()
        {
            group.finish();
        }
        if tick % 5 < 3 {
            let frame = tick / 5 * 3 + tick % 5;
            for (layer, info) in layers.iter().enumerate() {
                if frame % 30 == 0 {
                    if let Some(group) = video[layer].take() {
                        group.finish();
                    }
                    let header =
                        GroupHeader { track: cam, layer: layer as u8, group: frame / 30 + 1, flags: FLAG_KEYFRAME };
                    video[layer] = Some(speaker.open_group(header, TrackKind::Video).await.unwrap());
                }
                if let Some(group) = video[layer].as_mut() {
                    group.frame(frame * 33_333, 0, &vec![layer as u8; info.bitrate as usize / 8 / 30]).await.unwrap();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for group in video.into_iter().flatten() {
        group.finish();
    }
}

/// What a viewer received of a call sent by [`send_simulcast`].
#[derive(Debug, Default)]
struct Watched {
    /// Audio frames received.
    audio: u64,
    /// Audio frames sent before the newest one received that never arrived (a gap heard; the
    /// ones not sent yet when the watch ended do not count).
    audio_missing: u64,
    /// The layer of each whole video group, in order.
    whole: Vec<u8>,
    /// The layer switches the relay announced (`layer` events), in order.
    switches: Vec<u8>,
}

/// What a viewer received until `until`.
async fn watch(viewer: &mut edgerelay::client::Client, mic: u64, until: tokio::time::Instant) -> Watched {
    let mut seen = Watched::default();
    let mut audio_ticks = std::collections::BTreeSet::new();
    let mut layer_of = HashMap::new();
    let mut events = viewer.take_events();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            event = viewer.next_media() => match event {
                Some(MediaEvent::Group(h)) if h.track != mic => {
                    layer_of.insert(h.group, h.layer);
                }
                Some(MediaEvent::Frame { track, frame, .. }) if track == mic => {
                    audio_ticks.insert(frame.header.timestamp_us / 20_000);
                }
                Some(MediaEvent::End { track, group, reset: None }) if track != mic => {
                    seen.whole.extend(layer_of.get(&group).copied());
                }
                Some(_) => {}
                None => break,
            },
            Some(event) = events.recv() => {
                if let Event::Call(edgerelay::proto::ServerFrame::Layer { layer, .. }) = event {
                    seen.switches.push(layer);
                }
            }
        }
    }
    seen.audio = audio_ticks.len() as u64;
    seen.audio_missing = audio_ticks.last().map_or(0, |last| last + 1 - seen.audio);
    seen
}

/// One direction of a path with 100 ms of delay and a bottleneck of `rate_bps` in front of a
/// queue of about 1 s at 250 kbit/s (a mobile link's deep buffer).
fn long_link(rate_bps: u64) -> LinkConfig {
    LinkConfig {
        delay: Duration::from_millis(100),
        rate_bps: Some(rate_bps),
        queue_bytes: 32 * 1024,
        mtu: Some(1500),
        ..LinkConfig::perfect()
    }
}

/// Starts a relay, a speaker publishing a simulcast camera and a microphone, and a viewer
/// behind a proxy whose downlink is `down`, subscribed to both at the top layer.
async fn viewer_behind(
    down: LinkConfig,
    seed: u64,
) -> (common::TestRelay, Proxy, edgerelay::client::Client, edgerelay::client::Client, u64, u64) {
    let relay = common::start_with(|_| {}).await;
    let mut profile = Profile::perfect("long link");
    profile.down = down;
    let proxy = Proxy::start(proxy_config(&relay, Transport::Quic, profile, seed)).await.unwrap();
    let viewer = connect_via(&relay, Transport::Quic, &proxy, "viewer", ROOM).await.unwrap();
    viewer.join(ROOM).await.unwrap();
    let speaker = connect(&relay, Transport::Quic, relay.target(Transport::Quic), "speaker", ROOM).await.unwrap();
    speaker.join(ROOM).await.unwrap();
    let layers = simulcast();
    let mic = speaker.publish_track(ROOM, "mic", TrackKind::Audio, "opus", layers[..1].to_vec()).await.unwrap();
    let cam = speaker.publish_track(ROOM, "cam", TrackKind::Video, "vp8", layers).await.unwrap();
    viewer.subscribe_track(mic, 0, false).await.unwrap();
    viewer.subscribe_track(cam, 2, false).await.unwrap();
    (relay, proxy, speaker, viewer, mic, cam)
}

/// Climbing back (docs/media.md, "Probing"): a viewer whose path is congested (250 kbit/s)
/// steps down to the base layer; when the path frees up (20 Mbit/s), its bandwidth estimate
/// alone would keep it there (a connection that sends less than its congestion window allows
/// does not grow the window), so the relay probes the layers above and the viewer ends on the
/// top layer again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_whose_congested_path_frees_up_climbs_back_to_the_top_layer() {
    const CONGESTED: u64 = 8;
    const FREED: u64 = 24;
    let (_relay, proxy, speaker, mut viewer, mic, cam) = viewer_behind(long_link(250_000), 11).await;
    let free = async {
        tokio::time::sleep(Duration::from_secs(CONGESTED)).await;
        proxy.set_links(LinkConfig::perfect(), long_link(20_000_000)).unwrap();
    };
    let until = tokio::time::Instant::now() + Duration::from_secs(CONGESTED + FREED + 2);
    let ((), (), seen) =
        tokio::join!(send_simulcast(&speaker, mic, cam, CONGESTED + FREED), free, watch(&mut viewer, mic, until));
    let Watched { audio, audio_missing, whole: layers, switches } = seen;
    eprintln!(
        "whole video groups by layer {layers:?}; layer switches {switches:?}; audio {audio} received, {audio_missing} missing; down {:?}",
        proxy.stats().down
    );
    let congested = &layers[..layers.len().min(CONGESTED as usize - 2)];
    assert!(congested.contains(&0), "the congested path got the base layer: {layers:?}");
    assert_eq!(layers.last(), Some(&2), "back on the top layer once the path freed up: {layers:?}");
}

/// A path that stays narrow (400 kbit/s: the 500 kbit/s layer does not fit) is probed, but each
/// failed probe doubles the wait before the next: over 30 s the viewer climbs a bounded number
/// of times, ends on the base layer, and keeps its audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_a_path_that_stays_narrow_is_probed_a_bounded_number_of_times() {
    const SECONDS: u64 = 30;
    let (_relay, proxy, speaker, mut viewer, mic, cam) = viewer_behind(long_link(400_000), 12).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(SECONDS + 2);
    let ((), seen) = tokio::join!(send_simulcast(&speaker, mic, cam, SECONDS), watch(&mut viewer, mic, until));
    let Watched { audio, audio_missing, whole: layers, switches } = seen;
    eprintln!(
        "whole video groups by layer {layers:?}; layer switches {switches:?}; audio {audio} received, {audio_missing} missing; down {:?}",
        proxy.stats().down
    );
    let climbs = switches.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(climbs <= 4, "at most 4 climbs in {SECONDS} s (probes back off): {switches:?}");
    assert_eq!(layers.last(), Some(&0), "ends on the base layer: {layers:?}");
    // A failed trial's group is reset at once, but what it already put in the bottleneck queue
    // delays the audio behind it; the audio deadline follows the RTT that queue adds, so none
    // goes missing. (Fewer than 1,500 may arrive by the end: on a busy machine the sender's
    // 20 ms ticks run late.)
    assert_eq!(audio_missing, 0, "no audio gap");
    assert!(audio >= SECONDS * 50 * 9 / 10, "audio keeps flowing: {audio} of {}", SECONDS * 50);
}
