//! Calls: the media side of rooms. A room's members may publish tracks and subscribe to each
//! other's; this registry holds who publishes what, who receives what, and moves every group of
//! a publisher's stream to the subscribers whose [`Forwarder`] takes it, through their
//! [`MediaOut`]. It also tells members about tracks (`tracks`), subscribers about layer switches
//! (`layer`), publishers about keyframes and layers to send (`keyframe_request`,
//! `layers_wanted`), and everyone about who speaks (`speakers`).
//!
//! Room membership stays the hub's: `tracks` and `speakers` go to a room's members through
//! [`Hub::broadcast`], so a room without media costs the calls nothing (no entry per member,
//! no frame on join). The calls know only the rooms that have tracks, their publishers and their
//! subscribers. Calls are node-local: the participants of a call meet on one relay.
//!
//! Locks: one for the registry (tracks and rooms, taken for publish and subscription changes)
//! and one per track (taken per group and per frame), so the media path of one track never
//! waits for another's. No IO happens here: frames are queued in outboxes, group streams are
//! asked of their transports, and [`Calls::tick`] runs the periodic decisions.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::cache::GroupCache;
use super::dynacast::Dynacast;
use super::forwarder::{Forwarder, Verdict};
use super::out::MediaOut;
use super::pacer::SharedPacer;
use super::probe::Outcome;
use super::queue::GroupKey;
use super::speaker::SpeakerDetector;
use super::{MAX_LAYERS, TrackId, TrackKind, priority};
use crate::config::MediaConfig;
use crate::hub::{Hub, RoomKey};
use crate::outbox::{LaneId, Outbox};
use crate::proto::media::{GroupHeader, LayerInfo, MediaFrame, SpeakerLevel, TrackInfo};
use crate::proto::{ErrorCode, ServerFrame};
use crate::rate::TokenBucket;

/// Identifies a connection (the session id).
pub type ConnId = u64;

/// Why a media request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("no track {0} in a room this connection joined")]
    UnknownTrack(TrackId),
    #[error("track {0} is not this connection's")]
    NotOwner(TrackId),
    #[error("{0}")]
    Limit(String),
    #[error("media needs raw QUIC or WebTransport; this connection has no unidirectional streams")]
    NoMediaTransport,
}

impl MediaError {
    pub fn code(&self) -> ErrorCode {
        match self {
            MediaError::UnknownTrack(_) | MediaError::NotOwner(_) => ErrorCode::UNKNOWN_TRACK,
            MediaError::Limit(_) => ErrorCode::MEDIA_LIMIT,
            MediaError::NoMediaTransport => ErrorCode::MEDIA_UNSUPPORTED,
        }
    }
}

/// A participant as the calls see it: who, where its room's frames go, and its media side.
#[derive(Clone)]
pub struct Member {
    pub user: Arc<str>,
    pub outbox: Arc<Outbox>,
    /// The lane of the room (its stream on QUIC).
    pub lane: LaneId,
    /// `None` on transports without media (WebSocket).
    pub media: Option<Arc<MediaOut>>,
}

impl Member {
    fn send(&self, frame: &ServerFrame) {
        // A closing connection refuses; it leaves the call right after.
        let _ = self.outbox.send(self.lane, frame);
    }
}

/// A room with tracks.
#[derive(Default)]
struct Room {
    tracks: BTreeSet<TrackId>,
    speakers: Arc<Mutex<SpeakerDetector<Arc<str>>>>,
}

/// The group a subscriber receives now: the publisher's layer and group, and the subscriber's
/// own group number for it (subscribers see one increasing sequence across layer switches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Forwarding {
    layer: u8,
    group: u64,
    sub_group: u64,
}

/// Earlier groups whose remaining frames still reach a subscriber, per subscription (audio
/// groups overlap: a group whose tail the publisher's uplink delayed past the next group's
/// start must still be completed). Older ones are left to the media queue's stale rule.
const EARLIER_GROUPS: usize = 32;

struct Subscription {
    forwarder: Forwarder,
    member: Member,
    out: Arc<MediaOut>,
    /// The group started last.
    forwarding: Option<Forwarding>,
    /// Groups started before it whose publisher has not finished them, oldest first.
    earlier: Vec<Forwarding>,
    next_group: u64,
}

impl Subscription {
    /// Starts forwarding a group of `layer` and returns its key on the subscriber's side.
    fn start(&mut self, track: &TrackInfo, layer: u8, group: u64, flags: u8, now_ms: u64) -> GroupKey {
        let sub_group = self.next_group;
        self.next_group += 1;
        if let Some(previous) = self.forwarding.replace(Forwarding { layer, group, sub_group }) {
            if self.earlier.len() == EARLIER_GROUPS {
                self.earlier.remove(0);
            }
            self.earlier.push(previous);
        }
        let header = GroupHeader { track: track.track, layer, group: sub_group, flags };
        self.out.start(header, track.kind, priority(track.kind, layer), now_ms);
        GroupKey { track: track.track, group: sub_group }
    }
}

struct Track {
    info: TrackInfo,
    room: RoomKey,
    owner: ConnId,
    publisher: Member,
    caches: Vec<GroupCache>,
    subscribers: HashMap<ConnId, Subscription>,
    dynacast: Dynacast<ConnId>,
    speakers: Arc<Mutex<SpeakerDetector<Arc<str>>>>,
    /// The bytes the publisher may send (see [`Calls::publish`]).
    meter: TokenBucket,
    /// Muted by its publisher (`track_mute`).
    own_muted: bool,
    /// Held by the relay (a group call's host muted the publisher, see [`Calls::hold`]):
    /// nothing of it is cached or forwarded and it counts as silent.
    held: bool,
}

impl Track {
    /// Offers the cached group in progress to a subscriber that receives nothing yet, so it
    /// starts at a keyframe at once (the target layer first, then lower ones).
    fn offer_cached(&mut self, id: ConnId, now_ms: u64) {
        let Some(sub) = self.subscribers.get_mut(&id) else { return };
        if sub.forwarding.is_some() {
            return;
        }
        let Some(target) = sub.forwarder.target() else { return };
        for layer in (0..=target).rev() {
            let Some((group, frames)) = self.caches.get(usize::from(layer)).and_then(GroupCache::latest) else {
                continue;
            };
            if let Verdict::Forward { switched } = sub.forwarder.on_group(layer) {
                let key = sub.start(&self.info, layer, group, crate::proto::media::FLAG_KEYFRAME, now_ms);
                for frame in frames {
                    sub.out.push(key, frame.clone());
                }
                if switched {
                    sub.member.send(&ServerFrame::Layer { track: self.info.track, layer });
                }
                return;
            }
        }
    }

    /// Holds or releases the track; whether that changed anything. Holding resets the groups in
    /// flight to subscribers and drops the cached ones (spoken while held: never forwarded).
    fn set_held(&mut self, held: bool, now_ms: u64) -> bool {
        if self.held == held {
            return false;
        }
        self.held = held;
        self.info.muted = self.own_muted || held;
        if held {
            for cache in &mut self.caches {
                cache.start(0, false);
            }
            for sub in self.subscribers.values_mut() {
                if let Some(f) = sub.forwarding.take() {
                    sub.out.cancel(GroupKey { track: self.info.track, group: f.sub_group });
                }
            }
            if self.info.kind == TrackKind::Audio {
                lock(&self.speakers).remove(&self.publisher.user, now_ms);
            }
        }
        true
    }

    fn refresh_dynacast(&mut self, id: ConnId) {
        if let Some(sub) = self.subscribers.get(&id) {
            self.dynacast.set(id, sub.forwarder.target(), sub.forwarder.current());
        } else {
            self.dynacast.remove(&id);
        }
    }
}

use crate::lock::lock;

#[derive(Default)]
struct Registry {
    rooms: HashMap<RoomKey, Room>,
    tracks: HashMap<TrackId, Arc<Mutex<Track>>>,
    /// Tracks each connection publishes.
    published: HashMap<ConnId, Vec<TrackId>>,
    /// What the relay holds back per room and publisher (only entries with something held).
    holds: HashMap<RoomKey, HashMap<Arc<str>, Hold>>,
}

/// What the relay holds back of one publisher in one room, whatever the publisher sends: a group
/// call's host mute ([`crate::call::group_service`]). `video` covers screen tracks too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hold {
    pub audio: bool,
    pub video: bool,
}

impl Hold {
    fn covers(self, kind: TrackKind) -> bool {
        match kind {
            TrackKind::Audio => self.audio,
            TrackKind::Video | TrackKind::Screen => self.video,
        }
    }
}

pub struct Calls {
    registry: Mutex<Registry>,
    next_track: AtomicU64,
    config: MediaConfig,
    /// Where rooms' members are.
    hub: Arc<Hub>,
    /// Paces the big writes of every subscriber connection (see [`SharedPacer`]).
    pacer: Arc<SharedPacer>,
}

impl Calls {
    pub fn new(config: MediaConfig, hub: Arc<Hub>) -> Calls {
        Calls {
            registry: Mutex::new(Registry::default()),
            next_track: AtomicU64::new(1),
            config,
            hub,
            pacer: Arc::new(SharedPacer::default()),
        }
    }

    /// The relay-wide pacer of big media writes, for the transports' group writers.
    pub fn pacer(&self) -> &Arc<SharedPacer> {
        &self.pacer
    }

    pub fn config(&self) -> &MediaConfig {
        &self.config
    }

    /// A connection joined a room: when the room has tracks, it gets them (`tracks`).
    pub fn joined(&self, key: &RoomKey, outbox: &Outbox, lane: LaneId) {
        let registry = lock(&self.registry);
        let Some(room) = registry.rooms.get(key) else { return };
        let tracks: Vec<TrackInfo> =
            room.tracks.iter().filter_map(|t| registry.tracks.get(t)).map(|t| lock(t).info.clone()).collect();
        drop(registry);
        let _ = outbox.send(lane, &ServerFrame::Tracks { room: key.room.to_string(), tracks, ended: Vec::new() });
    }

    /// A connection left a room (or disconnected): its tracks there end, its subscriptions to
    /// tracks there stop.
    pub fn leave(&self, key: &RoomKey, id: ConnId, now_ms: u64) {
        let mut registry = lock(&self.registry);
        let Some(room) = registry.rooms.get(key) else { return };
        let room_tracks: Vec<TrackId> = room.tracks.iter().copied().collect();
        let mut ended = Vec::new();
        for track in room_tracks {
            let Some(handle) = registry.tracks.get(&track).cloned() else { continue };
            let mut t = lock(&handle);
            if t.owner == id {
                ended.push(track);
            } else if let Some(sub) = t.subscribers.remove(&id) {
                sub.out.end_track(track);
                t.refresh_dynacast(id);
            }
        }
        for track in ended {
            self.end_track(&mut registry, track, now_ms);
        }
    }

    /// Removes a track for everyone: its subscribers' groups are reset and members told.
    fn end_track(&self, registry: &mut Registry, track: TrackId, now_ms: u64) {
        let Some(handle) = registry.tracks.remove(&track) else { return };
        let mut t = lock(&handle);
        for (_, sub) in t.subscribers.drain() {
            sub.out.end_track(track);
        }
        if let Some(list) = registry.published.get_mut(&t.owner) {
            list.retain(|id| *id != track);
            if list.is_empty() {
                registry.published.remove(&t.owner);
            }
        }
        metrics::gauge!(crate::metrics::MEDIA_TRACKS).decrement(1.0);
        if let Some(room) = registry.rooms.get_mut(&t.room) {
            room.tracks.remove(&track);
            if t.info.kind == TrackKind::Audio {
                lock(&room.speakers).remove(&t.publisher.user, now_ms);
            }
            if room.tracks.is_empty() {
                registry.rooms.remove(&t.room);
            }
        }
        let frame = ServerFrame::Tracks { room: t.room.room.to_string(), tracks: Vec::new(), ended: vec![track] };
        self.hub.broadcast(&t.room, &frame);
    }

    /// Publishes a track in a room the connection joined; returns its id.
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &self,
        key: &RoomKey,
        id: ConnId,
        publisher: Member,
        name: &str,
        kind: TrackKind,
        codec: &str,
        layers: Vec<LayerInfo>,
        now_ms: u64,
    ) -> Result<TrackId, MediaError> {
        let limit = |message: String| Err(MediaError::Limit(message));
        if name.is_empty() || name.len() > 64 || codec.len() > 64 {
            return limit("track name must be 1-64 bytes and codec at most 64".into());
        }
        let max_layers = if kind == TrackKind::Audio { 1 } else { MAX_LAYERS };
        if layers.is_empty() || layers.len() > max_layers {
            return limit(format!("a {kind:?} track has 1-{max_layers} layers"));
        }
        if let Some(layer) = layers.iter().find(|l| l.bitrate > self.config.max_bitrate) {
            return limit(format!(
                "layer bitrate {} exceeds media.max_bitrate {}",
                layer.bitrate, self.config.max_bitrate
            ));
        }
        let Some(media) = &publisher.media else { return Err(MediaError::NoMediaTransport) };
        let mut registry = lock(&self.registry);
        let mine = registry.published.get(&id).map_or(&[][..], Vec::as_slice);
        if mine.len() >= self.config.max_tracks_per_connection as usize {
            return limit(format!("at most {} tracks per connection", self.config.max_tracks_per_connection));
        }
        if mine.iter().filter_map(|t| registry.tracks.get(t)).any(|t| lock(t).info.name == name) {
            return limit(format!("this connection already publishes a track named {name:?}"));
        }
        media.will_publish();
        let held = registry.holds.get(key).and_then(|h| h.get(&publisher.user)).is_some_and(|h| h.covers(kind));
        let speakers = registry.rooms.entry(key.clone()).or_default().speakers.clone();
        let track = self.next_track.fetch_add(1, Ordering::Relaxed);
        let info = TrackInfo {
            track,
            user: publisher.user.to_string(),
            name: name.into(),
            kind,
            codec: codec.into(),
            layers: layers.clone(),
            muted: held,
        };
        let entry = Track {
            info: info.clone(),
            room: key.clone(),
            owner: id,
            publisher,
            caches: layers.iter().map(|_| GroupCache::new(self.config.cache_bytes)).collect(),
            subscribers: HashMap::new(),
            dynacast: Dynacast::new(layers.len()),
            speakers,
            meter: track_meter(self.config.max_bitrate, layers.len(), now_ms),
            own_muted: false,
            held,
        };
        registry.tracks.insert(track, Arc::new(Mutex::new(entry)));
        registry.published.entry(id).or_default().push(track);
        metrics::gauge!(crate::metrics::MEDIA_TRACKS).increment(1.0);
        registry.rooms.entry(key.clone()).or_default().tracks.insert(track);
        drop(registry);
        let frame = ServerFrame::Tracks { room: key.room.to_string(), tracks: vec![info], ended: Vec::new() };
        self.hub.broadcast(key, &frame);
        Ok(track)
    }

    /// The track, if `id` owns it.
    fn owned(&self, id: ConnId, track: TrackId) -> Result<Arc<Mutex<Track>>, MediaError> {
        let handle = lock(&self.registry).tracks.get(&track).cloned().ok_or(MediaError::UnknownTrack(track))?;
        if lock(&handle).owner != id {
            return Err(MediaError::NotOwner(track));
        }
        Ok(handle)
    }

    pub fn unpublish(&self, id: ConnId, track: TrackId, now_ms: u64) -> Result<(), MediaError> {
        self.owned(id, track)?;
        let mut registry = lock(&self.registry);
        self.end_track(&mut registry, track, now_ms);
        Ok(())
    }

    pub fn mute(&self, id: ConnId, track: TrackId, muted: bool) -> Result<(), MediaError> {
        let handle = self.owned(id, track)?;
        let (key, info) = {
            let mut t = lock(&handle);
            t.own_muted = muted;
            t.info.muted = muted || t.held;
            (t.room.clone(), t.info.clone())
        };
        let frame = ServerFrame::Tracks { room: key.room.to_string(), tracks: vec![info], ended: Vec::new() };
        self.hub.broadcast(&key, &frame);
        Ok(())
    }

    /// Holds back (or releases) what `user` publishes in the room `key`, now and for tracks they
    /// publish later, whatever they send: held tracks are listed `muted` in `tracks`, their
    /// groups in flight are reset for subscribers, and nothing of them is cached, forwarded or
    /// counted for the speakers until released.
    pub fn hold(&self, key: &RoomKey, user: &str, hold: Hold, now_ms: u64) {
        let mut registry = lock(&self.registry);
        let user: Arc<str> = user.into();
        let holds = registry.holds.entry(key.clone()).or_default();
        if hold == Hold::default() {
            holds.remove(&user);
        } else {
            holds.insert(user.clone(), hold);
        }
        if holds.is_empty() {
            registry.holds.remove(key);
        }
        let Some(room) = registry.rooms.get(key) else { return };
        let mut changed = Vec::new();
        for handle in room.tracks.iter().filter_map(|t| registry.tracks.get(t)) {
            let mut t = lock(handle);
            if t.publisher.user == user {
                let held = hold.covers(t.info.kind);
                if t.set_held(held, now_ms) {
                    changed.push(t.info.clone());
                }
            }
        }
        drop(registry);
        if !changed.is_empty() {
            let frame = ServerFrame::Tracks { room: key.room.to_string(), tracks: changed, ended: Vec::new() };
            self.hub.broadcast(key, &frame);
        }
    }

    /// The room a track is published in (the session checks the subscriber joined it).
    pub fn track_room(&self, track: TrackId) -> Option<RoomKey> {
        let handle = lock(&self.registry).tracks.get(&track).cloned()?;
        Some(lock(&handle).room.clone())
    }

    /// Subscribes `member` (who joined the track's room: see [`Calls::track_room`]) or changes
    /// its subscription: the highest layer wanted, or paused.
    pub fn subscribe(
        &self,
        id: ConnId,
        track: TrackId,
        member: Member,
        max_layer: u8,
        paused: bool,
        now_ms: u64,
    ) -> Result<(), MediaError> {
        let handle = lock(&self.registry).tracks.get(&track).cloned().ok_or(MediaError::UnknownTrack(track))?;
        let out = member.media.clone().ok_or(MediaError::NoMediaTransport)?;
        out.will_receive();
        let mut t = lock(&handle);
        let Track { info, subscribers, .. } = &mut *t;
        let sub = subscribers.entry(id).or_insert_with(|| Subscription {
            forwarder: Forwarder::new(&info.layers, max_layer, now_ms),
            member,
            out: out.clone(),
            forwarding: None,
            earlier: Vec::new(),
            next_group: 1,
        });
        sub.forwarder.observe(out.path(), now_ms);
        sub.forwarder.set_request(max_layer, paused, now_ms);
        if paused && sub.forwarding.take().is_some() {
            sub.earlier.clear();
            out.end_track(track);
        }
        t.refresh_dynacast(id);
        t.offer_cached(id, now_ms);
        Ok(())
    }

    pub fn unsubscribe(&self, id: ConnId, track: TrackId) -> Result<(), MediaError> {
        let handle = lock(&self.registry).tracks.get(&track).cloned().ok_or(MediaError::UnknownTrack(track))?;
        let mut t = lock(&handle);
        let sub = t.subscribers.remove(&id).ok_or(MediaError::UnknownTrack(track))?;
        sub.out.end_track(track);
        t.refresh_dynacast(id);
        Ok(())
    }

    /// A group stream of `id`'s arrived: where its frames go, or why it is refused.
    pub fn group(&self, id: ConnId, header: GroupHeader, now_ms: u64) -> Result<GroupIn, MediaError> {
        let handle = self.owned(id, header.track)?;
        let mut t = lock(&handle);
        let layer = usize::from(header.layer);
        if layer >= t.info.layers.len() {
            return Err(MediaError::Limit(format!("track {} has no layer {}", header.track, header.layer)));
        }
        if t.held {
            // Accepted and metered, but it goes nowhere (see `Calls::hold`).
            drop(t);
            return Ok(GroupIn { track: handle, layer: header.layer, group: header.group });
        }
        t.caches[layer].start(header.group, header.keyframe());
        let Track { info, subscribers, dynacast, .. } = &mut *t;
        for (sub_id, sub) in subscribers.iter_mut() {
            match sub.forwarder.on_group(header.layer) {
                Verdict::Forward { switched } => {
                    sub.start(info, header.layer, header.group, header.flags, now_ms);
                    if switched {
                        sub.member.send(&ServerFrame::Layer { track: info.track, layer: header.layer });
                        dynacast.set(*sub_id, sub.forwarder.target(), sub.forwarder.current());
                    }
                }
                Verdict::Skip => {}
            }
        }
        drop(t);
        Ok(GroupIn { track: handle, layer: header.layer, group: header.group })
    }

    /// The periodic decisions (every [`TICK_MS`]): layers from the transports' path readings
    /// (and probes above them), keyframe requests, dynacast, speakers.
    pub fn tick(&self, now_ms: u64) {
        let (tracks, rooms): (Vec<_>, Vec<_>) = {
            let registry = lock(&self.registry);
            let tracks = registry.tracks.values().cloned().collect();
            let rooms: Vec<_> = registry.rooms.iter().map(|(key, room)| (key.clone(), room.speakers.clone())).collect();
            (tracks, rooms)
        };
        for handle in tracks {
            let mut t = lock(&handle);
            let Track { info, subscribers, dynacast, publisher, .. } = &mut *t;
            let mut keyframes = 0u8;
            let mut failed = Vec::new();
            for (sub_id, sub) in subscribers.iter_mut() {
                sub.forwarder.observe(sub.out.path(), now_ms);
                if let Some(outcome) = sub.forwarder.probe_outcome() {
                    count_probe(outcome);
                    // A failed layer's group in flight is what congests the path: reset it now,
                    // and restart from the target layer's cached group (a keyframe).
                    if outcome == Outcome::Failed
                        && sub.forwarder.drop_failed_layer()
                        && let Some(f) = sub.forwarding.take()
                    {
                        sub.out.cancel(GroupKey { track: info.track, group: f.sub_group });
                        failed.push(*sub_id);
                    }
                }
                dynacast.set(*sub_id, sub.forwarder.target(), sub.forwarder.current());
                if let Some(layer) = sub.forwarder.keyframe_needed(now_ms) {
                    keyframes |= 1 << layer;
                }
            }
            for layer in 0..MAX_LAYERS as u8 {
                if keyframes & (1 << layer) != 0 {
                    publisher.send(&ServerFrame::KeyframeRequest { track: info.track, layer });
                }
            }
            for id in failed {
                t.offer_cached(id, now_ms);
            }
            let Track { info, dynacast, publisher, .. } = &mut *t;
            if let Some(layers) = dynacast.update(now_ms) {
                publisher.send(&ServerFrame::LayersWanted { track: info.track, layers });
            }
        }
        for (key, speakers) in rooms {
            let Some(change) = lock(&speakers).tick(now_ms) else { continue };
            let frame = ServerFrame::Speakers {
                room: key.room.to_string(),
                speakers: change
                    .speakers
                    .iter()
                    .map(|s| SpeakerLevel {
                        user: s.participant.to_string(),
                        level: (s.level.clamp(0.0, 1.0) * 100.0) as u8,
                    })
                    .collect(),
                dominant: change.dominant.map(|d| d.to_string()),
            };
            self.hub.broadcast(&key, &frame);
        }
    }
}

fn count_probe(outcome: Outcome) {
    let outcome = match outcome {
        Outcome::Started => "started",
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::Abandoned => "abandoned",
    };
    metrics::counter!(crate::metrics::MEDIA_PROBES_TOTAL, "outcome" => outcome).increment(1);
}

/// What a track may send: `media.max_bitrate` per layer it announced, averaged over up to
/// [`METER_SECONDS`] (keyframes come in bursts).
fn track_meter(max_bitrate: u32, layers: usize, now_ms: u64) -> TokenBucket {
    let bytes_per_second = (u64::from(max_bitrate) * layers as u64 / 8).min(u64::from(u32::MAX / METER_SECONDS));
    TokenBucket::new(bytes_per_second as u32, bytes_per_second as u32 * METER_SECONDS, now_ms)
}

/// Seconds of a track's bitrate allowance a burst may use.
pub const METER_SECONDS: u32 = 2;

/// How often [`Calls::tick`] runs.
pub const TICK_MS: u64 = 100;

/// Where the frames of one group stream of a publisher go.
pub struct GroupIn {
    track: Arc<Mutex<Track>>,
    layer: u8,
    group: u64,
}

impl GroupIn {
    /// Calls `each` with the [`MediaOut`] and group key of every subscriber receiving this group
    /// (the group started last, or an earlier one not finished yet).
    fn receivers(&self, t: &Track, mut each: impl FnMut(&MediaOut, GroupKey)) {
        let track = t.info.track;
        let this = |f: &&Forwarding| f.layer == self.layer && f.group == self.group;
        for sub in t.subscribers.values() {
            if let Some(f) = sub.forwarding.iter().chain(&sub.earlier).find(this) {
                each(&sub.out, GroupKey { track, group: f.sub_group });
            }
        }
    }

    /// The publisher is done with this group: subscribers forget it as an earlier group.
    fn forget(&self, t: &mut Track) {
        for sub in t.subscribers.values_mut() {
            sub.earlier.retain(|f| f.layer != self.layer || f.group != self.group);
        }
    }

    /// One frame of the group: metered against the track's bitrate allowance, cached, counted
    /// for the speaker detector, and queued for every subscriber that takes this group. Past
    /// the allowance the frame is refused (the caller stops the group).
    pub fn frame(&self, frame: &MediaFrame, now_ms: u64) -> Result<(), MediaError> {
        let mut t = lock(&self.track);
        if !t.meter.try_take_n(frame.wire.len() as u64, now_ms) {
            return Err(MediaError::Limit(format!("track {} sends above media.max_bitrate", t.info.track)));
        }
        if t.held {
            return Ok(());
        }
        let wire: &Bytes = &frame.wire;
        t.caches[usize::from(self.layer)].push(self.group, wire);
        if t.info.kind == TrackKind::Audio {
            let level = frame.header.level;
            lock(&t.speakers).observe(&t.publisher.user, level & 0x7f, Some(level & 0x80 != 0), now_ms);
        }
        self.receivers(&t, |out, key| out.push(key, wire.clone()));
        Ok(())
    }

    /// The publisher abandoned the group (reset its stream) or the relay refused the rest of it
    /// (a frame over the limit): the subscribers' streams of it are reset, never left waiting.
    pub fn abort(self) {
        let mut t = lock(&self.track);
        self.receivers(&t, MediaOut::cancel);
        self.forget(&mut t);
    }

    /// The publisher finished the group.
    pub fn end(self, now_ms: u64) {
        let mut t = lock(&self.track);
        self.receivers(&t, |out, key| out.complete(key, now_ms));
        self.forget(&mut t);
    }
}
