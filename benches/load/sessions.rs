//! Collaborative sessions (docs/sessions.md): N users joined to one session, each sending a
//! JSON Patch to its own key --rate times per second (disjoint paths: every patch applies,
//! rebased when its base is behind) and, optionally, a cursor --cursor-rate times per second.
//! Timed: patch sent -> `applied` at the sender, patch sent -> `patched` at each member, and per
//! patch the time until the *last* member has it (applied at every member). Then, with
//! --doc-kib, a second session grown to that size by patches, joined from fresh connections:
//! the time to receive and parse the document (`join` -> `joined`), first cold (after the relay
//! unloaded the idle session: it reads the snapshot and the patches after it from its store and
//! replays them), then warm.
//!
//! With --nodes 2 (and `--store redis`), a second relay of the same Redis region is started and
//! every other user connects to it: the session is held by the first node (user 0 creates it), so
//! half the members reach it across nodes (docs/sessions.md, "Sessions in a Redis region").
//! With --yjs the session is a `yjs` session: each user sends Yjs updates (its own map key)
//! instead of JSON patches, timed at every other member (a relayed update skips its sender); the
//! big document is a Y.Text, joined with a y-protocols sync (join, step 1 -> step 2 applied).
//!
//! Bounded: at most 2,000 users, --duration at most 600 s, the drain after the window at most
//! --drain seconds, at most 20 joins of the big document.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgerelay::client::collab::PatchResult;
use edgerelay::client::{Client, Event};
use edgerelay::proto::{Payload, SessionAction, SessionEvent, SessionRole};
use futures_util::stream::StreamExt;
use serde::Serialize;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, ReadTxn, Text, Transact, Update};

use crate::fanout::{self, CodecArg};
use crate::relay::{RelayUnderTest, TransportChoice};
use crate::stats::{self, Errors, Latency, SharedLatency};

const MAX_USERS: usize = 2000;
const MAX_JOINS: usize = 20;
const SESSION: &str = "load:session";
const BIG: &str = "load:big";

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SessionsArgs {
    /// Users joined to the session (one connection each).
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Patches per second per user (0: none).
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Cursor updates sent per second per user (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub cursor_rate: f64,
    /// Seconds to wait after the window for every member to have every patch.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Size of the big document (KiB) whose join is timed (0: skip). The relay needs
    /// `sessions.max_document_bytes` above it and `limits.outbox_bytes` twice that.
    #[arg(long, default_value_t = 0)]
    pub doc_kib: usize,
    /// Fresh joins of the big document, at most 20.
    #[arg(long, default_value_t = 5)]
    pub joins: usize,
    #[arg(long, value_enum, default_value = "postcard")]
    pub codec: CodecArg,
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Relays of one Redis region the users are spread over (1 or 2; 2 needs `--store redis`
    /// and `--relay-env EDGERELAY_REDIS__URL=...`).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// A `yjs` session: Yjs updates instead of JSON patches.
    #[arg(long)]
    pub yjs: bool,
}

#[derive(Debug, Serialize)]
pub struct SessionsReport {
    pub args: SessionsArgs,
    pub transport: TransportChoice,
    pub connect: Latency,
    pub patches_sent: u64,
    pub patches_applied: u64,
    /// Patches every member had by the end of the drain.
    pub patches_complete: u64,
    /// Sent -> `applied` at the sender.
    pub ack: Latency,
    /// Sent -> `patched` at one member (every member's delivery counted).
    pub delivery: Latency,
    /// Sent -> `patched` at the last member: applied at every member.
    pub all_members: Latency,
    pub cursors_sent: u64,
    pub cursors_received: u64,
    /// The relay's CPU during the window and drain, ms (when it is a local process).
    pub relay_cpu_ms: Option<f64>,
    /// `join` -> `joined` with the big document when the relay loads it from its store.
    pub big_join_cold_ms: Option<f64>,
    /// `join` -> `joined` with the big document, from a fresh connection.
    pub big_join: Latency,
    pub big_doc_bytes: usize,
    pub errors: std::collections::BTreeMap<String, u64>,
}

#[derive(Default)]
struct Tallies {
    ack: SharedLatency,
    delivery: SharedLatency,
    all: SharedLatency,
    /// Per version (a Yjs update: its message's hash): (sent at, members that have it).
    pending: std::sync::Mutex<HashMap<u64, (u64, usize)>>,
    /// Yjs: the send time of each update message, by its hash (updates carry no time).
    yjs_sent: std::sync::Mutex<HashMap<u64, u64>>,
    sent: AtomicU64,
    applied: AtomicU64,
    complete: AtomicU64,
    cursors_sent: AtomicU64,
    cursors: AtomicU64,
    errors: Errors,
}

/// The send time a patch carries: `[{"op":"replace","path":"/u7","value":{"n":3,"t":<ns>}}]`.
fn sent_at(patch: &edgerelay::proto::Payload) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(&patch.0).ok()?;
    v.get(0)?.get("value")?.get("t")?.as_u64()
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(bytes)
}

/// A patch (version `id`, sent at `t`) or Yjs update (`id` its hash) reached one more member.
fn arrived(tallies: &Tallies, id: u64, t: u64, members: usize) {
    let now = stats::now_ns();
    tallies.delivery.record(Duration::from_nanos(now.saturating_sub(t)));
    let mut pending = tallies.pending.lock().unwrap_or_else(|e| e.into_inner());
    let entry = pending.entry(id).or_insert((t, 0));
    entry.1 += 1;
    if entry.1 == members {
        pending.remove(&id);
        drop(pending);
        tallies.all.record(Duration::from_nanos(now.saturating_sub(t)));
        tallies.complete.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads one member's events until `stop`: times every `patched` (or relayed Yjs update) at
/// the `members` that get it, counts cursors.
async fn read(
    mut events: tokio::sync::mpsc::Receiver<Event>,
    members: usize,
    tallies: Arc<Tallies>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.recv() => event,
        };
        let update = match event {
            Some(Event::Session(update)) => update,
            Some(Event::Closed { .. }) | None => return,
            Some(_) => continue,
        };
        match update.event {
            SessionEvent::Patched { patch } => {
                let Some(t) = sent_at(&patch.patch) else { continue };
                arrived(&tallies, patch.version, t, members);
            }
            SessionEvent::Yjs { message } => {
                let id = hash(&message.0);
                let t = tallies.yjs_sent.lock().unwrap_or_else(|e| e.into_inner()).get(&id).copied();
                if let Some(t) = t {
                    arrived(&tallies, id, t, members);
                }
            }
            SessionEvent::Cursor { data: Some(_), .. } => {
                tallies.cursors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

pub async fn sessions(
    relay: &RelayUnderTest,
    second: Option<&RelayUnderTest>,
    args: &SessionsArgs,
    transport: TransportChoice,
    window: Duration,
    show_progress: bool,
) -> anyhow::Result<SessionsReport> {
    anyhow::ensure!((1..=MAX_USERS).contains(&args.users), "1 to {MAX_USERS} users");
    anyhow::ensure!((0.0..=100.0).contains(&args.rate), "--rate from 0 to 100 per user");
    anyhow::ensure!((0.0..=100.0).contains(&args.cursor_rate), "--cursor-rate from 0 to 100 per user");
    anyhow::ensure!(args.drain >= 0.0 && args.drain <= 120.0, "--drain from 0 to 120 s");
    anyhow::ensure!(args.joins <= MAX_JOINS, "at most {MAX_JOINS} joins");
    anyhow::ensure!((1..=2).contains(&args.nodes), "--nodes 1 or 2");
    anyhow::ensure!(args.nodes == 1 || second.is_some(), "--nodes 2 needs the second relay");
    // Every other user on the second node.
    let node = |i: usize| match second {
        Some(second) if i % 2 == 1 => second,
        _ => relay,
    };
    let tallies = Arc::new(Tallies::default());
    let mut connect = stats::histogram();
    let opens = futures_util::stream::iter(0..args.users)
        .map(|i| async move {
            let (client, took) = fanout::connect_one(node(i), transport, i, format!("u{i}"), args.codec).await?;
            anyhow::Ok((i, client, took))
        })
        .buffer_unordered(args.connect_concurrency.max(1));
    tokio::pin!(opens);
    let mut clients: Vec<Option<Client>> = (0..args.users).map(|_| None).collect();
    while let Some(opened) = opens.next().await {
        let (i, client, took) = opened?;
        stats::record(&mut connect, took);
        clients[i] = Some(client);
    }
    let clients: Vec<Client> = clients.into_iter().flatten().collect();
    let doc: serde_json::Map<String, serde_json::Value> =
        (0..args.users).map(|i| (format!("u{i}"), serde_json::json!(null))).collect();
    clients[0].session_destroy(SESSION).await.ok();
    if args.yjs {
        let create = SessionAction::CreateYjs { max_bytes: None, default_role: SessionRole::Editor };
        clients[0].session_action(SESSION, create).await?;
        for client in &clients[1..] {
            client.session_action(SESSION, SessionAction::Join { version: None }).await?;
        }
    } else {
        clients[0].session_create(SESSION, edgerelay::proto::Payload::json(&doc), None, SessionRole::Editor).await?;
        for client in &clients[1..] {
            client.session_join(SESSION, None).await?;
        }
    }
    // A relayed Yjs update skips its sender; a `patched` goes to every member.
    let members = if args.yjs { args.users - 1 } else { args.users };
    if show_progress {
        eprintln!(
            "{} users joined {SESSION}; {} patches/s and {} cursors/s each",
            args.users, args.rate, args.cursor_rate
        );
    }

    // Each client: a writer task (patches and cursors on a timer) and a reader task. The
    // client is shared by both: requests go out through it, events come in through the reader.
    let stop = tokio_util::sync::CancellationToken::new();
    let cpu = || -> Option<Duration> { Some(relay.cpu()? + second.map_or(Some(Duration::ZERO), |s| s.cpu())?) };
    let cpu_before = cpu();
    let mut readers = tokio::task::JoinSet::new();
    let mut writers = tokio::task::JoinSet::new();
    let mut handles = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        // The reader owns the client's event stream; the writer shares the client for requests.
        readers.spawn(read(client.take_events(), members, tallies.clone(), stop.clone()));
        let handle = Arc::new(client);
        handles.push(handle.clone());
        let (tallies, rate, cursor_rate, yjs) = (tallies.clone(), args.rate, args.cursor_rate, args.yjs);
        writers.spawn(async move {
            // Yjs: this user's own document; each update sets its key in map `m`.
            let ydoc = Doc::with_client_id(i as u64 + 1);
            let ymap = ydoc.get_or_insert_map("m");
            let ends = Instant::now() + window;
            let tick = |rate: f64| Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut patches = tokio::time::interval(tick(rate));
            let mut cursors = tokio::time::interval(tick(cursor_rate));
            // Spread the users over the first interval.
            tokio::time::sleep(tick(rate.max(cursor_rate)).mul_f64(i as f64 / 2000.0)).await;
            let (mut n, mut base) = (0u64, 0u64);
            while Instant::now() < ends {
                tokio::select! {
                    _ = patches.tick(), if rate > 0.0 => {
                        if yjs {
                            n += 1;
                            let update = {
                                let mut txn = ydoc.transact_mut();
                                ymap.insert(&mut txn, format!("u{i}"), n as f64);
                                txn.encode_update_v1()
                            };
                            let message = Message::Sync(SyncMessage::Update(update)).encode_v1();
                            let t = stats::now_ns();
                            tallies.yjs_sent.lock().unwrap_or_else(|e| e.into_inner()).insert(hash(&message), t);
                            tallies.sent.fetch_add(1, Ordering::Relaxed);
                            match handle.session_action(SESSION, SessionAction::Yjs { message: Payload::from(message) }).await {
                                Ok(SessionEvent::Applied { .. }) => {
                                    tallies.ack.record(Duration::from_nanos(stats::now_ns().saturating_sub(t)));
                                    tallies.applied.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(_) => tallies.errors.add("unexpected answer"),
                                Err(err) => tallies.errors.client(&err),
                            }
                            continue;
                        }
                        n += 1;
                        let t = stats::now_ns();
                        let patch = serde_json::json!([{"op": "replace", "path": format!("/u{i}"), "value": {"n": n, "t": t}}]);
                        tallies.sent.fetch_add(1, Ordering::Relaxed);
                        match handle.session_patch(SESSION, &format!("u{i}-{n}"), base, edgerelay::proto::Payload::json(&patch)).await {
                            Ok(PatchResult::Applied { version, .. }) => {
                                tallies.ack.record(Duration::from_nanos(stats::now_ns().saturating_sub(t)));
                                tallies.applied.fetch_add(1, Ordering::Relaxed);
                                base = version;
                            }
                            Ok(PatchResult::Conflict { version, .. }) => {
                                tallies.errors.add("conflict");
                                base = version;
                            }
                            Err(err) => tallies.errors.client(&err),
                        }
                    }
                    _ = cursors.tick(), if cursor_rate > 0.0 => {
                        let data = serde_json::json!({"x": n, "y": i});
                        if handle.session_cursor(SESSION, edgerelay::proto::Payload::json(&data)).await.is_ok() {
                            tallies.cursors_sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    while writers.join_next().await.is_some() {}
    // Drain: until every applied patch reached every member, or the bound.
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while Instant::now() < drain_until
        && tallies.complete.load(Ordering::Relaxed) < tallies.applied.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let relay_cpu_ms = match (cpu_before, cpu()) {
        (Some(a), Some(b)) => Some((b - a).as_secs_f64() * 1000.0),
        _ => None,
    };
    stop.cancel();
    while readers.join_next().await.is_some() {}
    // The writers are done: each client is held by its handle alone again.
    let clients: Vec<Client> = handles.into_iter().filter_map(|h| Arc::try_unwrap(h).ok()).collect();

    // The big document: grown by patches of at most 48 KiB, then joined from fresh connections.
    let mut big_join = stats::histogram();
    let mut big_doc_bytes = 0;
    let mut big_join_cold_ms = None;
    if args.doc_kib > 0 && !clients.is_empty() {
        let owner = &clients[0];
        owner.session_destroy(BIG).await.ok();
        let chunk = 48 * 1024;
        let parts = (args.doc_kib * 1024).div_ceil(chunk);
        if args.yjs {
            let create = SessionAction::CreateYjs { max_bytes: None, default_role: SessionRole::Editor };
            owner.session_action(BIG, create).await?;
            let ydoc = Doc::with_client_id(999_999);
            let text = ydoc.get_or_insert_text("t");
            for k in 0..parts {
                let s: String = (0..chunk).map(|j| (b'a' + ((j + k) % 26) as u8) as char).collect();
                let update = {
                    let mut txn = ydoc.transact_mut();
                    let len = text.len(&txn);
                    text.insert(&mut txn, len, &s);
                    txn.encode_update_v1()
                };
                let message = Payload::from(Message::Sync(SyncMessage::Update(update)).encode_v1());
                match owner.session_action(BIG, SessionAction::Yjs { message }).await? {
                    SessionEvent::Applied { .. } => {}
                    other => anyhow::bail!("growing the big Yjs document: {other:?}"),
                }
            }
        } else {
            owner.session_create(BIG, edgerelay::proto::Payload::from("{}"), None, SessionRole::Editor).await?;
        }
        for k in (0..parts).filter(|_| !args.yjs) {
            let text: String = (0..chunk).map(|j| (b'a' + ((j + k) % 26) as u8) as char).collect();
            let patch = serde_json::json!([{"op": "add", "path": format!("/part{k}"), "value": text}]);
            match owner
                .session_patch(BIG, &format!("big-{k}"), k as u64, edgerelay::proto::Payload::json(&patch))
                .await?
            {
                PatchResult::Applied { .. } => {}
                other => anyhow::bail!("growing the big document: {other:?}"),
            }
        }
        // Nobody joined: the relay unloads the session at its next sweep (at most 10 s later).
        owner.session_leave(BIG).await?;
        tokio::time::sleep(Duration::from_secs(11)).await;
        // The first join loads it (cold); that reader stays, so the others find it loaded.
        let mut first = None;
        for j in 0..=args.joins {
            let (reader, _) =
                fanout::connect_one(relay, transport, args.users + j, format!("reader{j}"), args.codec).await?;
            let started = Instant::now();
            if args.yjs {
                big_doc_bytes = yjs_join(&reader).await?;
            } else {
                let joined = reader.session_join(BIG, None).await?;
                big_doc_bytes = serde_json::to_vec(&joined.doc.doc)?.len();
            }
            if j == 0 {
                big_join_cold_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                first = Some(reader);
            } else {
                stats::record(&mut big_join, started.elapsed());
                reader.close().await;
            }
        }
        if let Some(reader) = first {
            reader.close().await;
        }
        if show_progress {
            eprintln!("{BIG}: {big_doc_bytes} bytes, joined {} times", args.joins);
        }
    }
    for client in clients {
        client.close().await;
    }
    Ok(SessionsReport {
        args: args.clone(),
        transport,
        connect: Latency::of(&connect),
        patches_sent: tallies.sent.load(Ordering::Relaxed),
        patches_applied: tallies.applied.load(Ordering::Relaxed),
        patches_complete: tallies.complete.load(Ordering::Relaxed),
        ack: tallies.ack.latency(),
        delivery: tallies.delivery.latency(),
        all_members: tallies.all.latency(),
        cursors_sent: tallies.cursors_sent.load(Ordering::Relaxed),
        cursors_received: tallies.cursors.load(Ordering::Relaxed),
        relay_cpu_ms,
        big_join_cold_ms,
        big_join: Latency::of(&big_join),
        big_doc_bytes,
        errors: tallies.errors.snapshot(),
    })
}

/// Joins the big Yjs session and syncs a fresh document (step 1 -> step 2, applied); the
/// update's size.
async fn yjs_join(reader: &Client) -> anyhow::Result<usize> {
    reader.session_action(BIG, SessionAction::Join { version: None }).await?;
    let ydoc = Doc::new();
    let sv = ydoc.transact().state_vector();
    let step1 = Payload::from(Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1());
    let SessionEvent::Yjs { message } = reader.session_action(BIG, SessionAction::Yjs { message: step1 }).await? else {
        anyhow::bail!("expected sync step 2");
    };
    let Ok(Message::Sync(SyncMessage::SyncStep2(update))) = Message::decode_v1(&message.0) else {
        anyhow::bail!("expected sync step 2");
    };
    ydoc.transact_mut().apply_update(Update::decode_v1(&update)?)?;
    Ok(update.len())
}

pub fn table(report: &SessionsReport) -> String {
    let a = &report.args;
    stats::table(
        &format!(
            "session ({:?}, {} users, {} patches/s and {} cursors/s each)",
            report.transport, a.users, a.rate, a.cursor_rate
        ),
        &[
            (
                "patches".into(),
                format!(
                    "{} sent, {} applied, {} at every member",
                    report.patches_sent, report.patches_applied, report.patches_complete
                ),
            ),
            ("sent -> applied (sender)".into(), report.ack.line()),
            ("sent -> patched (each member)".into(), report.delivery.line()),
            ("sent -> patched (every member)".into(), report.all_members.line()),
            ("cursors".into(), format!("{} sent, {} delivered", report.cursors_sent, report.cursors_received)),
            ("relay CPU (window + drain)".into(), stats::fmt_opt(report.relay_cpu_ms, 0) + " ms"),
            (
                format!("join, {} byte document, cold", report.big_doc_bytes),
                stats::fmt_opt(report.big_join_cold_ms, 2) + " ms",
            ),
            (format!("join, {} byte document, warm", report.big_doc_bytes), report.big_join.line()),
            ("connect".into(), report.connect.line()),
            ("errors".into(), format!("{:?}", report.errors)),
        ],
    )
}
