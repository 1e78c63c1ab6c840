//! The single-node engine: per-room sequencers in memory, one group-commit writer thread, a
//! [`History`] backend, delivery to the local hub.
//!
//! A publish takes its room's sequencer lock for a moment: it checks the idempotency window,
//! assigns the next offset and queues the append for the writer, all under the lock, so the
//! writer's queue is in offset order for every room. The writer takes whatever is queued (up to
//! `max_batch`, collecting for at most `linger` while more keeps arriving, never waiting on an
//! empty queue), appends it in one durable commit, then, in order, delivers each message to the
//! hub and acknowledges it. A failed commit acknowledges nothing: the rooms involved roll their
//! next offset back to the last committed one and bump a generation, so appends queued behind
//! the failure are refused too instead of leaving a hole. Reads (replay, history pages, cursors)
//! run on tokio's blocking pool, never on the connections' runtime threads.
//!
//! With `min_commit_interval` ([`Pacing`]) a commit starts no sooner than that after the
//! previous one, so a steady trickle from many publishers shares one fsync per interval; the
//! wait ends once every publisher of the last two intervals has an append in the batch, so
//! publishers that await each ack are never held to it.
//!
//! With `deliver_before_commit` the publishing task delivers to the hub itself, under the room's
//! sequencer lock right after queuing the append, and the writer only commits and acknowledges:
//! subscribers no longer wait for the fsync and a hand-off to the writer thread (most of the
//! publish→delivery median on a loopback; docs/decisions.md). Acknowledged still means
//! committed. What subscribers saw may then be ahead of the store, so:
//! - a failed commit rolls nothing back (the offsets were seen): later appends still commit and
//!   the lost offsets are a hole that catch-up reports as history gone;
//! - a read after an offset that is delivered but not yet committed waits for the commit, so a
//!   replay never mistakes "not committed yet" for "gone";
//! - a crash may lose delivered, unacknowledged messages: the store then gives every room a new
//!   epoch at the next start ([`History::begin_run`]), so no position is reused for another
//!   message and clients resync as for lost history.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{Accepted, Done, Engine, EngineError, Publish};
use crate::hub::{Hub, RoomKey};
use crate::outbox::Wakes;
use crate::proto::{Position, RoomName};
use crate::store::{Append, Cursor, History, Retention, RoomMeta, StoredMessage, UserCursors, new_epoch};

#[derive(Debug, Clone)]
pub struct LocalEngineConfig {
    pub retention: Retention,
    /// A retried message id within this window returns the original position.
    pub dedupe_window_ms: u64,
    /// Most appends in one commit.
    pub max_batch: usize,
    /// How long the writer keeps collecting while appends keep arriving.
    pub linger: Duration,
    /// Least time from one commit's start to the next: appends arriving sooner join the next
    /// commit (fewer fsyncs under a steady trickle; see the module docs).
    pub min_commit_interval: Duration,
    /// A room's sequencer state is dropped after this long without a publish.
    pub idle_ttl_ms: u64,
    pub shards: usize,
    /// Deliver to subscribers before the commit (see the module docs).
    pub deliver_before_commit: bool,
    /// Tests only: the writer sleeps this long before each commit, widening the window between
    /// an early delivery and its commit (`EDGERELAY_TEST_COMMIT_DELAY_MS`).
    pub commit_delay: Duration,
}

impl Default for LocalEngineConfig {
    fn default() -> Self {
        LocalEngineConfig {
            retention: Retention { max_messages: 10_000, max_age_ms: 24 * 3600 * 1000 },
            dedupe_window_ms: 5 * 60 * 1000,
            max_batch: 256,
            linger: Duration::from_millis(2),
            min_commit_interval: Duration::ZERO,
            idle_ttl_ms: 600_000,
            shards: 64,
            deliver_before_commit: false,
            commit_delay: Duration::ZERO,
        }
    }
}

/// A recently published id: where it went and whether that is committed yet.
struct RecentId {
    position: Position,
    committed: bool,
    generation: u64,
}

/// One room's sequencer.
struct Seq {
    epoch: u64,
    /// Last offset handed out.
    assigned: u64,
    /// Last offset the store committed.
    committed: u64,
    /// Last offset whose append left the writer (committed or refused): reads wait for it when
    /// delivering before commit.
    settled: u64,
    /// Bumped when a commit fails; appends queued under an older generation are refused.
    generation: u64,
    /// Appends queued and not yet committed or refused; the state is kept while any are.
    in_flight: usize,
    last_used: u64,
    recent: HashMap<(String, String), RecentId>,
    recent_order: VecDeque<(u64, String, String)>,
    /// Ids published before this state was loaded may only be in the store, until the window
    /// since `loaded_at` has passed.
    loaded_at: u64,
    had_history: bool,
}

impl Seq {
    fn prune(&mut self, now_ms: u64, window_ms: u64) {
        while let Some((time, _, _)) = self.recent_order.front() {
            if now_ms.saturating_sub(*time) < window_ms {
                break;
            }
            if let Some((_, from, id)) = self.recent_order.pop_front() {
                self.recent.remove(&(from, id));
            }
        }
    }
}

type SharedSeq = Arc<Mutex<Seq>>;

/// Work for the writer. Publishes carry their room's sequencer, so the writer never looks it up
/// again (and it cannot be dropped while they are in flight).
enum Op {
    Append {
        seq: SharedSeq,
        key: RoomKey,
        generation: u64,
        epoch: u64,
        message: StoredMessage,
        done: Done,
    },
    /// Acknowledge a retried id once its original append's commit is through.
    Duplicate {
        seq: SharedSeq,
        generation: u64,
        position: Position,
        done: Done,
    },
    Expire {
        before_ms: u64,
    },
    SaveCursors(UserCursors),
    ForgetCursor {
        tenant: String,
        user: String,
        room: RoomName,
    },
    /// Answered once every cursor queued before it is saved (a read of the cursors waits on it).
    SaveCursorsNow(tokio::sync::oneshot::Sender<()>),
    Stop,
}

type SeqMap = HashMap<RoomKey, SharedSeq>;

struct Sequencers {
    shards: Vec<Mutex<SeqMap>>,
    hasher: RandomState,
}

use crate::lock::lock;

impl Sequencers {
    fn shard(&self, key: &RoomKey) -> &Mutex<SeqMap> {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    fn existing(&self, key: &RoomKey) -> Option<SharedSeq> {
        lock(self.shard(key)).get(key).cloned()
    }
}

pub struct LocalEngine {
    config: LocalEngineConfig,
    history: Arc<dyn History>,
    hub: Arc<Hub>,
    seqs: Arc<Sequencers>,
    /// `None` once stopping. Senders hold it shared, so nothing is queued (and delivered
    /// early) behind the writer's stop, which records a clean stop.
    queue: RwLock<Option<Sender<Op>>>,
    /// Notified after every commit batch (reads waiting for an early-delivered offset).
    settled: Arc<tokio::sync::Notify>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LocalEngine {
    /// Runs a store read on tokio's blocking pool: a read may wait on the disk, and must not
    /// hold up the connections that share the runtime's worker threads.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn History) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, EngineError>> {
        let history = self.history.clone();
        async move {
            match tokio::task::spawn_blocking(move || f(&*history)).await {
                Ok(result) => result.map_err(Into::into),
                Err(e) => Err(EngineError::Unavailable(format!("store read did not finish: {e}"))),
            }
        }
        .boxed()
    }

    /// Starts the writer thread. Committed messages are delivered to `hub`.
    pub fn start(config: LocalEngineConfig, history: Arc<dyn History>, hub: Arc<Hub>) -> std::io::Result<LocalEngine> {
        let shards = config.shards.max(1);
        let seqs = Arc::new(Sequencers {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        });
        let (queue, rx) = std::sync::mpsc::channel();
        let settled = Arc::new(tokio::sync::Notify::new());
        let writer = Writer {
            rx,
            history: history.clone(),
            hub: hub.clone(),
            settled: settled.clone(),
            deliver_before_commit: config.deliver_before_commit,
            commit_delay: config.commit_delay,
            retention: config.retention,
            max_batch: config.max_batch.max(1),
            linger: config.linger,
            pacing: Pacing::new(config.min_commit_interval),
            commit_seconds: metrics::histogram!(crate::metrics::STORE_COMMIT_SECONDS),
            batch_size: metrics::histogram!(crate::metrics::STORE_BATCH_SIZE),
            failures: metrics::counter!(crate::metrics::STORE_FAILURES_TOTAL),
            expiring: None,
            cursors: PacedCursors::default(),
        };
        let handle = std::thread::Builder::new().name("edgerelay-store".into()).spawn(move || writer.run())?;
        Ok(LocalEngine {
            config,
            history,
            hub,
            seqs,
            queue: RwLock::new(Some(queue)),
            settled,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// The room's sequencer, loaded from the store on first use.
    fn seq(&self, key: &RoomKey, now_ms: u64) -> Result<SharedSeq, EngineError> {
        if let Some(seq) = self.seqs.existing(key) {
            return Ok(seq);
        }
        // Read outside the shard lock; if another thread loaded it meanwhile, theirs wins.
        let meta = self.history.meta(key)?;
        let (meta, had_history) = match meta {
            Some(meta) => (meta, meta.top > 0),
            None => (RoomMeta::empty(new_epoch()), false),
        };
        let mut shard = lock(self.seqs.shard(key));
        let seq = shard.entry(key.clone()).or_insert_with(|| {
            Arc::new(Mutex::new(Seq {
                epoch: meta.epoch,
                assigned: meta.top,
                committed: meta.top,
                settled: meta.top,
                generation: 0,
                in_flight: 0,
                last_used: now_ms,
                recent: HashMap::new(),
                recent_order: VecDeque::new(),
                loaded_at: now_ms,
                had_history,
            }))
        });
        Ok(seq.clone())
    }

    /// Queues an op for the writer; hands it back when the writer has stopped.
    fn send(&self, op: Op) -> Result<(), Box<Op>> {
        self.send_then(op, || ())
    }

    /// [`LocalEngine::send`], running `then` once the op is queued, before a stop can be.
    fn send_then(&self, op: Op, then: impl FnOnce()) -> Result<(), Box<Op>> {
        let queue = self.queue.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(queue) = queue.as_ref() else { return Err(Box::new(op)) };
        queue.send(op).map_err(|e| Box::new(e.0))?;
        then();
        Ok(())
    }

    /// Waits (a bounded time) until the room's offsets after `after` that were delivered are
    /// committed or refused, when delivering before commit; a read then sees what was delivered.
    async fn settled_after(&self, key: &RoomKey, after: u64) {
        if !self.config.deliver_before_commit {
            return;
        }
        let Some(seq) = self.seqs.existing(key) else { return };
        let waiting = async {
            loop {
                let notified = self.settled.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let s = lock(&seq);
                    if s.settled > after || s.assigned <= after {
                        return;
                    }
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(SETTLE_WAIT, waiting).await;
    }

    /// On an error before the publish was queued, hands `done` back to be completed with it.
    fn publish_inner(&self, p: Publish, done: Done) -> Result<(), Box<(EngineError, Done)>> {
        let seq = match self.seq(&p.key, p.now_ms) {
            Ok(seq) => seq,
            Err(e) => return Err(Box::new((e, done))),
        };
        let mut s = lock(&seq);
        s.last_used = p.now_ms;
        s.prune(p.now_ms, self.config.dedupe_window_ms);
        let id_key = (p.from.clone(), p.id.clone());
        if let Some(recent) = s.recent.get(&id_key) {
            let accepted = Accepted { position: recent.position, duplicate: true };
            if recent.committed {
                drop(s);
                done.complete(Ok(accepted));
                return Ok(());
            }
            // If the queue is closed, dropping the op answers `done` with ShuttingDown.
            let op = Op::Duplicate { seq: seq.clone(), generation: recent.generation, position: recent.position, done };
            let _ = self.send(op);
            return Ok(());
        }
        let window = self.config.dedupe_window_ms;
        if s.had_history && p.now_ms.saturating_sub(s.loaded_at) < window {
            let found = match self.history.find_id(&p.key, &p.from, &p.id) {
                Ok(found) => found,
                Err(e) => return Err(Box::new((e.into(), done))),
            };
            if let Some((offset, time)) = found
                && p.now_ms.saturating_sub(time) < window
            {
                let position = Position { epoch: s.epoch, offset };
                drop(s);
                done.complete(Ok(Accepted { position, duplicate: true }));
                return Ok(());
            }
        }
        s.assigned += 1;
        let position = Position { epoch: s.epoch, offset: s.assigned };
        let generation = s.generation;
        s.recent.insert(id_key, RecentId { position, committed: false, generation });
        s.recent_order.push_back((p.now_ms, p.from.clone(), p.id.clone()));
        s.in_flight += 1;
        let message = StoredMessage { offset: position.offset, time: p.now_ms, from: p.from, id: p.id, data: p.data };
        let early = self.config.deliver_before_commit.then(|| (p.key.clone(), message.clone()));
        let epoch = s.epoch;
        let entered = done.since();
        let op = Op::Append { seq: seq.clone(), key: p.key, generation, epoch, message, done };
        // Delivered early under the sequencer lock, so in offset order, and only once queued.
        let mut wakes = Wakes::new();
        let deliver = || {
            if let Some((key, message)) = &early {
                let delivered = self.hub.deliver_batched(key, epoch, message, &mut wakes);
                crate::metrics::delivered(entered, delivered.delivered);
            }
        };
        if let Err(op) = self.send_then(op, deliver) {
            // Nothing will commit it: undo the assignment (still under the lock).
            s.assigned -= 1;
            s.in_flight -= 1;
            if let Op::Append { message, .. } = &*op {
                s.recent.remove(&(message.from.clone(), message.id.clone()));
            }
            drop(s);
            drop(op);
            return Ok(());
        }
        drop(s);
        // The writes happen after the lock: other publishers of the room never wait on sockets.
        self.hub.wake(wakes);
        Ok(())
    }
}

impl Engine for LocalEngine {
    fn publish(&self, publish: Publish, done: Done) {
        if let Err(refused) = self.publish_inner(publish, done) {
            let (err, done) = *refused;
            done.complete(Err(err));
        }
    }

    fn meta(&self, key: &RoomKey) -> BoxFuture<'_, Result<RoomMeta, EngineError>> {
        // Epoch and top come from the sequencer (what was committed and delivered); the lowest
        // retained offset from the store, which retention moves.
        let result = self.seq(key, crate::connection::unix_ms()).and_then(|seq| {
            let (epoch, top) = {
                let s = lock(&seq);
                (s.epoch, if self.config.deliver_before_commit { s.assigned } else { s.committed })
            };
            let first = self.history.meta(key)?.filter(|m| m.epoch == epoch).map_or(1, |m| m.first);
            Ok(RoomMeta { epoch, first, top })
        });
        std::future::ready(result).boxed()
    }

    fn read_after(
        &self,
        key: &RoomKey,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, EngineError>> {
        let key = key.clone();
        async move {
            self.settled_after(&key, after).await;
            self.read(move |history| history.read_after(&key, after, limit)).await
        }
        .boxed()
    }

    fn read_before(
        &self,
        key: &RoomKey,
        before: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, EngineError>> {
        let key = key.clone();
        self.read(move |history| history.read_before(&key, before, limit))
    }

    fn save_cursors(&self, tenant: &str, user: &str, cursors: Vec<Cursor>) {
        let _ = self.send(Op::SaveCursors(UserCursors { tenant: tenant.into(), user: user.into(), cursors }));
    }

    fn forget_cursor(&self, tenant: &str, user: &str, room: RoomName) {
        let _ = self.send(Op::ForgetCursor { tenant: tenant.into(), user: user.into(), room });
    }

    fn cursors(&self, tenant: &str, user: &str, limit: usize) -> BoxFuture<'_, Result<Vec<Cursor>, EngineError>> {
        let (tenant, user) = (tenant.to_owned(), user.to_owned());
        // Cursor saves are paced: the ones still waiting are saved first, so a `rooms` request
        // sees the room its connection joined a moment ago.
        let (saved_tx, saved) = tokio::sync::oneshot::channel();
        let queued = self.send(Op::SaveCursorsNow(saved_tx)).is_ok();
        let read = self.read(move |history| history.cursors(&tenant, &user, limit));
        async move {
            if queued {
                let _ = saved.await;
            }
            read.await
        }
        .boxed()
    }

    fn maintain(&self, now_ms: u64) {
        for shard in &self.seqs.shards {
            lock(shard).retain(|_, seq| {
                let s = lock(seq);
                s.in_flight > 0 || now_ms.saturating_sub(s.last_used) < self.config.idle_ttl_ms
            });
        }
        let before_ms = now_ms.saturating_sub(self.config.retention.max_age_ms);
        if before_ms > 0 {
            let _ = self.send(Op::Expire { before_ms });
        }
    }

    fn shutdown(&self, deadline: Duration) -> BoxFuture<'_, ()> {
        let queue = self.queue.write().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(queue) = queue {
            let _ = queue.send(Op::Stop);
        }
        let handle = lock(&self.writer).take();
        async move {
            let Some(handle) = handle else { return };
            let joined = tokio::task::spawn_blocking(move || handle.join());
            if tokio::time::timeout(deadline, joined).await.is_err() {
                tracing::warn!("history writer did not finish within the shutdown deadline");
            }
        }
        .boxed()
    }
}

/// Records in the room's sequencer that an append left the queue: `committed`, or refused (its id
/// may then be published again).
fn settle(seq: &SharedSeq, message: &StoredMessage, committed: bool) {
    let mut s = lock(seq);
    s.in_flight = s.in_flight.saturating_sub(1);
    s.settled = s.settled.max(message.offset);
    let id = (message.from.clone(), message.id.clone());
    if committed {
        s.committed = s.committed.max(message.offset);
        if let Some(r) = s.recent.get_mut(&id) {
            r.committed = true;
        }
    } else {
        s.recent.remove(&id);
    }
}

struct Writer {
    rx: Receiver<Op>,
    history: Arc<dyn History>,
    hub: Arc<Hub>,
    settled: Arc<tokio::sync::Notify>,
    /// Messages were delivered when published: the writer only commits and acknowledges.
    deliver_before_commit: bool,
    commit_delay: Duration,
    retention: Retention,
    max_batch: usize,
    linger: Duration,
    pacing: Pacing,
    commit_seconds: metrics::Histogram,
    batch_size: metrics::Histogram,
    failures: metrics::Counter,
    /// The age-retention pass under way: its cutoff and where its next step starts.
    expiring: Option<(u64, Option<Vec<u8>>)>,
    cursors: PacedCursors,
}

/// Least time between two saves of user cursors.
const CURSOR_SAVE_INTERVAL: Duration = Duration::from_millis(500);

/// User cursors (where each user is in the rooms they follow) waiting for their paced save.
/// Every join and every disconnect moves one; saved with each batch, a storm of 3,000 joins
/// cost hundreds of redb commits (8 % of the relay's CPU in a QUIC storm's profile). Paced,
/// they share one commit per [`CURSOR_SAVE_INTERVAL`]. A crash loses at most that much of
/// their movement: a user's cursor is then older than it was, so the offline replay sends more,
/// never less, and a room joined just before the crash is not followed until it is joined
/// again. A clean stop saves them.
#[derive(Default)]
struct PacedCursors {
    pending: Vec<UserCursors>,
    last_save: Option<Instant>,
}

impl PacedCursors {
    /// When the waiting cursors are due (none waiting: never).
    fn due(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        Some(self.last_save.map_or_else(Instant::now, |last| last + CURSOR_SAVE_INTERVAL))
    }
}

/// Commit pacing (`min_commit_interval`): when the writer may wait for more appends before a
/// commit, and for whom. It waits only while a publisher of the last two intervals has no
/// append in the batch yet: publishers that each await their ack before publishing again are
/// all in it at once, and waiting would only slow them (a lone one to one publish per
/// interval), which is why Postgres's `commit_delay` waits only with `commit_siblings`. A
/// publisher is a user of a tenant.
struct Pacing {
    interval: Duration,
    /// When the last commit started.
    last_commit: Option<Instant>,
    /// Publishers of recent commits (as hashes) and when they last committed.
    recent: HashMap<u64, Instant>,
    hasher: RandomState,
}

impl Pacing {
    fn new(interval: Duration) -> Pacing {
        Pacing { interval, last_commit: None, recent: HashMap::new(), hasher: RandomState::new() }
    }

    /// Until when the next commit may wait at `now`; `None`: commit now (pacing off, nothing
    /// committed yet, or the interval already over).
    fn earliest(&self, now: Instant) -> Option<Instant> {
        if self.interval.is_zero() {
            return None;
        }
        self.last_commit.map(|last| last + self.interval).filter(|&earliest| earliest > now)
    }

    fn publisher(&self, key: &RoomKey, message: &StoredMessage) -> u64 {
        self.hasher.hash_one((&*key.tenant, &message.from))
    }

    /// Tracks which recent publishers a batch being collected holds.
    fn waiting(&self) -> Waiting<'_> {
        Waiting { pacing: self, present: std::collections::HashSet::new(), missing: self.recent.len() }
    }

    /// A commit of `records` started at `started`.
    fn committed(&mut self, started: Instant, records: &[Append]) {
        self.last_commit = Some(started);
        if self.interval.is_zero() {
            return;
        }
        let forget = started.checked_sub(self.interval * 2);
        self.recent.retain(|_, seen| forget.is_none_or(|forget| *seen >= forget));
        for append in records {
            self.recent.insert(self.publisher(&append.key, &append.message), started);
        }
    }
}

/// A batch being collected under [`Pacing`]: the recent publishers it does not hold yet.
struct Waiting<'a> {
    pacing: &'a Pacing,
    present: std::collections::HashSet<u64>,
    missing: usize,
}

impl Waiting<'_> {
    fn arrived(&mut self, op: &Op) {
        if let Op::Append { key, message, .. } = op
            && let p = self.pacing.publisher(key, message)
            && self.present.insert(p)
            && self.pacing.recent.contains_key(&p)
        {
            self.missing -= 1;
        }
    }

    /// Every recent publisher is in the batch: nobody else is likely to join it.
    fn complete(&self) -> bool {
        self.missing == 0
    }
}

/// Rooms one age-retention step visits: a short write, so commits queued behind it wait little.
const EXPIRE_ROOMS_PER_STEP: usize = 256;

/// Longest a read waits for early-delivered offsets to be committed; then it reads anyway.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

impl Writer {
    fn run(mut self) {
        let mut stop = false;
        while !stop {
            if self.cursors.due().is_some_and(|due| due <= Instant::now()) {
                self.save_cursors();
            }
            // Age retention runs in steps between batches, only while nothing else is queued;
            // waiting cursors cut the wait for the next op short when they fall due.
            let first = if self.expiring.is_some() {
                match self.rx.try_recv() {
                    Ok(op) => op,
                    Err(TryRecvError::Empty) => {
                        self.expire_step();
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => {
                        self.save_cursors();
                        return;
                    }
                }
            } else if let Some(due) = self.cursors.due() {
                match self.rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                    Ok(op) => op,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => {
                        self.save_cursors();
                        return;
                    }
                }
            } else {
                match self.rx.recv() {
                    Ok(op) => op,
                    Err(_) => return,
                }
            };
            let mut batch = vec![first];
            self.wait_for_interval(&mut batch);
            let deadline = Instant::now() + self.linger;
            while batch.len() < self.max_batch && Instant::now() < deadline {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            stop = self.process(batch);
        }
        // Anything queued after the stop is answered by `Done`'s drop (nothing is: senders
        // stop queuing before the stop). Everything delivered was committed: a clean stop.
        while self.rx.try_recv().is_ok() {}
        self.save_cursors();
        if let Err(err) = self.history.end_run() {
            tracing::warn!(%err, "recording the clean stop failed; rooms get new epochs at the next start");
        }
    }

    /// Collects into `batch` while [`Pacing`] says to wait. A stop or a full batch ends the
    /// wait too.
    fn wait_for_interval(&mut self, batch: &mut Vec<Op>) {
        let Some(earliest) = self.pacing.earliest(Instant::now()) else { return };
        let mut waiting = self.pacing.waiting();
        for op in batch.iter() {
            waiting.arrived(op);
        }
        while batch.len() < self.max_batch && !matches!(batch.last(), Some(Op::Stop)) && !waiting.complete() {
            let Some(left) = earliest.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                return;
            };
            match self.rx.recv_timeout(left) {
                Ok(op) => {
                    waiting.arrived(&op);
                    batch.push(op);
                }
                Err(_) => return,
            }
        }
    }

    /// Commits one batch; returns true when a stop was reached.
    fn process(&mut self, batch: Vec<Op>) -> bool {
        let mut stop = false;
        let mut records: Vec<Append> = Vec::new();
        let mut waiting: Vec<(SharedSeq, Done)> = Vec::new();
        let mut after: Vec<Op> = Vec::new();
        // Cursor saves of the whole batch share one commit.
        let mut cursors: Vec<UserCursors> = Vec::new();
        for op in batch {
            match op {
                Op::SaveCursors(update) => cursors.push(update),
                Op::Append { seq, key, generation, epoch, message, done } => {
                    if lock(&seq).generation == generation {
                        records.push(Append { key, epoch, message });
                        waiting.push((seq, done));
                    } else {
                        settle(&seq, &message, false);
                        done.complete(Err(EngineError::Unavailable("an earlier commit failed".into())));
                    }
                }
                Op::Stop => stop = true,
                other => after.push(other),
            }
        }
        if !records.is_empty() {
            self.commit(records, waiting);
            self.settled.notify_waiters();
        }
        // Saved when due (at the top of the writer's loop) or at the stop (after it), but at
        // once when forgetting a cursor, or a read of them, follows the saves queued before it.
        self.cursors.pending.extend(cursors);
        if after.iter().any(|op| matches!(op, Op::ForgetCursor { .. } | Op::SaveCursorsNow(_))) {
            self.save_cursors();
        }
        for op in after {
            self.side_op(op);
        }
        stop
    }

    fn commit(&mut self, records: Vec<Append>, waiting: Vec<(SharedSeq, Done)>) {
        if !self.commit_delay.is_zero() {
            std::thread::sleep(self.commit_delay);
        }
        let started = Instant::now();
        self.pacing.committed(started, &records);
        let result = self.history.append(&records, &self.retention);
        self.commit_seconds.record(started.elapsed().as_secs_f64());
        self.batch_size.record(records.len() as f64);
        match result {
            Ok(()) => {
                let committed = Instant::now();
                // Subscribers' writers wake once the whole commit is queued (see `Wakes`),
                // also for what completions fan out (a persistent topic's events).
                let (mut wakes, mut gathered) = (Wakes::new(), Wakes::new());
                Hub::gathering(&mut gathered, || {
                    for (append, (seq, done)) in records.into_iter().zip(waiting) {
                        let position = Position { epoch: append.epoch, offset: append.message.offset };
                        if !self.deliver_before_commit {
                            let delivered =
                                self.hub.deliver_batched(&append.key, append.epoch, &append.message, &mut wakes);
                            crate::metrics::delivered(committed, delivered.delivered);
                        }
                        settle(&seq, &append.message, true);
                        done.complete(Ok(Accepted { position, duplicate: false }));
                    }
                });
                wakes.append(gathered);
                // Off this thread, so it goes back to committing (see `Hub::wake`).
                self.hub.wake(wakes);
            }
            Err(err) => {
                self.failures.increment(1);
                tracing::error!(%err, messages = records.len(), "history commit failed; publishes refused");
                let mut rolled_back: Vec<&SharedSeq> = Vec::new();
                for (append, (seq, _)) in records.iter().zip(&waiting) {
                    // Early-delivered offsets were seen: never handed out again.
                    if !self.deliver_before_commit && !rolled_back.iter().any(|r| Arc::ptr_eq(r, seq)) {
                        let mut s = lock(seq);
                        s.assigned = s.committed;
                        s.generation += 1;
                        rolled_back.push(seq);
                    }
                    settle(seq, &append.message, false);
                }
                for (_, done) in waiting {
                    done.complete(Err(EngineError::Unavailable(err.to_string())));
                }
            }
        }
    }

    /// One step of the age-retention pass under way.
    fn expire_step(&mut self) {
        let Some((before_ms, resume)) = self.expiring.take() else { return };
        match self.history.expire(before_ms, resume.as_deref(), EXPIRE_ROOMS_PER_STEP) {
            Ok(step) => {
                if step.deleted > 0 {
                    tracing::debug!(deleted = step.deleted, "expired old history");
                }
                self.expiring = step.resume.map(|next| (before_ms, Some(next)));
            }
            Err(err) => tracing::warn!(%err, "age retention failed; retried at the next maintenance"),
        }
    }

    /// Saves the waiting cursors in one commit.
    fn save_cursors(&mut self) {
        if self.cursors.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.cursors.pending);
        self.cursors.last_save = Some(Instant::now());
        if let Err(err) = self.history.save_cursors(&pending) {
            tracing::warn!(%err, "saving user cursors failed");
        }
    }

    fn side_op(&mut self, op: Op) {
        let result = match op {
            Op::Duplicate { seq, generation, position, done } => {
                if lock(&seq).generation == generation {
                    done.complete(Ok(Accepted { position, duplicate: true }));
                } else {
                    done.complete(Err(EngineError::Unavailable("the original publish failed".into())));
                }
                Ok(())
            }
            Op::Expire { before_ms } => {
                // A pass already under way finishes first; the next maintenance restarts it.
                if self.expiring.is_none() {
                    self.expiring = Some((before_ms, None));
                }
                Ok(())
            }
            Op::ForgetCursor { tenant, user, room } => self.history.forget_cursor(&tenant, &user, &room),
            Op::SaveCursorsNow(saved) => {
                let _ = saved.send(());
                Ok(())
            }
            Op::Append { .. } | Op::SaveCursors(_) | Op::Stop => Ok(()),
        };
        if let Err(err) = result {
            tracing::warn!(%err, "history maintenance failed");
        }
    }
}
