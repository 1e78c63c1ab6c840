//! Call quality: the reports clients send during a call (RTT, loss, jitter, bitrates), their
//! per-call aggregates, and flags for the problems users notice.
//!
//! Pure: [`CallQuality::report`] takes the report and `now_ms` and returns the flag changes to
//! announce; the relay delivers them, counts them in metrics and stores
//! [`CallQuality::summary`] with the call's history. docs/calls.md ("Quality") is the same for
//! app developers.
//!
//! Why flags over the mean of the last few reports, with separate raise and clear thresholds:
//! network numbers are noisy, and a flag that blinks on and off with every report is useless to
//! show. A flag is raised when the window's mean crosses the raise threshold and cleared only
//! when it crosses back past the clear threshold, so each problem is announced once when it
//! starts and once when it ends.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::history::MAX_PARTICIPANTS;
use super::types::Media;

/// Largest accepted RTT and jitter (a minute: anything above is a broken measurement).
pub const MAX_DELAY_MS: f64 = 60_000.0;
/// Largest accepted bitrate (kbit/s): 10 Gbit/s.
pub const MAX_KBPS: f64 = 10_000_000.0;

/// One participant's measurements since their previous report, as the client's WebRTC stats
/// (or its own transport) give them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Round-trip time, milliseconds.
    pub rtt_ms: f64,
    /// Fraction of the packets sent to this participant that were lost, 0-1.
    pub loss: f64,
    /// Receive jitter, milliseconds.
    pub jitter_ms: f64,
    /// What the participant sends, kbit/s.
    pub send_kbps: f64,
    /// What the participant receives, kbit/s.
    pub recv_kbps: f64,
}

/// Thresholds and rate (`[calls.quality]`). The defaults are the documented ones.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QualityConfig {
    /// A participant's reports closer together than this are refused (`report_too_frequent`).
    pub min_interval_ms: u64,
    /// Flags look at the mean of this many latest reports; none is raised before there are
    /// this many.
    pub window: usize,
    /// `high_loss` is raised above this mean loss...
    pub high_loss: f64,
    /// ...and cleared below this one.
    pub high_loss_clear: f64,
    /// `high_latency` is raised above this mean RTT (ms)...
    pub high_latency_ms: f64,
    /// ...and cleared below this one.
    pub high_latency_clear_ms: f64,
    /// Video calls: `low_bitrate` is raised below this mean receive bitrate (kbit/s)...
    pub low_bitrate_kbps: f64,
    /// ...and cleared above this one.
    pub low_bitrate_clear_kbps: f64,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            min_interval_ms: 1000,
            window: 3,
            high_loss: 0.05,
            high_loss_clear: 0.02,
            high_latency_ms: 300.0,
            high_latency_clear_ms: 250.0,
            low_bitrate_kbps: 150.0,
            low_bitrate_clear_kbps: 200.0,
        }
    }
}

impl QualityConfig {
    /// What is wrong with the thresholds, if anything: `(key under [calls.quality], problem)`.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        let finite = [
            self.high_loss,
            self.high_loss_clear,
            self.high_latency_ms,
            self.high_latency_clear_ms,
            self.low_bitrate_kbps,
            self.low_bitrate_clear_kbps,
        ]
        .iter()
        .all(|v| v.is_finite() && *v >= 0.0);
        if !(1..=100).contains(&self.window) {
            Some(("window", "must be in 1..=100"))
        } else if !finite {
            Some(("high_loss", "thresholds must be finite and not negative"))
        } else if self.high_loss > 1.0 || self.high_loss_clear >= self.high_loss {
            Some(("high_loss_clear", "must be below high_loss, which is at most 1"))
        } else if self.high_latency_clear_ms >= self.high_latency_ms {
            Some(("high_latency_clear_ms", "must be below high_latency_ms"))
        } else if self.low_bitrate_clear_kbps <= self.low_bitrate_kbps {
            Some(("low_bitrate_clear_kbps", "must be above low_bitrate_kbps"))
        } else {
            None
        }
    }
}

/// A problem users notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    HighLoss,
    HighLatency,
    /// Video calls only: the participant receives too little for usable video.
    LowBitrate,
}

impl Flag {
    pub const ALL: [Flag; 3] = [Flag::HighLoss, Flag::HighLatency, Flag::LowBitrate];

    /// The documented name.
    pub fn code(self) -> &'static str {
        match self {
            Flag::HighLoss => "high_loss",
            Flag::HighLatency => "high_latency",
            Flag::LowBitrate => "low_bitrate",
        }
    }
}

/// A flag raised or cleared for a participant: what to tell the call's participants.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagChange {
    pub user: String,
    pub flag: Flag,
    /// Raised (`true`) or cleared.
    pub raised: bool,
    /// The window's mean that crossed the threshold (loss fraction, RTT ms or kbit/s).
    pub value: f64,
}

/// Why a report was refused. A refused report changes nothing but the participant's refusal
/// count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QualityError {
    #[error("{field} {problem}")]
    BadReport { field: &'static str, problem: &'static str },
    #[error("reports must be at least {min_interval_ms} ms apart")]
    TooFrequent { min_interval_ms: u64 },
    #[error("more than {MAX_PARTICIPANTS} participants reported")]
    TooManyParticipants,
}

impl QualityError {
    /// The documented error code (docs/calls.md).
    pub fn code(&self) -> &'static str {
        match self {
            QualityError::BadReport { .. } => "bad_report",
            QualityError::TooFrequent { .. } => "report_too_frequent",
            QualityError::TooManyParticipants => "too_many_participants",
        }
    }
}

impl Report {
    /// Refuses NaN, infinities, negative values and values past the bounds.
    pub fn check(&self) -> Result<(), QualityError> {
        let fields = [
            ("rtt_ms", self.rtt_ms, MAX_DELAY_MS),
            ("loss", self.loss, 1.0),
            ("jitter_ms", self.jitter_ms, MAX_DELAY_MS),
            ("send_kbps", self.send_kbps, MAX_KBPS),
            ("recv_kbps", self.recv_kbps, MAX_KBPS),
        ];
        for (field, value, max) in fields {
            let problem = if !value.is_finite() {
                "must be a finite number"
            } else if value < 0.0 {
                "must not be negative"
            } else if value > max {
                "is out of range"
            } else {
                continue;
            };
            return Err(QualityError::BadReport { field, problem });
        }
        Ok(())
    }

    fn values(&self) -> [f64; 5] {
        [self.rtt_ms, self.loss, self.jitter_ms, self.send_kbps, self.recv_kbps]
    }
}

/// One measurement over the call: the latest value, the mean, the lowest and the highest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub last: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// A participant's quality over the call, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantQuality {
    pub user: String,
    /// Reports accepted.
    pub samples: u64,
    /// Reports refused (bad values, too frequent).
    pub refused: u64,
    pub rtt_ms: Aggregate,
    pub loss: Aggregate,
    pub jitter_ms: Aggregate,
    pub send_kbps: Aggregate,
    pub recv_kbps: Aggregate,
    /// How many times each flag was raised (flags never raised are absent).
    pub flags_raised: BTreeMap<Flag, u32>,
}

/// The call's quality for its history record: participants that sent at least one accepted
/// report, by user name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualitySummary {
    pub participants: Vec<ParticipantQuality>,
}

/// Running aggregates of one measurement.
#[derive(Debug, Clone, Copy)]
struct Running {
    last: f64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Running {
    fn new(v: f64) -> Running {
        Running { last: v, sum: v, min: v, max: v }
    }

    fn add(&mut self, v: f64) {
        self.last = v;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    fn aggregate(&self, samples: u64) -> Aggregate {
        Aggregate { last: self.last, mean: self.sum / samples.max(1) as f64, min: self.min, max: self.max }
    }
}

#[derive(Debug, Default)]
struct Participant {
    samples: u64,
    refused: u64,
    last_report_ms: Option<u64>,
    /// rtt, loss, jitter, send, recv; `None` before the first accepted report.
    running: Option<[Running; 5]>,
    window: VecDeque<Report>,
    active: Vec<Flag>,
    raised: BTreeMap<Flag, u32>,
}

/// A call's quality reports and flags.
#[derive(Debug)]
pub struct CallQuality {
    config: QualityConfig,
    media: Media,
    participants: HashMap<String, Participant>,
}

impl CallQuality {
    pub fn new(config: QualityConfig, media: Media) -> CallQuality {
        CallQuality { config, media, participants: HashMap::new() }
    }

    /// Takes a participant's report; returns the flags it raised or cleared for them (most
    /// reports: none). A refused report is counted and otherwise ignored.
    pub fn report(&mut self, user: &str, report: &Report, now_ms: u64) -> Result<Vec<FlagChange>, QualityError> {
        if !self.participants.contains_key(user) && self.participants.len() >= MAX_PARTICIPANTS {
            return Err(QualityError::TooManyParticipants);
        }
        let config = self.config;
        let p = self.participants.entry(user.to_owned()).or_default();
        let too_soon = p.last_report_ms.is_some_and(|last| now_ms < last.saturating_add(config.min_interval_ms));
        let checked = if too_soon {
            Err(QualityError::TooFrequent { min_interval_ms: config.min_interval_ms })
        } else {
            report.check()
        };
        if let Err(e) = checked {
            p.refused += 1;
            return Err(e);
        }
        p.last_report_ms = Some(now_ms);
        p.samples += 1;
        let values = report.values();
        match &mut p.running {
            Some(running) => running.iter_mut().zip(values).for_each(|(r, v)| r.add(v)),
            None => p.running = Some(values.map(Running::new)),
        }
        p.window.push_back(*report);
        if p.window.len() > config.window {
            p.window.pop_front();
        }
        let full = p.window.len() >= config.window;
        let mut changes = Vec::new();
        for flag in Flag::ALL {
            let Some(value) = mean(&p.window, flag) else { continue };
            let (above_raise, below_clear) = match flag {
                Flag::HighLoss => (value > config.high_loss, value < config.high_loss_clear),
                Flag::HighLatency => (value > config.high_latency_ms, value < config.high_latency_clear_ms),
                Flag::LowBitrate if self.media == Media::Video => {
                    (value < config.low_bitrate_kbps, value > config.low_bitrate_clear_kbps)
                }
                Flag::LowBitrate => continue,
            };
            let active = p.active.contains(&flag);
            if !active && full && above_raise {
                p.active.push(flag);
                *p.raised.entry(flag).or_default() += 1;
                changes.push(FlagChange { user: user.to_owned(), flag, raised: true, value });
            } else if active && below_clear {
                p.active.retain(|f| *f != flag);
                changes.push(FlagChange { user: user.to_owned(), flag, raised: false, value });
            }
        }
        Ok(changes)
    }

    /// The flags raised for the user now.
    pub fn active(&self, user: &str) -> Vec<Flag> {
        let mut flags = self.participants.get(user).map(|p| p.active.clone()).unwrap_or_default();
        flags.sort_unstable();
        flags
    }

    /// The call's quality so far, for its history record; `None` when nobody reported.
    pub fn summary(&self) -> Option<QualitySummary> {
        let mut participants: Vec<ParticipantQuality> = self
            .participants
            .iter()
            .filter_map(|(user, p)| {
                let [rtt, loss, jitter, send, recv] = p.running?.map(|r| r.aggregate(p.samples));
                Some(ParticipantQuality {
                    user: user.clone(),
                    samples: p.samples,
                    refused: p.refused,
                    rtt_ms: rtt,
                    loss,
                    jitter_ms: jitter,
                    send_kbps: send,
                    recv_kbps: recv,
                    flags_raised: p.raised.clone(),
                })
            })
            .collect();
        participants.sort_by(|a, b| a.user.cmp(&b.user));
        (!participants.is_empty()).then_some(QualitySummary { participants })
    }
}

/// The window's mean of what the flag looks at.
fn mean(window: &VecDeque<Report>, flag: Flag) -> Option<f64> {
    if window.is_empty() {
        return None;
    }
    let pick = |r: &Report| match flag {
        Flag::HighLoss => r.loss,
        Flag::HighLatency => r.rtt_ms,
        Flag::LowBitrate => r.recv_kbps,
    };
    Some(window.iter().map(pick).sum::<f64>() / window.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Report {
        Report { rtt_ms: 80.0, loss: 0.0, jitter_ms: 5.0, send_kbps: 900.0, recv_kbps: 800.0 }
    }

    fn with(f: impl FnOnce(&mut Report)) -> Report {
        let mut r = good();
        f(&mut r);
        r
    }

    /// Feeds reports one second apart from `start_ms`; returns every change, in order.
    fn feed(q: &mut CallQuality, user: &str, start_ms: u64, reports: &[Report]) -> Vec<(Flag, bool)> {
        let mut out = Vec::new();
        for (i, r) in reports.iter().enumerate() {
            let changes = q.report(user, r, start_ms + 1000 * i as u64).unwrap();
            out.extend(changes.into_iter().map(|c| (c.flag, c.raised)));
        }
        out
    }

    fn loss(v: f64) -> Report {
        with(|r| r.loss = v)
    }

    #[test]
    fn good_reports_raise_nothing_and_aggregate() {
        let mut q = CallQuality::new(QualityConfig::default(), Media::Video);
        assert_eq!(q.summary(), None, "nobody reported yet");
        let changes = feed(&mut q, "alice", 0, &[good(), with(|r| r.rtt_ms = 120.0), with(|r| r.rtt_ms = 40.0)]);
        assert_eq!(changes, vec![]);
        let summary = q.summary().unwrap();
        let a = &summary.participants[0];
        assert_eq!((a.user.as_str(), a.samples, a.refused), ("alice", 3, 0));
        assert_eq!(a.rtt_ms, Aggregate { last: 40.0, mean: 80.0, min: 40.0, max: 120.0 });
        assert_eq!(a.recv_kbps.mean, 800.0);
        assert!(a.flags_raised.is_empty());
    }

    #[test]
    fn high_loss_waits_for_a_full_window_then_is_raised_once() {
        let mut q = CallQuality::new(QualityConfig::default(), Media::Audio);
        // Two bad reports are not yet a full window of three.
        assert_eq!(feed(&mut q, "alice", 0, &[loss(0.3), loss(0.3)]), vec![]);
        assert_eq!(feed(&mut q, "alice", 2000, &[loss(0.3)]), vec![(Flag::HighLoss, true)]);
        assert_eq!(q.active("alice"), vec![Flag::HighLoss]);
        // Still bad: nothing new.
        assert_eq!(feed(&mut q, "alice", 3000, &[loss(0.2), loss(0.5)]), vec![]);
    }

    #[test]
    fn high_loss_clears_only_below_the_clear_threshold() {
        let mut q = CallQuality::new(QualityConfig::default(), Media::Audio);
        assert_eq!(feed(&mut q, "alice", 0, &[loss(0.1), loss(0.1), loss(0.1)]), vec![(Flag::HighLoss, true)]);
        // Mean 3 %: below the 5 % that raises it, above the 2 % that clears it.
        assert_eq!(feed(&mut q, "alice", 3000, &[loss(0.03), loss(0.03), loss(0.03)]), vec![]);
        assert_eq!(q.active("alice"), vec![Flag::HighLoss]);
        // (3 + 3 + 1) / 3 = 2.3 %: still not below 2 %.
        assert_eq!(feed(&mut q, "alice", 6000, &[loss(0.01)]), vec![]);
        // (3 + 1 + 0) / 3 = 1.3 %: cleared, once.
        assert_eq!(feed(&mut q, "alice", 7000, &[loss(0.0)]), vec![(Flag::HighLoss, false)]);
        assert_eq!(feed(&mut q, "alice", 8000, &[loss(0.0), loss(0.0)]), vec![], "cleared once, not again");
        assert_eq!(q.active("alice"), vec![]);
    }

    #[test]
    fn hysteresis_between_raise_and_clear_holds_the_state() {
        let mut q = CallQuality::new(QualityConfig::default(), Media::Audio);
        // Hovering at 4 % never raises (not above 5 %) ...
        assert_eq!(feed(&mut q, "alice", 0, &[loss(0.04); 6]), vec![]);
        // ... and once raised, hovering at 4 % never clears (not below 2 %).
        assert_eq!(feed(&mut q, "alice", 6000, &[loss(0.2); 3]), vec![(Flag::HighLoss, true)]);
        assert_eq!(feed(&mut q, "alice", 9000, &[loss(0.04); 6]), vec![]);
        // A second episode counts a second raise.
        assert_eq!(feed(&mut q, "alice", 15_000, &[loss(0.0); 3]), vec![(Flag::HighLoss, false)]);
        assert_eq!(feed(&mut q, "alice", 18_000, &[loss(0.5); 3]), vec![(Flag::HighLoss, true)]);
        let summary = q.summary().unwrap();
        assert_eq!(summary.participants[0].flags_raised, BTreeMap::from([(Flag::HighLoss, 2)]));
    }

    #[test]
    fn high_latency_is_raised_and_cleared_with_hysteresis() {
        let mut q = CallQuality::new(QualityConfig::default(), Media::Audio);
        let rtt = |v: f64| with(|r| r.rtt_ms = v);
        assert_eq!(feed(&mut q, "bob", 0, &[rtt(400.0), rtt(400.0), rtt(400.0)]), vec![(Flag::HighLatency, true)]);
        assert_eq!(feed(&mut q, "bob", 3000, &[rtt(280.0); 3]), vec![], "280 ms is between 250 and 300");
        assert_eq!(feed(&mut q, "bob", 6000, &[rtt(100.0)]), vec![(Flag::HighLatency, false)]);
        assert_eq!(q.active("bob"), vec![]);
    }

    #[test]
    fn low_bitrate_applies_to_video_calls_only() {
        let slow = with(|r| r.recv_kbps = 50.0);
        let mut audio = CallQuality::new(QualityConfig::default(), Media::Audio);
        assert_eq!(feed(&mut audio, "bob", 0, &[slow; 4]), vec![]);
        let mut video = CallQuality::new(QualityConfig::default(), Media::Video);
        assert_eq!(feed(&mut video, "bob", 0, &[slow; 4]), vec![(Flag::LowBitrate, true)]);
        let fine = with(|r| r.recv_kbps = 180.0);
        assert_eq!(feed(&mut video, "bob", 4000, &[fine; 3]), vec![], "180 kbit/s is between 150 and 200");
        let fast = with(|r| r.recv_kbps = 1000.0);
        assert_eq!(feed(&mut video, "bob", 7000, &[fast]), vec![(Flag::LowBitrate, false)]);
    }

    #[test]
    fn flags_are_per_participant_and_carry_the_value() {
        let mut q = CallQuality::new(QualityConfig::default(), Media::Audio);
        feed(&mut q, "bob", 0, &[good(); 3]);
        let mut last = Vec::new();
        for i in 0..3 {
            last = q.report("alice", &loss(0.09), i * 1000).unwrap();
        }
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].user, "alice");
        assert!((last[0].value - 0.09).abs() < 1e-9);
        assert_eq!(q.active("bob"), vec![]);
        assert_eq!(
            q.summary().unwrap().participants.iter().map(|p| p.user.as_str()).collect::<Vec<_>>(),
            ["alice", "bob"]
        );
    }

    #[test]
    fn bad_values_are_refused_and_change_nothing() {
        let mut q = CallQuality::new(QualityConfig::default(), Media::Video);
        let bad = [
            (with(|r| r.rtt_ms = f64::NAN), "rtt_ms", "must be a finite number"),
            (with(|r| r.loss = -0.1), "loss", "must not be negative"),
            (with(|r| r.loss = 1.5), "loss", "is out of range"),
            (with(|r| r.jitter_ms = f64::INFINITY), "jitter_ms", "must be a finite number"),
            (with(|r| r.send_kbps = 1e300), "send_kbps", "is out of range"),
            (with(|r| r.recv_kbps = -0.0 - 1.0), "recv_kbps", "must not be negative"),
            (with(|r| r.rtt_ms = MAX_DELAY_MS + 1.0), "rtt_ms", "is out of range"),
        ];
        for (i, (report, field, problem)) in bad.iter().enumerate() {
            let err = q.report("alice", report, i as u64 * 5000).unwrap_err();
            assert_eq!(err, QualityError::BadReport { field, problem }, "{report:?}");
            assert_eq!(err.code(), "bad_report");
        }
        assert_eq!(q.summary(), None, "no accepted report, no summary");
        q.report("alice", &good(), 100_000).unwrap();
        let a = &q.summary().unwrap().participants[0];
        assert_eq!((a.samples, a.refused), (1, bad.len() as u64));
        assert_eq!(a.rtt_ms.max, 80.0, "refused values are not aggregated");
        // The bounds themselves are fine.
        let edge = Report { rtt_ms: MAX_DELAY_MS, loss: 1.0, jitter_ms: 0.0, send_kbps: MAX_KBPS, recv_kbps: 0.0 };
        assert_eq!(edge.check(), Ok(()));
    }

    #[test]
    fn too_frequent_reports_are_refused() {
        let mut q = CallQuality::new(QualityConfig::default(), Media::Audio);
        q.report("alice", &good(), 10_000).unwrap();
        let err = q.report("alice", &loss(0.9), 10_999).unwrap_err();
        assert_eq!(err, QualityError::TooFrequent { min_interval_ms: 1000 });
        assert_eq!(err.code(), "report_too_frequent");
        assert_eq!(q.report("alice", &good(), 9_000).unwrap_err().code(), "report_too_frequent", "clock went back");
        q.report("bob", &good(), 10_500).unwrap();
        q.report("alice", &good(), 11_000).unwrap();
        let a = &q.summary().unwrap().participants[0];
        assert_eq!((a.samples, a.refused, a.loss.max), (2, 2, 0.0));
        // A flood of refused reports never raises anything.
        for t in 11_001..11_500 {
            assert!(q.report("alice", &loss(1.0), t).is_err());
        }
        assert_eq!(q.active("alice"), vec![]);
    }

    #[test]
    fn participants_are_bounded() {
        let mut q = CallQuality::new(QualityConfig::default(), Media::Audio);
        for i in 0..MAX_PARTICIPANTS {
            q.report(&format!("u{i}"), &good(), 0).unwrap();
        }
        assert_eq!(q.report("one-too-many", &good(), 0), Err(QualityError::TooManyParticipants));
        q.report("u0", &good(), 1000).unwrap();
    }

    #[test]
    fn a_window_of_one_follows_each_report() {
        let config = QualityConfig { window: 1, ..QualityConfig::default() };
        let mut q = CallQuality::new(config, Media::Audio);
        assert_eq!(
            feed(&mut q, "a", 0, &[loss(0.5), loss(0.0)]),
            vec![(Flag::HighLoss, true), (Flag::HighLoss, false)]
        );
    }

    #[test]
    fn the_summary_round_trips_as_json() {
        let mut q = CallQuality::new(QualityConfig::default(), Media::Video);
        feed(&mut q, "alice", 0, &[loss(0.25); 3]);
        let summary = q.summary().unwrap();
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["participants"][0]["flags_raised"], serde_json::json!({"high_loss": 1}));
        assert_eq!(json["participants"][0]["loss"]["mean"], serde_json::json!(0.25));
        assert_eq!(serde_json::from_value::<QualitySummary>(json).unwrap(), summary);
    }

    #[test]
    fn config_problems_name_the_key() {
        assert_eq!(QualityConfig::default().problem(), None);
        let bad = |f: fn(&mut QualityConfig)| {
            let mut c = QualityConfig::default();
            f(&mut c);
            c.problem().map(|(key, _)| key)
        };
        assert_eq!(bad(|c| c.window = 0), Some("window"));
        assert_eq!(bad(|c| c.high_loss_clear = 0.05), Some("high_loss_clear"));
        assert_eq!(bad(|c| c.high_loss = f64::NAN), Some("high_loss"));
        assert_eq!(bad(|c| c.high_latency_clear_ms = 400.0), Some("high_latency_clear_ms"));
        assert_eq!(bad(|c| c.low_bitrate_clear_kbps = 100.0), Some("low_bitrate_clear_kbps"));
    }
}
