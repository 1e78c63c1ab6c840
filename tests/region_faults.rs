//! A Redis region under faults (issue 22): three relay processes on one real `redis-server`
//! (append-only file, `appendfsync always`), a publisher and a subscriber on every node over
//! QUIC, WebSocket and WebTransport, all publishing into one room while
//! (a) a relay is SIGKILLed mid-stream and started again,
//! (b) Redis is SIGKILLed and started again with its data,
//! (c) Redis is SIGKILLed and started again without its data.
//!
//! What users rely on: every acked publish is readable exactly once, in order, by every
//! subscriber (live, or replayed after its reconnect) and in history; two clients never see two
//! different messages at one position; in (c) only, what is lost is announced by a new epoch
//! (the next `message`'s `position.epoch`, `recovered: false` on a rejoin; the Rust client's
//! `NotRecovered`). A publish made while Redis is down is refused with `store_unavailable`
//! (107, retryable) instead of hanging, and goes through once Redis is back.
//!
//! Each scenario also measures how long the region takes to be whole again (every publish made
//! before the fault ended acked, and held by every subscriber); `region_faults_figures` repeats
//! them for docs/performance.md:
//! `cargo test --test region_faults -- --ignored --nocapture region_faults_figures`.

mod common;
#[path = "common/process.rs"]
mod process;
#[path = "common/region.rs"]
mod region;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Transport, within};
use edgerelay::client::resilient::{Resilient, ResilientEvent};
use edgerelay::client::{Client, ClientError, ClientOptions};
use edgerelay::proto::{ErrorCode, Payload, Position};
use edgerelay::testing::RedisServer;
use region::{Acked, Cluster, fast, joined, publish_steadily};
use tokio_util::sync::CancellationToken;

/// Publishes per publisher per scenario, one every [`EVERY`].
const PER_PUBLISHER: usize = 100;
const EVERY: Duration = Duration::from_millis(10);
/// When in the stream the fault starts, at the earliest: every subscriber also has
/// [`BEFORE_FAULT`] messages by then.
const FAULT_AFTER: Duration = Duration::from_millis(400);
const BEFORE_FAULT: usize = 10;
/// How long a killed relay stays down.
const RELAY_DOWN: Duration = Duration::from_millis(500);
/// The nodes' `redis.command_timeout_ms`: a publish made while Redis is down is refused after
/// about 3-4 x this (docs/operations.md), so Redis stays down that long.
const COMMAND_TIMEOUT_MS: &str = "500";
/// Which node is killed in [`Fault::KillRelay`].
const VICTIM: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// A relay SIGKILLed mid-stream, started again on its ports and data directory.
    KillRelay,
    /// Redis SIGKILLed, started again from its append-only file.
    RedisKeepsData,
    /// Redis SIGKILLed, started again empty.
    RedisLosesData,
}

/// What one subscriber received, with when.
#[derive(Default)]
struct Log {
    messages: Vec<(Position, String, Instant)>,
    /// Each time it was told the room's history was lost (`NotRecovered`): from where messages
    /// continue, when, and how many messages it had received before.
    told: Vec<(Position, Instant, usize)>,
    /// Its connection was lost: the close code and reason.
    lost: Vec<(Option<ErrorCode>, String)>,
}

impl Log {
    /// When it held `position`: received it, or was told of a loss covering it (an older
    /// epoch, or an offset up to where messages continue in the new one; docs/protocol.md:
    /// the client reloads those from `history`).
    fn holds(&self, position: Position, last_epoch: u64) -> Option<Instant> {
        let received = self.messages.iter().find(|m| m.0 == position).map(|m| m.2);
        received.or_else(|| {
            self.told
                .iter()
                .find(|(from, _, _)| {
                    position.epoch != last_epoch || (from.epoch == position.epoch && position.offset <= from.offset)
                })
                .map(|t| t.1)
        })
    }
}

/// A subscriber reading its events into a [`Log`] until stopped.
struct Watch {
    log: Arc<Mutex<Log>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Resilient>,
}

fn watch(mut client: Resilient) -> Watch {
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = CancellationToken::new();
    let (into, stopped) = (log.clone(), stop.clone());
    let task = tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stopped.cancelled() => return client,
                event = client.next_event() => event,
            };
            let mut log = into.lock().unwrap();
            match event {
                Some(ResilientEvent::Message(m)) => log.messages.push((m.position, m.id, Instant::now())),
                Some(ResilientEvent::NotRecovered { position, .. }) => {
                    let received = log.messages.len();
                    log.told.push((position, Instant::now(), received));
                }
                Some(ResilientEvent::Disconnected { code, reason }) => log.lost.push((code, reason)),
                Some(_) => {}
                None => return client,
            }
        }
    });
    Watch { log, stop, task }
}

/// One scenario's outcome.
struct Outcome {
    /// From the fault's start (relay or Redis killed) until the region was whole again.
    from_start: Duration,
    /// From the fault's end (relay ready again, Redis answering) until the region was whole.
    from_end: Duration,
    /// How long the plain client's publish took to be refused while Redis was down.
    refused_after: Option<Duration>,
}

/// Whether `log` holds every acked message (see [`Log::holds`]).
fn complete(log: &Log, acks: &BTreeMap<String, Acked>, last_epoch: u64) -> bool {
    acks.values().all(|a| log.holds(a.position, last_epoch).is_some())
}

/// Runs one scenario in `room`: fresh clients on every node, publishing while `fault` happens;
/// asserts what users rely on and measures the recovery.
async fn scenario(cluster: &mut Cluster, redis: &RedisServer, fault: Fault, room: &str) -> Outcome {
    const SUBSCRIBERS: [Transport; 3] = [Transport::Quic, Transport::WebSocket, Transport::WebTransport];
    const PUBLISHERS: [Transport; 3] = [Transport::WebSocket, Transport::Quic, Transport::WebTransport];
    // A killed node answers nothing: a QUIC client that sends nothing notices at its idle
    // timeout (45 s by default), one that sends is reset by the node once it is back.
    let options = |sub: String| ClientOptions {
        quic_idle_timeout: Duration::from_secs(8),
        ..ClientOptions::new(cluster.token(&sub))
    };
    let mut watches = Vec::new();
    for (node, transport) in SUBSCRIBERS.into_iter().enumerate() {
        let targets = cluster.targets_from(transport, node);
        let mut s = Resilient::start_any(targets, options(format!("s{node}")), fast());
        s.join(room);
        joined(&mut s, room).await;
        watches.push(watch(s));
    }
    // A plain client (no retries of its own) that publishes while Redis is down.
    let plain = Client::connect(cluster.ws(2), options("plain".into())).await.expect("plain client connects");
    let mut publishing = Vec::new();
    for (node, transport) in PUBLISHERS.into_iter().enumerate() {
        let publisher =
            Resilient::start_any(cluster.targets_from(transport, node), options(format!("p{node}")), fast());
        let ids = (1..=PER_PUBLISHER).map(|i| format!("p{node}-{i}")).collect();
        publishing.push(publish_steadily(Arc::new(publisher), room, ids, EVERY));
    }

    tokio::time::sleep(FAULT_AFTER).await;
    within("messages before the fault", async {
        while watches.iter().any(|w| w.log.lock().unwrap().messages.len() < BEFORE_FAULT) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let started = Instant::now();
    let mut refused_after = None;
    match fault {
        Fault::KillRelay => {
            cluster.nodes[VICTIM].kill();
            tokio::time::sleep(RELAY_DOWN).await;
            cluster.nodes[VICTIM].start().await;
        }
        Fault::RedisKeepsData | Fault::RedisLosesData => {
            redis.kill();
            // Redis stays down until the relay refuses a publish: an answer, not a hang.
            let asked = Instant::now();
            let refused =
                tokio::time::timeout(Duration::from_secs(20), plain.publish(room, "plain-1", Payload::from("1")))
                    .await
                    .expect("a publish while Redis is down is answered");
            match refused {
                Err(ClientError::Rejected { code, .. }) => {
                    assert_eq!(code, ErrorCode::STORE_UNAVAILABLE);
                    assert!(code.is_retryable());
                }
                other => panic!("a publish while Redis is down: {other:?}"),
            }
            refused_after = Some(asked.elapsed());
            if fault == Fault::RedisKeepsData { redis.restart() } else { redis.restart_empty() }
                .expect("start redis-server again");
        }
    }
    let ended = Instant::now();

    let mut acks = BTreeMap::new();
    if fault != Fault::KillRelay {
        // The refused publish goes through, with its id, once Redis is back.
        let sent = Instant::now();
        let position = within("the refused publish once Redis is back", async {
            loop {
                match plain.publish(room, "plain-1", Payload::from("1")).await {
                    Ok(position) => return position,
                    Err(ClientError::Rejected { code, .. }) if code.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(err) => panic!("the refused publish once Redis is back: {err}"),
                }
            }
        })
        .await;
        acks.insert("plain-1".to_owned(), Acked { position, sent, acked: Instant::now() });
    }
    for p in publishing {
        acks.extend(tokio::time::timeout(Duration::from_secs(60), p).await.expect("every publish acked").unwrap());
    }

    // Acks: one id per position, contiguous offsets in the last epoch (in the lost one, a
    // publish that ran but whose answer was lost was stored again in the new epoch).
    let by_position: BTreeMap<Position, &str> = acks.iter().map(|(id, a)| (a.position, id.as_str())).collect();
    assert_eq!(by_position.len(), acks.len(), "{fault:?}: two acked publishes at one position");
    let epochs: BTreeSet<u64> = acks.values().map(|a| a.position.epoch).collect();
    let last_epoch = acks.values().max_by_key(|a| a.acked).map(|a| a.position.epoch).unwrap_or_default();
    let last: Vec<u64> = by_position.keys().filter(|p| p.epoch == last_epoch).map(|p| p.offset).collect();
    if fault == Fault::RedisLosesData {
        assert_eq!(epochs.len(), 2, "{fault:?}: the empty Redis gave the room a new epoch");
        assert_eq!(last, (1..=last.len() as u64).collect::<Vec<_>>(), "{fault:?}: the new epoch from offset 1");
    } else {
        assert_eq!(epochs.len(), 1, "{fault:?}: one epoch");
        assert_eq!(last, (1..=acks.len() as u64).collect::<Vec<_>>(), "{fault:?}: each publish stored once");
    }
    let history = cluster.nodes[0].history_ids(room).await;
    let in_last: Vec<(u64, String)> =
        by_position.iter().filter(|(p, _)| p.epoch == last_epoch).map(|(p, id)| (p.offset, id.to_string())).collect();
    assert_eq!(history, in_last, "{fault:?}: history holds the acked messages of the current epoch");

    // Every subscriber ends up holding every acked message (or is told of the loss).
    let whole = tokio::time::timeout(Duration::from_secs(30), async {
        while !watches.iter().all(|w| complete(&w.log.lock().unwrap(), &acks, last_epoch)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut logs = Vec::new();
    for w in watches {
        w.stop.cancel();
        w.task.await.unwrap().close().await;
        logs.push(std::mem::take(&mut *w.log.lock().unwrap()));
    }
    plain.close().await;
    if whole.is_err() {
        let missing: Vec<String> = logs
            .iter()
            .enumerate()
            .map(|(n, log)| {
                let lacking: BTreeSet<Position> =
                    acks.values().map(|a| a.position).filter(|p| log.holds(*p, last_epoch).is_none()).collect();
                let tail: Vec<Position> = log.messages.iter().rev().take(5).map(|m| m.0).collect();
                let told: Vec<Position> = log.told.iter().map(|t| t.0).collect();
                format!("subscriber {n}: told {told:?}, lacks {lacking:?}, last received {tail:?}")
            })
            .collect();
        panic!("{fault:?}: a subscriber never caught up (last epoch {last_epoch}):\n{}", missing.join("\n"));
    }

    // What each subscriber saw: each epoch in order without gap or duplicate, every message at
    // the position it was acked at, and one message per position across subscribers.
    let mut seen_at: BTreeMap<Position, &str> = BTreeMap::new();
    for (n, log) in logs.iter().enumerate() {
        let mut previous: Option<Position> = None;
        for (i, (position, id, _)) in log.messages.iter().enumerate() {
            // Told of a loss just before this message: it continues after the position told.
            if let Some(told) = log.told.iter().rev().find(|t| t.2 == i) {
                previous = Some(told.0);
            }
            let expected = match previous {
                Some(p) if p.epoch == position.epoch => p.offset + 1,
                _ => 1,
            };
            assert_eq!(position.offset, expected, "{fault:?}: subscriber {n} at {position:?} after {previous:?}");
            previous = Some(*position);
            if let Some(acked) = by_position.get(position) {
                assert_eq!(
                    acked,
                    id,
                    "{fault:?}: subscriber {n} got another message at acked position {position:?} ({id} was acked at {:?}; told {:?})",
                    acks.get(id).map(|a| a.position),
                    log.told.iter().map(|t| (t.0, t.2)).collect::<Vec<_>>()
                );
            }
            let first = *seen_at.entry(*position).or_insert(id.as_str());
            assert_eq!(first, id.as_str(), "{fault:?}: two subscribers saw different messages at {position:?}");
        }
        if fault == Fault::RedisLosesData {
            assert!(!log.told.is_empty(), "{fault:?}: subscriber {n} was told of the loss");
        } else {
            let held: Vec<Position> = log.messages.iter().map(|m| m.0).collect();
            assert_eq!(held, by_position.keys().copied().collect::<Vec<_>>(), "{fault:?}: subscriber {n}");
            assert!(
                log.told.is_empty(),
                "{fault:?}: subscriber {n} told of a loss that did not happen: {:?}",
                log.told
            );
        }
        if fault == Fault::RedisKeepsData {
            // docs/operations.md: connected clients stay connected while Redis is down.
            assert!(log.lost.is_empty(), "{fault:?}: subscriber {n} lost its connection: {:?}", log.lost);
        }
    }

    // Whole again: every publish made before the fault ended acked, and held by every
    // subscriber (or, lost with the old epoch, announced to it).
    let before_end: Vec<&Acked> = acks.values().filter(|a| a.sent < ended).collect();
    let mut whole_at = before_end.iter().map(|a| a.acked).max().unwrap_or(ended);
    for log in &logs {
        for a in &before_end {
            whole_at = whole_at.max(log.holds(a.position, last_epoch).expect("checked complete above"));
        }
    }
    Outcome {
        from_start: whole_at.saturating_duration_since(started),
        from_end: whole_at.saturating_duration_since(ended),
        refused_after,
    }
}

/// A region of three nodes on one persistent Redis; runs every scenario `rounds` times (a fresh
/// room each time) and returns the outcomes by scenario.
async fn region_under_faults(rounds: usize) -> BTreeMap<&'static str, Vec<Outcome>> {
    let data = tempfile::tempdir().unwrap();
    let redis = RedisServer::start_persistent(data.path()).expect("start redis-server");
    let mut cluster = Cluster::empty();
    for _ in 0..3 {
        cluster.add_node_with(&redis, &[("EDGERELAY_REDIS__COMMAND_TIMEOUT_MS", COMMAND_TIMEOUT_MS)]).await;
    }
    let mut outcomes: BTreeMap<&'static str, Vec<Outcome>> = BTreeMap::new();
    for round in 0..rounds {
        for (name, fault) in
            [("kill", Fault::KillRelay), ("keep", Fault::RedisKeepsData), ("lose", Fault::RedisLosesData)]
        {
            let outcome = scenario(&mut cluster, &redis, fault, &format!("ledger-{round}-{name}")).await;
            println!(
                "{fault:?} round {round}: whole again {:.0} ms after the fault started, {:.0} ms after it ended{}",
                outcome.from_start.as_secs_f64() * 1000.0,
                outcome.from_end.as_secs_f64() * 1000.0,
                outcome
                    .refused_after
                    .map(|d| format!("; publish refused after {:.0} ms", d.as_secs_f64() * 1000.0))
                    .unwrap_or_default(),
            );
            outcomes.entry(name).or_default().push(outcome);
        }
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_a_killed_relay_and_redis_restarts_with_and_without_data() {
    region_under_faults(1).await;
}

/// The figures in docs/performance.md ("A region on Redis"): every scenario three times.
/// Run: `cargo test --test region_faults -- --ignored --nocapture region_faults_figures`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures; run by hand (docs/performance.md)"]
async fn region_faults_figures() {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (name, outcomes) in region_under_faults(3).await {
        let from_end: Vec<f64> = outcomes.iter().map(|o| ms(&o.from_end)).collect();
        let from_start: Vec<f64> = outcomes.iter().map(|o| ms(&o.from_start)).collect();
        println!(
            "{name}: whole again after the fault ended: median {:.0} ms of {from_end:.0?}; after it started: median {:.0} ms of {from_start:.0?}",
            median(from_end.clone()),
            median(from_start.clone()),
        );
    }
}
