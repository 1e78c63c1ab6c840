//! Call storm: N caller and callee pairs (two connections each: caller `k{i}`, callee `e{i}`)
//! set up and tear down N 1:1 calls at once, --rounds times. Per call: the caller initiates
//! while the callee waits for its `ring` (initiate -> ring), the callee answers at once and both
//! wait for `state: connected` (answer -> both connected), then the caller hangs up and both wait
//! for `state: ended`. Only the relay's signaling is measured (no media: that is WebRTC's, peer to
//! peer; tests/browser_webrtc.rs times it in Chromium).
//!
//! Every call of a round is placed at once (one task per pair); the next round starts when all
//! of them ended. A call that fails or takes longer than --call-timeout is counted, not retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgerelay::client::Client;
use edgerelay::proto::{CallEvent, CallMedia, CallState};
use futures_util::stream::StreamExt;
use serde::Serialize;

use crate::conns::MAX_CONNECTIONS;
use crate::fanout::{self, CodecArg};
use crate::relay::{RelayUnderTest, TransportChoice};
use crate::stats::{self, Errors, Latency, SharedLatency};

/// Most rounds of one run.
const MAX_ROUNDS: usize = 20;

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct CallsArgs {
    /// Simultaneous calls per round (two connections each).
    #[arg(long, default_value_t = 100)]
    pub calls: usize,
    /// Rounds of set up and tear down, at most 20.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds one call (set up and tear down) may take before it counts as failed.
    #[arg(long, default_value_t = 20.0)]
    pub call_timeout: f64,
    /// Connections opened at once during setup.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct CallsReport {
    pub args: CallsArgs,
    pub transport: TransportChoice,
    pub connect: Latency,
    pub completed: u64,
    pub failed: u64,
    /// Initiate sent -> `ring` at the callee's connection.
    pub ring: Latency,
    /// Answer sent -> `state: connected` at both connections.
    pub connected: Latency,
    /// Hang-up sent -> `state: ended` at both connections.
    pub ended: Latency,
    /// Per round: from the barrier to the last call of the round connected or failed.
    pub round_ms: Vec<f64>,
    pub errors: std::collections::BTreeMap<String, u64>,
}

#[derive(Default)]
struct Tallies {
    ring: SharedLatency,
    connected: SharedLatency,
    ended: SharedLatency,
    errors: Errors,
}

/// Reads `client`'s call events until `accept` takes one of call `id` (any call when `id` is
/// empty); returns that call's id.
async fn until(client: &mut Client, id: &str, accept: impl Fn(&CallEvent) -> bool) -> anyhow::Result<String> {
    loop {
        let update = client.next_call_update().await?;
        if (id.is_empty() || update.call == id) && accept(&update.event) {
            return Ok(update.call);
        }
    }
}

fn is_state(event: &CallEvent, want: fn(&CallState) -> bool) -> bool {
    matches!(event, CallEvent::State { state, .. } if want(state))
}

/// One call between the pair, timed into `tallies`.
async fn one_call(caller: &mut Client, callee: &mut Client, callee_id: &str, tallies: &Tallies) -> anyhow::Result<()> {
    let placed = Instant::now();
    let ringing = until(callee, "", |e| matches!(e, CallEvent::Ring { .. }));
    let (id, rung) = tokio::join!(caller.call_initiate(callee_id, CallMedia::Video), ringing);
    let (id, rung) = (id?, rung?);
    anyhow::ensure!(id == rung, "rang for call {rung}, placed {id}");
    tallies.ring.record(placed.elapsed());

    let answered = Instant::now();
    callee.call_answer(&id).await?;
    let connected = |e: &CallEvent| is_state(e, |s| matches!(s, CallState::Connected {}));
    until(callee, &id, connected).await?;
    until(caller, &id, connected).await?;
    tallies.connected.record(answered.elapsed());

    let hung_up = Instant::now();
    caller.call_hang_up(&id).await?;
    let ended = |e: &CallEvent| is_state(e, |s| matches!(s, CallState::Ended { .. }));
    until(caller, &id, ended).await?;
    until(callee, &id, ended).await?;
    tallies.ended.record(hung_up.elapsed());
    Ok(())
}

pub async fn calls(
    relay: &RelayUnderTest,
    args: &CallsArgs,
    transport: TransportChoice,
    show_progress: bool,
) -> anyhow::Result<CallsReport> {
    anyhow::ensure!((1..=MAX_CONNECTIONS / 2).contains(&args.calls), "1 to {} calls", MAX_CONNECTIONS / 2);
    anyhow::ensure!((1..=MAX_ROUNDS).contains(&args.rounds), "1 to {MAX_ROUNDS} rounds");
    anyhow::ensure!(args.call_timeout > 0.0 && args.call_timeout <= 120.0, "--call-timeout from 0 to 120 s");
    let tallies = Arc::new(Tallies::default());
    let mut connect = stats::histogram();
    let opens = futures_util::stream::iter(0..args.calls * 2)
        .map(|i| async move {
            let user = if i % 2 == 0 { format!("k{}", i / 2) } else { format!("e{}", i / 2) };
            let (client, took) = fanout::connect_one(relay, transport, i, user, CodecArg::Postcard).await?;
            anyhow::Ok((i, client, took))
        })
        .buffer_unordered(args.connect_concurrency.max(1));
    tokio::pin!(opens);
    let mut clients: Vec<Option<Client>> = (0..args.calls * 2).map(|_| None).collect();
    while let Some(opened) = opens.next().await {
        match opened {
            Ok((i, client, took)) => {
                stats::record(&mut connect, took);
                clients[i] = Some(client);
            }
            Err(err) => crate::conns::count_error(&tallies.errors, &err),
        }
    }
    let connected = clients.iter().flatten().count();
    anyhow::ensure!(
        connected == args.calls * 2,
        "{} connections failed: {:?}",
        args.calls * 2 - connected,
        tallies.errors.snapshot()
    );
    if show_progress {
        eprintln!("{} pairs connected; {} rounds of {} simultaneous calls", args.calls, args.rounds, args.calls);
    }

    // Each round, one task per pair (a JoinSet: the round ends when every task did, and an
    // aborted or panicked one is a failed call whose pair sits out the later rounds).
    let timeout = Duration::from_secs_f64(args.call_timeout);
    let mut pairs: Vec<(usize, Client, Client)> = Vec::with_capacity(args.calls);
    let mut opened = clients.into_iter().flatten();
    for i in 0..args.calls {
        if let (Some(caller), Some(callee)) = (opened.next(), opened.next()) {
            pairs.push((i, caller, callee));
        }
    }
    let mut failed = 0u64;
    let mut round_ms = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let began = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        let placed = pairs.len();
        for (i, mut caller, mut callee) in pairs.drain(..) {
            let tallies = tallies.clone();
            set.spawn(async move {
                let callee_id = format!("e{i}");
                let call = one_call(&mut caller, &mut callee, &callee_id, &tallies);
                let ok = match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(())) => true,
                    Ok(Err(err)) => {
                        crate::conns::count_error(&tallies.errors, &err);
                        false
                    }
                    Err(_) => {
                        tallies.errors.add("call_timeout");
                        false
                    }
                };
                (ok, (i, caller, callee))
            });
        }
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((ok, pair)) => {
                    failed += u64::from(!ok);
                    pairs.push(pair);
                }
                Err(err) => {
                    tallies.errors.add(format!("task: {err}"));
                    failed += 1;
                }
            }
        }
        // Pairs lost to a panicked task count as failed in every later round.
        failed += (placed - pairs.len()) as u64 * (args.rounds - round - 1) as u64;
        round_ms.push(began.elapsed().as_secs_f64() * 1000.0);
        if show_progress {
            eprintln!("round {}: {} calls set up and torn down in {:.1} ms", round + 1, placed, round_ms[round]);
        }
    }
    for (_, caller, callee) in pairs {
        caller.close().await;
        callee.close().await;
    }
    Ok(CallsReport {
        args: args.clone(),
        transport,
        connect: Latency::of(&connect),
        completed: (args.calls * args.rounds) as u64 - failed,
        failed,
        ring: tallies.ring.latency(),
        connected: tallies.connected.latency(),
        ended: tallies.ended.latency(),
        round_ms,
        errors: tallies.errors.snapshot(),
    })
}

pub fn table(report: &CallsReport) -> String {
    let rounds: Vec<String> = report.round_ms.iter().map(|ms| format!("{ms:.1}")).collect();
    stats::table(
        &format!("call storm ({:?}, {} calls x {} rounds)", report.transport, report.args.calls, report.args.rounds),
        &[
            ("calls completed".into(), format!("{} ({} failed)", report.completed, report.failed)),
            ("initiate -> ring".into(), report.ring.line()),
            ("answer -> both connected".into(), report.connected.line()),
            ("hang up -> both ended".into(), report.ended.line()),
            ("round (ms)".into(), rounds.join(", ")),
            ("connect".into(), report.connect.line()),
            ("errors".into(), format!("{:?}", report.errors)),
        ],
    )
}
