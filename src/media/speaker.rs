//! Active speaker detection: who is speaking in a call, and who is the dominant speaker.
//!
//! Media frames carry an RFC 6464 audio level (`0` = loudest, `127` = silence, in -dBov) and a
//! voice-activity flag; the relay never decodes audio, it ranks participants by these headers
//! and tells everyone in the call who is speaking. What a UI needs from that:
//!
//! - **No flicker.** A cough must not move the spotlight, two people talking at once must not
//!   swap it back and forth, a pause between words must not drop the "speaking" ring.
//! - **Quick to pick up a new speaker**: a few hundred milliseconds, not seconds.
//! - **Cheap**: [`SpeakerDetector::observe`] runs for every audio frame of every participant (tens
//!   per second each), so it is O(1) with no allocation once a participant is known; the ranking
//!   happens in [`SpeakerDetector::tick`], a few times per second.
//!
//! Like the session, this is a pure object: no IO, no clock (`now_ms` is passed in), tested with
//! plain values.
//!
//! # Algorithm
//!
//! 1. Each frame's level becomes a linear amplitude (`10^(-level/20)`, 1.0 = full scale). Two
//!    exponential moving averages are kept per participant, with time constant
//!    [`SpeakerConfig::smoothing_ms`] and weights computed from the elapsed time (so 10 ms and
//!    60 ms frames smooth alike): *loudness* (the amplitude) and *voice share* (1 for a voiced
//!    frame, 0 otherwise). The **score** is their product, in `0.0..=1.0`: loud and voiced most of
//!    the time. A short burst moves both averages a little, so its product stays small: that is
//!    what rejects coughs and clicks.
//! 2. **Speaking, with hysteresis**: a participant becomes a speaker once its score has stayed at
//!    or above the activation threshold ([`SpeakerConfig::activate_dbov`]) for
//!    [`SpeakerConfig::min_active_ms`], and stops once it has stayed below the lower release
//!    threshold ([`SpeakerConfig::release_dbov`]) for [`SpeakerConfig::release_ms`]. A
//!    participant with no frame for [`SpeakerConfig::silence_after_ms`] counts as silent since
//!    its last frame (muted, left, or discontinuous transmission).
//! 3. **Dominant speaker**: the loudest speaker when there is none; then it changes only when a
//!    challenger's score has stayed above [`SpeakerConfig::switch_ratio`] times the dominant's
//!    for [`SpeakerConfig::switch_after_ms`], or when the dominant stops speaking or is removed.
//!    With nobody speaking there is no dominant speaker (a UI wanting a sticky spotlight keeps
//!    the last one it was told).
//! 4. [`SpeakerDetector::tick`] lists the speakers loudest first (at most
//!    [`SpeakerConfig::max_speakers`], the dominant always among them) and returns it only when
//!    the list or the dominant changed; the levels in it are a snapshot, not a meter feed.

use std::collections::HashMap;
use std::hash::Hash;

/// Quietest RFC 6464 level (-127 dBov); larger values are clamped to it.
pub const MAX_LEVEL: u8 = 127;

/// Longest time one frame is taken to cover, in ms (Opus frames are at most 120 ms). When frames
/// are further apart, the rest of the gap counts as silence.
const MAX_FRAME_MS: u64 = 120;

/// Time a participant's first frame is taken to cover, in ms (a common Opus frame length).
const FIRST_FRAME_MS: u64 = 20;

/// Tunables of [`SpeakerDetector`]. Levels are RFC 6464 levels in -dBov: lower is louder.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeakerConfig {
    /// Most speakers listed in [`Speakers::speakers`]. Default 3.
    pub max_speakers: usize,
    /// Time constant of the moving averages, in ms: after this long a new steady level has
    /// moved an average ~63% of the way. Default 300.
    pub smoothing_ms: u64,
    /// Score a participant must reach to become a speaker, as an RFC 6464 level: 40 means
    /// -40 dBov. Default 40.
    pub activate_dbov: u8,
    /// Score below which a speaker starts being released, as an RFC 6464 level; quieter than
    /// `activate_dbov` (a larger number), or it is taken equal to it. Also the level at or
    /// below which a frame without a voice flag counts as voiced. Default 50.
    pub release_dbov: u8,
    /// How long the score must stay at or above the activation threshold before the participant
    /// becomes a speaker, in ms. Default 150.
    pub min_active_ms: u64,
    /// How long a speaker's score must stay below the release threshold before it stops being a
    /// speaker, in ms. Default 400.
    pub release_ms: u64,
    /// A participant with no frame for this long counts as silent since its last frame, in ms.
    /// Default 500.
    pub silence_after_ms: u64,
    /// How many times the dominant speaker's score a challenger's must exceed (linear; 1.5 is
    /// about 3.5 dB). Values below 1.0 are taken as 1.0. Default 1.5.
    pub switch_ratio: f32,
    /// How long a challenger must exceed the dominant by `switch_ratio` before taking over, in
    /// ms. Default 500.
    pub switch_after_ms: u64,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            max_speakers: 3,
            smoothing_ms: 300,
            activate_dbov: 40,
            release_dbov: 50,
            min_active_ms: 150,
            release_ms: 400,
            silence_after_ms: 500,
            switch_ratio: 1.5,
            switch_after_ms: 500,
        }
    }
}

/// One current speaker.
#[derive(Debug, Clone, PartialEq)]
pub struct Speaker<P> {
    /// Who.
    pub participant: P,
    /// Smoothed score in `0.0..=1.0`: linear amplitude (1.0 = full scale) weighted by the share
    /// of voiced frames; `20 * log10(level)` gives dBov.
    pub level: f32,
}

/// What participants are told: who speaks, and who the dominant (active) speaker is.
#[derive(Debug, Clone, PartialEq)]
pub struct Speakers<P> {
    /// Current speakers, loudest first, at most [`SpeakerConfig::max_speakers`]; the dominant
    /// speaker is always listed (in the last slot if it is not among the loudest) unless
    /// `max_speakers` is 0.
    pub speakers: Vec<Speaker<P>>,
    /// The dominant speaker, if anyone speaks.
    pub dominant: Option<P>,
}

impl<P> Default for Speakers<P> {
    fn default() -> Self {
        Self { speakers: Vec::new(), dominant: None }
    }
}

/// Values derived once from [`SpeakerConfig`].
#[derive(Debug, Clone)]
struct Params {
    tau_ms: f32,
    activate: f32,
    release: f32,
    ratio: f32,
    min_active_ms: u64,
    release_ms: u64,
    silence_after_ms: u64,
    switch_after_ms: u64,
    max_speakers: usize,
    release_dbov: u8,
}

impl Params {
    fn new(config: &SpeakerConfig) -> Self {
        let activate = amplitude(config.activate_dbov.min(MAX_LEVEL));
        Self {
            tau_ms: config.smoothing_ms.max(1) as f32,
            activate,
            release: amplitude(config.release_dbov.min(MAX_LEVEL)).min(activate),
            ratio: if config.switch_ratio >= 1.0 { config.switch_ratio } else { 1.0 },
            min_active_ms: config.min_active_ms,
            release_ms: config.release_ms,
            silence_after_ms: config.silence_after_ms,
            switch_after_ms: config.switch_after_ms,
            max_speakers: config.max_speakers,
            release_dbov: config.release_dbov,
        }
    }

    /// Factor an average keeps after `ms` of zero input.
    fn decay(&self, ms: u64) -> f32 {
        (-(ms as f32) / self.tau_ms).exp()
    }
}

/// Linear amplitude of an RFC 6464 level.
fn amplitude(level: u8) -> f32 {
    10f32.powf(-f32::from(level) / 20.0)
}

/// One participant's audio state.
#[derive(Debug, Clone)]
struct Track {
    /// Moving average of the linear amplitude.
    loudness: f32,
    /// Moving average of the voice flag (share of voiced frames).
    voice: f32,
    /// Time the averages are up to.
    updated_ms: u64,
    /// Time of the last frame.
    seen_ms: u64,
    speaking: bool,
    /// Not speaking: since when the score is at or above the activation threshold.
    above_since: Option<u64>,
    /// Speaking: since when the score is below the release threshold.
    below_since: Option<u64>,
    /// Speaking and not dominant: since when the score exceeds `ratio` times the dominant's.
    beats_since: Option<u64>,
}

impl Track {
    fn new(now_ms: u64) -> Self {
        Self {
            loudness: 0.0,
            voice: 0.0,
            updated_ms: now_ms.saturating_sub(FIRST_FRAME_MS),
            seen_ms: now_ms,
            speaking: false,
            above_since: None,
            below_since: None,
            beats_since: None,
        }
    }

    fn score(&self) -> f32 {
        (self.loudness * self.voice).clamp(0.0, 1.0)
    }

    /// Moves the averages to `now_ms` with zero input (silence).
    fn decay_to(&mut self, now_ms: u64, params: &Params) {
        let k = params.decay(now_ms.saturating_sub(self.updated_ms));
        self.loudness *= k;
        self.voice *= k;
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    /// Applies the activation and release rules at `now_ms`; `silent` forces a zero score.
    fn advance(&mut self, now_ms: u64, params: &Params, silent: bool) {
        let score = if silent { 0.0 } else { self.score() };
        if self.speaking {
            if score < params.release {
                let since = *self.below_since.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= params.release_ms {
                    self.speaking = false;
                    self.below_since = None;
                    self.beats_since = None;
                }
            } else {
                self.below_since = None;
            }
        } else if score >= params.activate {
            let since = *self.above_since.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= params.min_active_ms {
                self.speaking = true;
                self.above_since = None;
            }
        } else {
            self.above_since = None;
        }
    }
}

/// Active speaker detection for one call: feed it audio levels, tick it, tell participants what
/// it returns. `P` is the participant id (the relay uses the user id, an `Arc<str>`).
#[derive(Debug, Clone)]
pub struct SpeakerDetector<P> {
    config: SpeakerConfig,
    params: Params,
    /// Linear amplitude of each level, so a frame costs no `powf`.
    amplitudes: [f32; MAX_LEVEL as usize + 1],
    tracks: HashMap<P, Track>,
    dominant: Option<P>,
    /// The dominant's score as of its last frame (or tick).
    dominant_score: f32,
    /// What the last `Some` from `tick` said.
    published: Speakers<P>,
}

impl<P: Clone + Eq + Hash + Ord> Default for SpeakerDetector<P> {
    fn default() -> Self {
        Self::new(SpeakerConfig::default())
    }
}

impl<P: Clone + Eq + Hash + Ord> SpeakerDetector<P> {
    /// A detector with nobody in it.
    pub fn new(config: SpeakerConfig) -> Self {
        Self {
            params: Params::new(&config),
            config,
            amplitudes: std::array::from_fn(|level| amplitude(level as u8)),
            tracks: HashMap::new(),
            dominant: None,
            dominant_score: 0.0,
            published: Speakers::default(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &SpeakerConfig {
        &self.config
    }

    /// What the last `Some` from [`tick`](Self::tick) said (empty before): the state to send a
    /// participant who joins.
    pub fn current(&self) -> &Speakers<P> {
        &self.published
    }

    /// Records one audio frame: its RFC 6464 `level` (0 = loudest, 127 = silence; larger values
    /// count as 127) and voice-activity flag (`None`: voiced when at least as loud as the release
    /// threshold). O(1); allocates only the first time a participant is seen.
    pub fn observe(&mut self, participant: &P, level: u8, voice: Option<bool>, now_ms: u64) {
        let level = level.min(MAX_LEVEL);
        let voiced = voice.unwrap_or(level <= self.params.release_dbov);
        let amplitude = self.amplitudes[usize::from(level)];
        let params = &self.params;
        let track = match self.tracks.get_mut(participant) {
            Some(track) => track,
            None => self.tracks.entry(participant.clone()).or_insert_with(|| Track::new(now_ms)),
        };

        // The frame covers the time since the previous update, up to MAX_FRAME_MS; the rest of a
        // longer gap was silence.
        let elapsed = now_ms.saturating_sub(track.updated_ms);
        let covered = elapsed.min(MAX_FRAME_MS);
        track.decay_to(now_ms - covered, params);
        let weight = 1.0 - params.decay(covered);
        track.loudness += weight * (amplitude - track.loudness);
        track.voice += weight * (f32::from(u8::from(voiced)) - track.voice);
        track.updated_ms = track.updated_ms.max(now_ms);
        track.seen_ms = track.seen_ms.max(now_ms);
        track.advance(now_ms, params, false);

        if let Some(dominant) = &self.dominant {
            if dominant == participant {
                self.dominant_score = track.score();
            } else if track.speaking && track.score() > params.ratio * self.dominant_score {
                track.beats_since.get_or_insert(now_ms);
            } else {
                track.beats_since = None;
            }
        }
    }

    /// Forgets a participant (left the call, or unpublished its audio). A dominant speaker
    /// removed is replaced by the loudest remaining speaker at the next tick. `_now_ms` is taken
    /// for symmetry with the other calls; removal is immediate.
    pub fn remove(&mut self, participant: &P, _now_ms: u64) {
        self.tracks.remove(participant);
        if self.dominant.as_ref() == Some(participant) {
            self.dominant = None;
            self.dominant_score = 0.0;
        }
    }

    /// Applies timeouts and elects the dominant speaker; returns what participants should be
    /// told when the speaker list (ids and order) or the dominant changed since the last `Some`,
    /// `None` otherwise. Call it every 100-250 ms. O(n log n) in the participants.
    pub fn tick(&mut self, now_ms: u64) -> Option<Speakers<P>> {
        let params = &self.params;
        for track in self.tracks.values_mut() {
            let stale = now_ms.saturating_sub(track.seen_ms) >= params.silence_after_ms;
            if stale {
                // Silent since its last frame.
                track.decay_to(now_ms, params);
                track.above_since = None;
                track.beats_since = None;
                if track.speaking {
                    track.below_since = Some(track.below_since.map_or(track.seen_ms, |b| b.min(track.seen_ms)));
                }
            }
            track.advance(now_ms, params, stale);
        }

        let next = match self.dominant.as_ref().and_then(|d| self.tracks.get(d).filter(|t| t.speaking).map(|t| (d, t)))
        {
            None => self.loudest(|_, _| true),
            Some((dominant, track)) => {
                self.dominant_score = track.score();
                let switch_after_ms = params.switch_after_ms;
                let challenger = self.loudest(|id, t| {
                    id != dominant && t.beats_since.is_some_and(|b| now_ms.saturating_sub(b) >= switch_after_ms)
                });
                challenger.or_else(|| Some(dominant.clone()))
            }
        };
        if next != self.dominant {
            self.dominant_score = next.as_ref().and_then(|d| self.tracks.get(d)).map_or(0.0, Track::score);
            self.dominant = next;
            for track in self.tracks.values_mut() {
                track.beats_since = None;
            }
        }

        let mut list: Vec<(&P, f32)> =
            self.tracks.iter().filter(|(_, t)| t.speaking).map(|(id, t)| (id, t.score())).collect();
        list.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let max = self.params.max_speakers;
        if list.len() > max {
            let at = self.dominant.as_ref().and_then(|d| list.iter().position(|(id, _)| *id == d));
            if let Some(at) = at.filter(|&at| at >= max && max > 0) {
                list.swap(max - 1, at);
            }
            list.truncate(max);
        }

        let unchanged = self.published.dominant == self.dominant
            && self.published.speakers.len() == list.len()
            && self.published.speakers.iter().zip(&list).all(|(s, (id, _))| s.participant == **id);
        if unchanged {
            return None;
        }
        self.published = Speakers {
            speakers: list.into_iter().map(|(id, level)| Speaker { participant: id.clone(), level }).collect(),
            dominant: self.dominant.clone(),
        };
        Some(self.published.clone())
    }

    /// The loudest speaker accepted by `filter` (ties: the smallest id).
    fn loudest(&self, filter: impl Fn(&P, &Track) -> bool) -> Option<P> {
        self.tracks
            .iter()
            .filter(|(id, t)| t.speaking && filter(id, t))
            .max_by(|a, b| a.1.score().total_cmp(&b.1.score()).then_with(|| b.0.cmp(a.0)))
            .map(|(id, _)| id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Detector = SpeakerDetector<&'static str>;

    const FRAME_MS: u64 = 20;
    const TICK_MS: u64 = 100;

    /// Runs `[from, to)` in 20 ms frames: at each frame time `frames(t)` gives the frames sent
    /// (participant, level, voice), and every 100 ms the detector is ticked; returns the
    /// `Some`s with their times.
    fn run(
        det: &mut Detector,
        from: u64,
        to: u64,
        mut frames: impl FnMut(u64) -> Vec<(&'static str, u8, Option<bool>)>,
    ) -> Vec<(u64, Speakers<&'static str>)> {
        let mut events = Vec::new();
        let mut t = from;
        while t < to {
            for (p, level, voice) in frames(t) {
                det.observe(&p, level, voice, t);
            }
            if t.is_multiple_of(TICK_MS)
                && let Some(s) = det.tick(t)
            {
                events.push((t, s));
            }
            t += FRAME_MS;
        }
        events
    }

    fn ids(s: &Speakers<&'static str>) -> Vec<&'static str> {
        s.speakers.iter().map(|s| s.participant).collect()
    }

    fn talk(p: &'static str, level: u8) -> (&'static str, u8, Option<bool>) {
        (p, level, Some(true))
    }

    fn quiet(p: &'static str) -> (&'static str, u8, Option<bool>) {
        (p, 127, Some(false))
    }

    /// The successive dominant speakers in `events` (only changes).
    fn dominants(events: &[(u64, Speakers<&'static str>)]) -> Vec<(u64, Option<&'static str>)> {
        let mut out: Vec<(u64, Option<&'static str>)> = Vec::new();
        for (t, s) in events {
            if out.last().is_none_or(|(_, d)| *d != s.dominant) {
                out.push((*t, s.dominant));
            }
        }
        out
    }

    #[test]
    fn single_speaker_detected_within_min_active_plus_smoothing() {
        let config = SpeakerConfig::default();
        let limit = config.min_active_ms + config.smoothing_ms;
        let mut det = Detector::new(config.clone());
        let events = run(&mut det, 0, 2000, |_| vec![talk("a", 20), quiet("b")]);
        let (t, first) = &events[0];
        assert!(*t >= config.min_active_ms && *t <= limit, "detected at {t} ms, limit {limit}");
        assert_eq!(ids(first), ["a"]);
        assert_eq!(first.dominant, Some("a"));
        assert!(first.speakers[0].level > 0.0 && first.speakers[0].level <= 1.0);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(det.current(), first);
    }

    #[test]
    fn cough_never_becomes_speaker_or_dominant() {
        // Someone else is speaking: a 40 ms burst at full scale from b.
        let mut det = Detector::default();
        let events = run(&mut det, 0, 3000, |t| {
            let b = if (1000..1040).contains(&t) { talk("b", 0) } else { quiet("b") };
            vec![talk("a", 20), b]
        });
        assert!(events.iter().all(|(_, s)| s.dominant == Some("a") && ids(s) == ["a"]), "{events:?}");

        // Nobody is speaking, and the cough carries no voice flag.
        let mut det = Detector::default();
        let events = run(&mut det, 0, 3000, |t| {
            let b = if (1000..1040).contains(&t) { ("b", 0, None) } else { ("b", 127, None) };
            vec![quiet("a"), b]
        });
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn alternating_speakers_switch_once_per_turn() {
        let mut det = Detector::default();
        let turns = 6;
        let events = run(&mut det, 0, turns * 1000, |t| {
            if (t / 1000).is_multiple_of(2) { vec![talk("a", 20), quiet("b")] } else { vec![quiet("a"), talk("b", 20)] }
        });
        let changes = dominants(&events);
        let who: Vec<_> = changes.iter().map(|(_, d)| *d).collect();
        assert_eq!(who, [Some("a"), Some("b"), Some("a"), Some("b"), Some("a"), Some("b")], "{changes:?}");
        // Each switch happens in its own turn, after the challenger held on for switch_after_ms.
        for (turn, (t, _)) in changes.iter().enumerate().skip(1) {
            let start = turn as u64 * 1000;
            assert!(*t >= start + 500 && *t < start + 1000, "switch {turn} at {t}");
        }
    }

    #[test]
    fn similar_challenger_does_not_take_over() {
        // b is ~1.1x louder than a, under the 1.5x margin: both are speakers, a stays dominant.
        let mut det = Detector::default();
        let events =
            run(&mut det, 0, 5000, |t| if t < 1000 { vec![talk("a", 20)] } else { vec![talk("a", 20), talk("b", 19)] });
        assert!(events.iter().all(|(_, s)| s.dominant == Some("a")), "{events:?}");
        assert_eq!(ids(&events.last().unwrap().1), ["b", "a"]);
    }

    #[test]
    fn louder_challenger_takes_over_after_switch_after_ms() {
        let config = SpeakerConfig::default();
        let mut det = Detector::new(config.clone());
        let start = 2000;
        let events =
            run(
                &mut det,
                0,
                5000,
                |t| if t < start { vec![talk("a", 30)] } else { vec![talk("a", 30), talk("b", 15)] },
            );
        let changes = dominants(&events);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(changes[0].1, Some("a"));
        let (switched, who) = changes[1];
        assert_eq!(who, Some("b"));
        assert!(switched >= start + config.switch_after_ms && switched <= start + 1000, "switched at {switched}");
        // Before the switch, b was listed first (louder) while a stayed dominant.
        let before: Vec<_> = events.iter().filter(|(t, _)| *t >= start && *t < switched).collect();
        assert!(before.iter().any(|(_, s)| ids(s) == ["b", "a"] && s.dominant == Some("a")), "{events:?}");
    }

    #[test]
    fn silent_dominant_released_after_release_ms_then_other_takes_over() {
        let config = SpeakerConfig::default();

        // a alone, then sending silence frames from 2000: released, no dominant.
        let mut det = Detector::new(config.clone());
        let events = run(&mut det, 0, 5000, |t| if t < 2000 { vec![talk("a", 20)] } else { vec![quiet("a")] });
        let changes = dominants(&events);
        assert_eq!(changes.iter().map(|(_, d)| *d).collect::<Vec<_>>(), [Some("a"), None]);
        let released = changes[1].0;
        assert!(released >= 2000 + config.release_ms && released <= 2000 + 1500, "released at {released}");
        assert!(ids(&events.last().unwrap().1).is_empty());

        // a and a quieter b; a stops sending at 2000 (muted): silent after silence_after_ms,
        // released, and b, a speaker all along, takes over.
        let mut det = Detector::new(config.clone());
        let events =
            run(&mut det, 0, 4000, |t| if t < 2000 { vec![talk("a", 20), talk("b", 36)] } else { vec![talk("b", 36)] });
        let changes = dominants(&events);
        assert_eq!(changes.iter().map(|(_, d)| *d).collect::<Vec<_>>(), [Some("a"), Some("b")], "{events:?}");
        let took_over = changes[1].0;
        assert!(
            took_over >= 2000 + config.release_ms.max(config.silence_after_ms) - FRAME_MS && took_over <= 2000 + 700,
            "b took over at {took_over}"
        );
        assert_eq!(ids(&events.last().unwrap().1), ["b"]);
    }

    #[test]
    fn tick_returns_none_when_nothing_changed() {
        let mut det = Detector::default();
        assert_eq!(det.tick(0), None);
        assert_eq!(det.tick(0), None);
        let events = run(&mut det, 0, 5000, |_| vec![talk("a", 20), quiet("b")]);
        assert_eq!(events.len(), 1, "one change (a starts speaking), then steady: {events:?}");
        assert_eq!(det.tick(4980), None);
        assert_eq!(det.tick(4980), None);
    }

    #[test]
    fn removal_drops_participant_and_replaces_dominant() {
        let mut det = Detector::default();
        let events = run(&mut det, 0, 2000, |_| vec![talk("a", 20), talk("b", 30)]);
        assert_eq!(events.last().unwrap().1.dominant, Some("a"));
        assert_eq!(ids(&events.last().unwrap().1), ["a", "b"]);

        det.remove(&"a", 2000);
        let s = det.tick(2000).expect("a was removed");
        assert_eq!(ids(&s), ["b"]);
        assert_eq!(s.dominant, Some("b"));

        det.remove(&"b", 2100);
        let s = det.tick(2100).expect("b was removed");
        assert!(s.speakers.is_empty());
        assert_eq!(s.dominant, None);

        det.remove(&"nobody", 2200);
        assert_eq!(det.tick(2200), None);
    }

    #[test]
    fn max_speakers_cap_and_ordering() {
        let mut det = Detector::default();
        let levels = [("p10", 10), ("p20", 20), ("p30", 30), ("p25", 25), ("p15", 15)];
        run(&mut det, 0, 2000, |_| levels.iter().map(|&(p, l)| talk(p, l)).collect());
        let s = det.current();
        assert_eq!(ids(s), ["p10", "p15", "p20"]);
        assert_eq!(s.dominant, Some("p10"));
        assert!(s.speakers.windows(2).all(|w| w[0].level >= w[1].level), "{s:?}");
        assert!(s.speakers.iter().all(|s| (0.0..=1.0).contains(&s.level)), "{s:?}");
    }

    #[test]
    fn dominant_always_listed() {
        // One slot: a is dominant; b louder (but not for long enough to take over) does not push
        // a out of the list.
        let config = SpeakerConfig { max_speakers: 1, ..SpeakerConfig::default() };
        let mut det = Detector::new(config);
        run(&mut det, 0, 1000, |_| vec![talk("a", 30)]);
        run(&mut det, 1000, 1400, |_| vec![talk("a", 30), talk("b", 15)]);
        assert_eq!(ids(det.current()), ["a"]);
        assert_eq!(det.current().dominant, Some("a"));
        run(&mut det, 1400, 3000, |_| vec![talk("a", 30), talk("b", 15)]);
        assert_eq!(ids(det.current()), ["b"]);
        assert_eq!(det.current().dominant, Some("b"));
    }

    #[test]
    fn out_of_range_levels_are_clamped() {
        let mut det = Detector::default();
        let events = run(&mut det, 0, 2000, |t| vec![("a", 128 + (t % 128) as u8, None), ("b", 255, Some(true))]);
        assert!(events.is_empty(), "above 127 is silence: {events:?}");
        // Time going backwards or jumping far does not panic either.
        det.observe(&"a", 255, Some(true), 0);
        det.observe(&"a", 0, Some(true), u64::MAX);
        det.tick(1);
        det.tick(u64::MAX);
        det.observe(&"c", 0, None, 0);
        assert_eq!(det.tick(0), None);
    }

    #[test]
    fn loud_frames_without_voice_do_not_speak() {
        let mut det = Detector::default();
        let events = run(&mut det, 0, 2000, |_| vec![("music", 5, Some(false))]);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn smoothing_follows_elapsed_time_not_frame_count() {
        // The same voice in 10 ms, 20 ms and 60 ms frames is detected at the same tick.
        let detect = |frame_ms: u64| {
            let mut det = Detector::default();
            for t in (0..2000u64).step_by(10) {
                if t.is_multiple_of(frame_ms) {
                    det.observe(&"a", 25, Some(true), t);
                }
                if t.is_multiple_of(TICK_MS) && det.tick(t).is_some() {
                    return t;
                }
            }
            panic!("never detected with {frame_ms} ms frames");
        };
        let at = detect(20);
        assert_eq!(detect(10), at);
        assert!(detect(60).abs_diff(at) <= TICK_MS);
    }
}
