//! The contract every engine must meet, end to end through the hub and real outboxes (no
//! network): acks after commit, contiguous offsets, idempotent retries, exact resume, no gap or
//! duplicate when joining while publishing, catch-up of slow members. Each check is run on
//! every engine configuration by `engine_suite!`.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::hub::{Hub, Membership, Subscriber, replay};
use crate::outbox::{CONTROL, Outbox, Take};
use crate::proto::{Codec, Payload, ServerFrame};

pub(crate) struct Rig {
    pub hub: Arc<Hub>,
    pub engine: Arc<dyn Engine>,
    /// The Redis the engine uses, if any; stopped when the last rig holding it is dropped.
    pub _redis: Option<Arc<crate::testing::RedisServer>>,
    /// How many users [`Rig::publish`] takes turns publishing as (1: always `alice`).
    pub publishers: usize,
    turn: std::sync::atomic::AtomicUsize,
}

pub(crate) fn key(room: &str) -> RoomKey {
    RoomKey { tenant: "acme".into(), room: RoomName::parse(room).unwrap() }
}

impl Rig {
    pub fn new(hub: Arc<Hub>, engine: Arc<dyn Engine>, redis: Option<Arc<crate::testing::RedisServer>>) -> Rig {
        Rig { hub, engine, _redis: redis, publishers: 1, turn: Default::default() }
    }

    /// A rig whose [`Rig::publish`] takes turns among `publishers` users.
    pub fn with_publishers(self, publishers: usize) -> Rig {
        Rig { publishers, ..self }
    }

    pub async fn publish_as(&self, k: &RoomKey, from: &str, id: &str) -> Result<Accepted, EngineError> {
        let (done, rx) = Done::channel();
        let data = Payload::from(format!("\"{id}\"").as_str());
        self.engine.publish(Publish { key: k.clone(), from: from.into(), id: id.into(), data, now_ms: now() }, done);
        rx.await.unwrap_or(Err(EngineError::ShuttingDown))
    }

    pub async fn publish(&self, k: &RoomKey, id: &str) -> Position {
        let from = match self.publishers {
            0 | 1 => "alice".to_owned(),
            n => format!("user{}", self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n),
        };
        self.publish_as(k, &from, id).await.expect("publish").position
    }

    /// A member whose catch-up requests are served, like a connection does.
    pub fn member(&self, cap: usize) -> (Arc<Outbox>, Subscriber) {
        let outbox = Outbox::new(Codec::Postcard, cap);
        let (tx, mut rx) = crate::mailbox::mailbox::<crate::hub::CatchUp>();
        let (hub, engine) = (self.hub.clone(), self.engine.clone());
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                replay::catch_up(&hub, &*engine, c.key, c.id).await;
            }
        });
        (outbox.clone(), Subscriber { outbox, lane: CONTROL, membership: Membership::default(), catch_up: tx })
    }

    pub async fn join(&self, k: &RoomKey, id: u64, sub: Subscriber, since: Option<Position>) {
        let (hub, engine, k) = (self.hub.clone(), self.engine.clone(), k.clone());
        // Like a connection, the join runs as its own task.
        tokio::spawn(async move {
            let reply = sub.outbox.reserve(sub.lane, 1);
            replay::join(&hub, &*engine, k, id, sub, reply, since).await
        });
    }
}

fn now() -> u64 {
    crate::connection::unix_ms()
}

/// Reads frames until a message with offset `until` arrived (with `until` 0: until `joined`
/// arrived), or 10 s passed; returns the `joined` frame and the message offsets in order.
pub(crate) async fn collect(outbox: &Outbox, until: u64) -> (Option<ServerFrame>, Vec<u64>) {
    let mut joined = None;
    let mut offsets = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let done = |joined: &Option<ServerFrame>, offsets: &Vec<u64>| {
        if until == 0 { joined.is_some() } else { offsets.last() == Some(&until) }
    };
    while !done(&joined, &offsets) && tokio::time::Instant::now() < deadline {
        let changed = outbox.changed();
        match outbox.take_all(64) {
            Take::Frames(frames) => {
                for f in frames {
                    match outbox.codec().decode::<ServerFrame>(&f.body()).unwrap() {
                        ServerFrame::Message { position, .. } => offsets.push(position.offset),
                        other => joined = joined.or(Some(other)),
                    }
                }
            }
            _ => {
                let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
            }
        }
    }
    (joined, offsets)
}

fn contiguous(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

pub(crate) async fn acked_publishes_are_contiguous_and_delivered_in_order(rig: Rig) {
    let k = key("r");
    let (ob, sub) = rig.member(1 << 20);
    rig.join(&k, 1, sub, None).await;
    let (joined, _) = collect(&ob, 0).await;
    assert!(matches!(joined, Some(ServerFrame::Joined { recovered: true, .. })), "{joined:?}");
    let mut acked = Vec::new();
    for i in 1..=50 {
        acked.push(rig.publish(&k, &format!("m{i}")).await.offset);
    }
    assert_eq!(acked, contiguous(1, 50));
    assert_eq!(collect(&ob, 50).await.1, contiguous(1, 50));
    let stored: Vec<u64> = rig.engine.read_after(&k, 0, 100).await.unwrap().iter().map(|m| m.offset).collect();
    assert_eq!(stored, contiguous(1, 50), "acked means stored");
}

pub(crate) async fn retried_ids_get_the_original_position_and_are_delivered_once(rig: Rig) {
    let k = key("r");
    let (ob, sub) = rig.member(1 << 20);
    rig.join(&k, 1, sub, None).await;
    collect(&ob, 0).await;
    rig.publish(&k, "before").await;
    // Retries racing the original's commit, and after it.
    let (first, second) = tokio::join!(rig.publish_as(&k, "alice", "x"), rig.publish_as(&k, "alice", "x"));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.position, second.position);
    assert!(first.duplicate != second.duplicate, "exactly one of them stored it");
    for _ in 0..5 {
        let again = rig.publish_as(&k, "alice", "x").await.unwrap();
        assert_eq!((again.position, again.duplicate), (first.position, true));
    }
    let bob = rig.publish_as(&k, "bob", "x").await.unwrap();
    assert!(!bob.duplicate, "ids are per publisher");
    assert_eq!(bob.position.offset, 3);
    assert_eq!(collect(&ob, 3).await.1, vec![1, 2, 3], "delivered once");
}

pub(crate) async fn resume_replays_exactly_what_was_missed_then_goes_live(rig: Rig) {
    let k = key("r");
    let mut top = Position::default();
    for i in 1..=30 {
        top = rig.publish(&k, &format!("m{i}")).await;
    }
    let (ob, sub) = rig.member(1 << 20);
    rig.join(&k, 1, sub, Some(Position { epoch: top.epoch, offset: 10 })).await;
    let (joined, offsets) = collect(&ob, 30).await;
    assert!(matches!(joined, Some(ServerFrame::Joined { recovered: true, .. })), "{joined:?}");
    assert_eq!(offsets, contiguous(11, 30));
    rig.publish(&k, "m31").await;
    assert_eq!(collect(&ob, 31).await.1, vec![31]);
}

pub(crate) async fn resume_from_another_epoch_is_not_recovered(rig: Rig) {
    let k = key("r");
    let top = rig.publish(&k, "m1").await;
    let (ob, sub) = rig.member(1 << 20);
    rig.join(&k, 1, sub, Some(Position { epoch: top.epoch ^ 1, offset: 1 })).await;
    let (joined, _) = collect(&ob, 0).await;
    assert!(
        matches!(joined, Some(ServerFrame::Joined { recovered: false, position, .. }) if position == top),
        "{joined:?}"
    );
    rig.publish(&k, "m2").await;
    assert_eq!(collect(&ob, 2).await.1, vec![2], "then live from the top");
}

pub(crate) async fn joining_while_publishing_never_gaps_or_duplicates(rig: Rig) {
    let k = key("race");
    // The publisher keeps going until every member has joined, then publishes 20 more, so
    // every join races publishes and every member has something after its join.
    let joins_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (engine, k, joins_done, publishers) = (rig.engine.clone(), k.clone(), joins_done.clone(), rig.publishers);
        tokio::spawn(async move {
            let rig = Rig::new(Arc::new(Hub::new(1, 1000)), engine, None).with_publishers(publishers);
            let (mut i, mut after) = (0u64, 0);
            while after < 20 {
                i += 1;
                rig.publish(&k, &format!("m{i}")).await;
                if joins_done.load(std::sync::atomic::Ordering::Relaxed) {
                    after += 1;
                }
                if i % 4 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            i
        })
    };
    let mut members = Vec::new();
    for id in 1..=40u64 {
        let (ob, sub) = rig.member(1 << 20);
        // Alternate fresh joins and resumes from a recent position.
        let since = match (id % 3, rig.hub.position(&k)) {
            (0, Some(top)) => Some(Position { epoch: top.epoch, offset: top.offset.saturating_sub(id % 7) }),
            (1, _) => Some(Position { epoch: 0, offset: 0 }),
            _ => None,
        };
        rig.join(&k, id, sub, since).await;
        members.push((ob, since));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    joins_done.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = publisher.await.unwrap();
    for (ob, since) in members {
        let (joined, offsets) = collect(&ob, last).await;
        let Some(ServerFrame::Joined { position, recovered: true, .. }) = joined else { panic!("{joined:?}") };
        let from = since.map_or(position.offset, |s| s.offset) + 1;
        assert_eq!(offsets, contiguous(from, last), "joined at {position:?} since {since:?}");
    }
}

pub(crate) async fn joining_a_new_room_from_the_start_while_it_fills_never_duplicates(rig: Rig) {
    for round in 0..30 {
        let k = key(&format!("fresh-{round}"));
        let publisher = {
            let (engine, k, publishers) = (rig.engine.clone(), k.clone(), rig.publishers);
            tokio::spawn(async move {
                let rig = Rig::new(Arc::new(Hub::new(1, 1000)), engine, None).with_publishers(publishers);
                for i in 1..=30u64 {
                    rig.publish(&k, &format!("m{i}")).await;
                }
            })
        };
        for _ in 0..round % 4 {
            tokio::task::yield_now().await;
        }
        let (ob, sub) = rig.member(1 << 20);
        rig.join(&k, 1, sub, Some(Position { epoch: 0, offset: 0 })).await;
        publisher.await.unwrap();
        assert_eq!(collect(&ob, 30).await.1, contiguous(1, 30), "round {round}");
    }
}

pub(crate) async fn a_slow_member_catches_up_from_history(rig: Rig) {
    let k = key("r");
    // Room for a handful of messages only: the member must be fed from history.
    let (ob, sub) = rig.member(600);
    rig.join(&k, 1, sub, None).await;
    collect(&ob, 0).await;
    for i in 1..=200 {
        rig.publish(&k, &format!("m{i}")).await;
    }
    assert_eq!(collect(&ob, 200).await.1, contiguous(1, 200));
    assert_eq!(ob.closing(), None);
}

/// Runs every check above on a fresh engine from `$make` (an `async fn() -> Rig`).
macro_rules! engine_suite {
    ($make:path) => {
        #[tokio::test]
        async fn acked_publishes_are_contiguous_and_delivered_in_order() {
            $crate::engine::suite::acked_publishes_are_contiguous_and_delivered_in_order($make().await).await;
        }
        #[tokio::test]
        async fn retried_ids_get_the_original_position_and_are_delivered_once() {
            $crate::engine::suite::retried_ids_get_the_original_position_and_are_delivered_once($make().await).await;
        }
        #[tokio::test]
        async fn resume_replays_exactly_what_was_missed_then_goes_live() {
            $crate::engine::suite::resume_replays_exactly_what_was_missed_then_goes_live($make().await).await;
        }
        #[tokio::test]
        async fn resume_from_another_epoch_is_not_recovered() {
            $crate::engine::suite::resume_from_another_epoch_is_not_recovered($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn joining_while_publishing_never_gaps_or_duplicates() {
            $crate::engine::suite::joining_while_publishing_never_gaps_or_duplicates($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn joining_a_new_room_from_the_start_while_it_fills_never_duplicates() {
            $crate::engine::suite::joining_a_new_room_from_the_start_while_it_fills_never_duplicates($make().await)
                .await;
        }
        #[tokio::test]
        async fn a_slow_member_catches_up_from_history() {
            $crate::engine::suite::a_slow_member_catches_up_from_history($make().await).await;
        }
    };
}
pub(crate) use engine_suite;

fn local(history: Arc<dyn crate::store::History>, config: LocalEngineConfig) -> Rig {
    let hub = Arc::new(Hub::new(4, 60_000));
    let engine = LocalEngine::start(config, history, hub.clone()).unwrap();
    Rig::new(hub, Arc::new(engine), None)
}

mod memory {
    async fn make() -> super::Rig {
        super::local(Arc::new(crate::store::MemoryHistory::new()), Default::default())
    }
    use std::sync::Arc;
    super::engine_suite!(make);

    #[tokio::test]
    async fn meta_reports_the_first_offset_retention_kept() {
        let config = super::LocalEngineConfig {
            retention: crate::store::Retention { max_messages: 3, max_age_ms: u64::MAX },
            ..Default::default()
        };
        let rig = super::local(Arc::new(crate::store::MemoryHistory::new()), config);
        let k = super::key("r");
        for i in 1..=5 {
            rig.publish(&k, &format!("m{i}")).await;
        }
        let meta = rig.engine.meta(&k).await.unwrap();
        assert_eq!((meta.first, meta.top), (3, 5));
    }
}

/// The same properties when subscribers get each message before its commit.
mod early {
    async fn make() -> super::Rig {
        let config = super::LocalEngineConfig { deliver_before_commit: true, ..Default::default() };
        super::local(Arc::new(crate::store::MemoryHistory::new()), config)
    }
    use std::sync::Arc;
    super::engine_suite!(make);
}

/// The same properties when commits are paced by `min_commit_interval`, with three users
/// taking turns publishing, so a commit waits for the ones not in it yet.
mod paced {
    async fn make() -> super::Rig {
        let config = super::LocalEngineConfig {
            deliver_before_commit: true,
            min_commit_interval: std::time::Duration::from_millis(5),
            ..Default::default()
        };
        super::local(Arc::new(crate::store::MemoryHistory::new()), config).with_publishers(3)
    }
    use std::sync::Arc;
    super::engine_suite!(make);
}

mod embedded {
    use std::path::PathBuf;
    use std::sync::{Arc, OnceLock};

    use super::*;
    use crate::store::{EmbeddedHistory, History, Retention, StoreError};

    fn dir() -> &'static tempfile::TempDir {
        static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
        DIR.get_or_init(|| tempfile::tempdir().unwrap())
    }

    fn fresh_path() -> PathBuf {
        dir().path().join(format!("e-{}.redb", rand::random::<u64>()))
    }

    async fn make() -> Rig {
        local(Arc::new(EmbeddedHistory::open(&fresh_path()).unwrap().0), Default::default())
    }
    super::engine_suite!(make);

    #[tokio::test]
    async fn offsets_epoch_and_ids_survive_a_restart() {
        let path = fresh_path();
        let k = key("r");
        let rig = make_at(&path);
        let first = rig.publish(&k, "a").await;
        rig.publish(&k, "b").await;
        rig.engine.shutdown(Duration::from_secs(5)).await;
        drop(rig);
        let rig = make_at(&path);
        let retried = rig.publish_as(&k, "alice", "a").await.unwrap();
        assert_eq!((retried.position, retried.duplicate), (first, true));
        let next = rig.publish(&k, "c").await;
        assert_eq!(next, Position { epoch: first.epoch, offset: 3 });
    }

    fn make_at(path: &std::path::Path) -> Rig {
        local(Arc::new(EmbeddedHistory::open(path).unwrap().0), Default::default())
    }

    /// A store whose commits fail while `failing` is set, and whose reads fail while
    /// `reads_failing` is; it counts the commits it was asked for.
    struct Flaky {
        inner: EmbeddedHistory,
        failing: std::sync::atomic::AtomicBool,
        reads_failing: std::sync::atomic::AtomicBool,
        commits: std::sync::atomic::AtomicUsize,
        cursor_saves: std::sync::atomic::AtomicUsize,
    }

    impl Flaky {
        fn new(reads_failing: bool) -> Arc<Flaky> {
            Arc::new(Flaky {
                inner: EmbeddedHistory::open(&fresh_path()).unwrap().0,
                failing: std::sync::atomic::AtomicBool::new(false),
                reads_failing: std::sync::atomic::AtomicBool::new(reads_failing),
                commits: std::sync::atomic::AtomicUsize::new(0),
                cursor_saves: std::sync::atomic::AtomicUsize::new(0),
            })
        }
    }

    impl History for Flaky {
        fn append(&self, batch: &[crate::store::Append], r: &Retention) -> Result<(), StoreError> {
            self.commits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Backend("disk full".into()));
            }
            self.inner.append(batch, r)
        }
        fn meta(&self, key: &RoomKey) -> Result<Option<crate::store::RoomMeta>, StoreError> {
            if self.reads_failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Backend("i/o error".into()));
            }
            self.inner.meta(key)
        }
        fn read_after(&self, key: &RoomKey, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
            self.inner.read_after(key, after, limit)
        }
        fn read_before(&self, key: &RoomKey, before: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
            self.inner.read_before(key, before, limit)
        }
        fn find_id(&self, key: &RoomKey, from: &str, id: &str) -> Result<Option<(u64, u64)>, StoreError> {
            self.inner.find_id(key, from, id)
        }
        fn expire(
            &self,
            before_ms: u64,
            resume: Option<&[u8]>,
            max_rooms: usize,
        ) -> Result<crate::store::ExpireStep, StoreError> {
            self.inner.expire(before_ms, resume, max_rooms)
        }
        fn save_cursors(&self, updates: &[crate::store::UserCursors]) -> Result<(), StoreError> {
            self.cursor_saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.save_cursors(updates)
        }
        fn forget_cursor(&self, t: &str, u: &str, r: &RoomName) -> Result<(), StoreError> {
            self.inner.forget_cursor(t, u, r)
        }
        fn cursors(&self, t: &str, u: &str, limit: usize) -> Result<Vec<crate::store::Cursor>, StoreError> {
            self.inner.cursors(t, u, limit)
        }
    }

    /// Every join saves a cursor: a burst of them shares a paced commit, a read of a user's
    /// cursors still sees the ones waiting, and forgetting one is not undone by a save queued
    /// before it.
    #[tokio::test]
    async fn a_burst_of_cursor_saves_shares_one_commit_and_reads_still_see_them() {
        use crate::store::Cursor;
        let history = Flaky::new(false);
        let rig = local(history.clone(), Default::default());
        let cursor = |room: &str, offset: u64| Cursor {
            room: RoomName::parse(room).unwrap(),
            position: Position { epoch: 1, offset },
            updated: 1,
        };
        let saves = || history.cursor_saves.load(std::sync::atomic::Ordering::SeqCst);
        rig.engine.save_cursors("acme", "first", vec![cursor("a", 1)]);
        while saves() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Within the interval after that save: 300 joins, then a read.
        for n in 0..300 {
            rig.engine.save_cursors("acme", &format!("u{n}"), vec![cursor("a", n)]);
        }
        assert_eq!(rig.engine.cursors("acme", "u299", 10).await.unwrap(), vec![cursor("a", 299)]);
        assert_eq!(saves(), 2, "the first save, then one for the 300 (the read asked for it)");
        // Saved a moment later without a read: the interval passes, one more commit.
        rig.engine.save_cursors("acme", "u0", vec![cursor("b", 5)]);
        rig.engine.forget_cursor("acme", "u0", RoomName::parse("a").unwrap());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(saves(), 3);
        assert_eq!(rig.engine.cursors("acme", "u0", 10).await.unwrap(), vec![cursor("b", 5)]);
    }

    #[tokio::test]
    async fn a_run_that_delivered_early_and_did_not_stop_cleanly_gives_rooms_new_epochs() {
        let history = Arc::new(EmbeddedHistory::open(&fresh_path()).unwrap().0);
        assert_eq!(history.begin_run(true).unwrap(), 0, "a new store has nothing to renew");
        let config = LocalEngineConfig { deliver_before_commit: true, ..Default::default() };
        let rig = local(history.clone(), config);
        let k = key("r");
        let first = rig.publish(&k, "m1").await;
        // The next start finds the run's marker (no clean stop): same history, new epoch.
        assert_eq!(history.begin_run(true).unwrap(), 1);
        let meta = history.meta(&k).unwrap().unwrap();
        assert_ne!(meta.epoch, first.epoch);
        assert_eq!((meta.first, meta.top), (1, 1));
        assert_eq!(history.read_after(&k, 0, 10).unwrap()[0].id, "m1");
        // A clean stop clears it.
        rig.engine.shutdown(Duration::from_secs(5)).await;
        assert_eq!(history.begin_run(false).unwrap(), 0);
        assert_eq!(history.meta(&k).unwrap().unwrap().epoch, meta.epoch);
    }

    #[tokio::test]
    async fn a_failed_commit_acknowledges_nothing_and_leaves_no_hole() {
        let flaky = Flaky::new(false);
        let rig = local(flaky.clone(), Default::default());
        let k = key("r");
        let (ob, sub) = rig.member(1 << 20);
        rig.join(&k, 1, sub, None).await;
        rig.publish(&k, "m1").await;
        flaky.failing.store(true, std::sync::atomic::Ordering::SeqCst);
        let refused = rig.publish_as(&k, "alice", "m2").await;
        assert!(matches!(refused, Err(EngineError::Unavailable(_))), "{refused:?}");
        flaky.failing.store(false, std::sync::atomic::Ordering::SeqCst);
        let retried = rig.publish_as(&k, "alice", "m2").await.unwrap();
        assert_eq!((retried.position.offset, retried.duplicate), (2, false), "no hole, and the retry is stored");
        assert_eq!(collect(&ob, 2).await.1, vec![1, 2]);
    }

    #[tokio::test]
    async fn a_join_the_store_refuses_is_answered_and_its_membership_cancelled() {
        let flaky = Flaky::new(true);
        let rig = local(flaky.clone(), Default::default());
        let k = key("r");
        let (ob, sub) = rig.member(1 << 20);
        let membership = sub.membership.clone();
        let reply = sub.outbox.reserve(sub.lane, 7);
        assert_eq!(replay::join(&rig.hub, &*rig.engine, k.clone(), 1, sub, reply, None).await, None);
        assert!(membership.is_cancelled(), "the session must learn that the room was not joined");
        let (answer, _) = collect(&ob, 0).await;
        assert!(
            matches!(answer, Some(ServerFrame::Error { req: 7, code: ErrorCode::STORE_UNAVAILABLE, .. })),
            "{answer:?}"
        );
        // Once the store is back the same member id joins.
        flaky.reads_failing.store(false, std::sync::atomic::Ordering::SeqCst);
        let (ob, sub) = rig.member(1 << 20);
        rig.join(&k, 1, sub, None).await;
        assert!(matches!(collect(&ob, 0).await.0, Some(ServerFrame::Joined { .. })));
    }

    #[tokio::test]
    async fn publishes_within_the_commit_interval_share_one_commit_and_are_all_acknowledged() {
        let flaky = Flaky::new(false);
        let interval = Duration::from_millis(300);
        let config =
            LocalEngineConfig { deliver_before_commit: true, min_commit_interval: interval, ..Default::default() };
        let rig = local(flaky.clone(), config);
        let k = key("r");
        let (ob, sub) = rig.member(1 << 20);
        rig.join(&k, 1, sub, None).await;
        assert!(matches!(collect(&ob, 0).await.0, Some(ServerFrame::Joined { .. })));
        // After a quiet spell the first publish commits at once.
        let started = std::time::Instant::now();
        rig.publish_as(&k, "bob", "m1").await.unwrap();
        // Another publisher's next four arrive within the interval: delivered at once,
        // acknowledged together by one commit once the interval has passed.
        let acks: Vec<_> = (2..=5)
            .map(|i| {
                let (done, rx) = Done::channel();
                let data = Payload::from("1");
                let publish =
                    Publish { key: k.clone(), from: "alice".into(), id: format!("m{i}"), data, now_ms: now() };
                rig.engine.publish(publish, done);
                rx
            })
            .collect();
        assert_eq!(collect(&ob, 5).await.1, contiguous(1, 5));
        for (ack, offset) in acks.into_iter().zip(2..) {
            assert_eq!(ack.await.unwrap().unwrap().position.offset, offset);
        }
        assert!(started.elapsed() >= interval, "acknowledged before the interval was over");
        assert_eq!(flaky.commits.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(rig.engine.read_after(&k, 0, 10).await.unwrap().len(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishers_awaiting_each_ack_are_not_held_to_the_commit_interval() {
        let interval = Duration::from_secs(2);
        let config =
            LocalEngineConfig { deliver_before_commit: true, min_commit_interval: interval, ..Default::default() };
        let rig = Arc::new(local(Flaky::new(false), config));
        let k = key("r");
        // A lone publisher: held to the interval, its five would take at least 8 s.
        let started = std::time::Instant::now();
        for i in 1..=5 {
            rig.publish(&k, &format!("m{i}")).await;
        }
        assert!(started.elapsed() < interval * 2, "{:?}", started.elapsed());
        // Three at once, each awaiting its ack: every commit holds all of them, none waits.
        let started = std::time::Instant::now();
        let publishers: Vec<_> = ["alice", "bob", "carol"]
            .into_iter()
            .map(|from| {
                let (rig, k) = (rig.clone(), k.clone());
                tokio::spawn(async move {
                    for i in 1..=5 {
                        rig.publish_as(&k, from, &format!("{from}{i}")).await.unwrap();
                    }
                })
            })
            .collect();
        for publisher in publishers {
            publisher.await.unwrap();
        }
        assert!(started.elapsed() < interval * 2, "{:?}", started.elapsed());
        assert_eq!(rig.engine.read_after(&k, 0, 100).await.unwrap().len(), 20);
    }

    #[tokio::test]
    async fn maintenance_expires_old_messages_in_every_room_and_keeps_the_rest() {
        let retention = Retention { max_messages: 1000, max_age_ms: 60_000 };
        let history = Arc::new(EmbeddedHistory::open(&fresh_path()).unwrap().0);
        let rig = local(history, LocalEngineConfig { retention, ..Default::default() });
        let now = now();
        let rooms: Vec<RoomKey> = (0..600).map(|i| key(&format!("r{i}"))).collect();
        for k in &rooms {
            for (id, age_ms) in [("old", 120_000), ("new", 1_000)] {
                let (done, rx) = Done::channel();
                let data = Payload::from("1");
                let publish =
                    Publish { key: k.clone(), from: "alice".into(), id: id.into(), data, now_ms: now - age_ms };
                rig.engine.publish(publish, done);
                rx.await.unwrap().unwrap();
            }
        }
        rig.engine.maintain(now);
        // The pass runs in steps on the writer, between commits: wait (bounded) for all of it.
        let kept = async |k: &RoomKey| -> Vec<String> {
            rig.engine.read_after(k, 0, 10).await.unwrap().into_iter().map(|m| m.id).collect()
        };
        'wait: for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            for k in &rooms {
                if kept(k).await.len() != 1 {
                    continue 'wait;
                }
            }
            break;
        }
        for k in &rooms {
            let kept = kept(k).await;
            assert_eq!(kept, vec!["new".to_owned()], "{k:?}");
        }
    }
}

pub(crate) mod redis {
    use super::*;
    use crate::store::Retention;
    use crate::testing::RedisServer;

    pub(crate) fn config(url: String) -> RedisEngineConfig {
        RedisEngineConfig {
            url,
            prefix: "test".into(),
            retention: Retention { max_messages: 10_000, max_age_ms: 3_600_000 },
            dedupe_window_ms: 300_000,
            max_batch: 256,
            command_timeout: Duration::from_secs(2),
            resync_every: Duration::from_millis(200),
            probe_every: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(500),
            presence_ttl: Duration::from_secs(3),
        }
    }

    /// A node: its own hub and engine, on `server`.
    pub(crate) async fn node(server: &Arc<RedisServer>, config: RedisEngineConfig) -> Rig {
        let hub = Arc::new(Hub::new(4, 60_000));
        let engine = RedisEngine::connect(config, hub.clone()).await.expect("connect to the test redis");
        Rig::new(hub, Arc::new(engine), Some(server.clone()))
    }

    async fn make() -> Rig {
        let server = Arc::new(RedisServer::start().expect("start redis-server"));
        node(&server, config(server.url())).await
    }
    super::engine_suite!(make);
}
