//! The offline webhook: drains the durable outbox ([`super::backend`]) into signed `POST`s to
//! `notifications.webhook_url`, with `src/hooks`' HTTP client and signature.
//!
//! Each delivery is called until the webhook answers 2xx, at most `webhook_max_attempts` times,
//! waiting [`backoff`] between calls (doubling, capped); then it becomes a dead letter. A
//! delivery leaves the outbox only once answered 2xx (or dead), so a restart resumes it: the
//! webhook sees each notification once per success, and may see it again only if the relay
//! stopped between the answer and its commit (receivers dedupe by `delivery`).
//!
//! One task runs the loop (the relay's service set, stopped by its token); calls in flight are
//! futures inside it, at most `webhook_concurrency`, each bounded by `webhook_timeout_ms`.
//!
//! In a Redis region the outbox is shared: each node's loop takes deliveries from it
//! ([`Backend::pull`]: new ones every [`PULL_EVERY`], at once when this node queued one), holds
//! at most [`HOLD_PER_CALL`] per call slot, keeps what it holds alive every third of
//! `webhook_claim_after_ms`, and takes over what a silent node held longer than that. A failed
//! call's next attempt goes back to the shared outbox, for whichever node is free.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use ring::hmac;
use tokio_util::sync::CancellationToken;

use super::backend::Backend;
use super::store::Delivery;
use crate::config::NotificationsConfig;
use crate::hooks::client::{self, Target};
use crate::hub::presence::UserKey;
use crate::lock::lock;

/// The wait after the `failures`-th failed call: `base`, doubled per further failure, at most
/// `max`.
pub fn backoff(failures: u32, base_ms: u64, max_ms: u64) -> u64 {
    let doublings = failures.saturating_sub(1).min(40);
    base_ms.saturating_mul(1u64 << doublings).min(max_ms)
}

/// How often a region's node looks for new deliveries when nothing woke it.
pub const PULL_EVERY: Duration = Duration::from_millis(250);
/// Deliveries a region's node holds per call slot (due now or waiting for their retry time).
pub const HOLD_PER_CALL: usize = 4;

#[derive(Default)]
struct Queue {
    /// `(next_at, seq)`: what is due first.
    due: BTreeSet<(u64, u64)>,
    pending: HashMap<u64, Delivery>,
}

pub struct Webhook {
    target: Target,
    key: hmac::Key,
    timeout: Duration,
    max_attempts: u32,
    backoff_ms: (u64, u64),
    concurrency: usize,
    max_dead: u64,
    /// How long a region's node may be silent before others take its deliveries over.
    claim_after_ms: u64,
    backend: Arc<dyn Backend>,
    queue: Mutex<Queue>,
    /// A region's deliveries this node holds (queued or in a call): seq → stream entry.
    held: Mutex<HashMap<u64, String>>,
    /// The last pull failed (its warning was logged).
    pull_failing: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Webhook {
    /// `None` without `webhook_url`. `left` is what a previous run left in a node's own outbox.
    pub fn new(config: &NotificationsConfig, backend: Arc<dyn Backend>, left: Vec<Delivery>) -> Option<Webhook> {
        let (Some(url), Some(secret)) = (&config.webhook_url, &config.webhook_secret) else { return None };
        // Validated with the config.
        let Ok(target) = Target::parse(url) else { return None };
        let webhook = Webhook {
            target,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            max_attempts: config.webhook_max_attempts,
            backoff_ms: (config.webhook_backoff_ms, config.webhook_max_backoff_ms),
            concurrency: config.webhook_concurrency as usize,
            max_dead: u64::from(config.max_dead_letters),
            claim_after_ms: config.webhook_claim_after_ms,
            backend,
            queue: Mutex::default(),
            held: Mutex::default(),
            pull_failing: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        };
        for delivery in left {
            webhook.queue(delivery);
        }
        Some(webhook)
    }

    /// A delivery to make (already in the durable outbox). In a region, a wake-up: the loop
    /// takes it from the shared outbox, unless another node is quicker.
    pub fn queue(&self, delivery: Delivery) {
        if self.backend.shared() {
            self.wake.notify_one();
            return;
        }
        self.hold(delivery);
    }

    fn hold(&self, delivery: Delivery) {
        let mut queue = lock(&self.queue);
        queue.due.insert((delivery.next_at, delivery.seq));
        queue.pending.insert(delivery.seq, delivery);
        drop(queue);
        self.wake.notify_one();
    }

    /// The next due delivery, if one is due at `now`; else when the first one will be.
    fn take_due(&self, now: u64) -> Result<Delivery, Option<u64>> {
        let mut queue = lock(&self.queue);
        let Some(&(at, seq)) = queue.due.first() else { return Err(None) };
        if at > now {
            return Err(Some(at));
        }
        queue.due.pop_first();
        queue.pending.remove(&seq).ok_or(Some(now))
    }

    /// A region: keeps what this node holds, takes over stale deliveries when `claim`, and
    /// takes new ones while it holds fewer than its share.
    async fn pull(&self, claim: bool) {
        let (held, room) = {
            let held = lock(&self.held);
            let room = (self.concurrency * HOLD_PER_CALL).saturating_sub(held.len());
            (if claim { held.values().cloned().collect() } else { Vec::new() }, room)
        };
        if room == 0 && !claim {
            return;
        }
        match self.backend.pull(held, claim, room).await {
            Ok(deliveries) => {
                self.pull_failing.store(false, Ordering::Relaxed);
                for delivery in deliveries {
                    let Some(entry) = delivery.entry.clone() else { continue };
                    if lock(&self.held).insert(delivery.seq, entry).is_none() {
                        self.hold(delivery);
                    }
                }
            }
            // Once per outage, not every PULL_EVERY.
            Err(error) if !self.pull_failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(%error, "notification webhook: reading the region's outbox")
            }
            Err(_) => {}
        }
    }

    pub async fn run(&self, now: fn() -> u64, stop: CancellationToken) {
        let mut calls = FuturesUnordered::new();
        let region = self.backend.shared();
        let mut pull = tokio::time::interval(PULL_EVERY);
        pull.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let keep_every = (self.claim_after_ms / 3).max(1);
        let mut kept_at = 0;
        let mut pull_now = region;
        loop {
            if pull_now {
                pull_now = false;
                let claim = now() >= kept_at + keep_every;
                if claim {
                    kept_at = now();
                }
                self.pull(claim).await;
            }
            let mut next_at = None;
            while calls.len() < self.concurrency {
                match self.take_due(now()) {
                    Ok(delivery) => calls.push(self.call(delivery, now())),
                    Err(at) => {
                        next_at = at;
                        break;
                    }
                }
            }
            let sleep = next_at.map(|at| Duration::from_millis(at.saturating_sub(now())));
            let room_for_more = calls.len() < self.concurrency;
            let wait = async {
                match sleep {
                    Some(d) if room_for_more => tokio::time::sleep(d).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                Some((delivery, outcome)) = calls.next(), if !calls.is_empty() => self.settle(delivery, outcome, now()).await,
                _ = self.wake.notified() => pull_now = region,
                _ = pull.tick(), if region => pull_now = true,
                _ = wait => {}
            }
        }
    }

    /// One call: the body with the user's current push tokens, signed, bounded by the timeout.
    async fn call(&self, delivery: Delivery, now_ms: u64) -> (Delivery, Result<(), String>) {
        let user = UserKey { tenant: delivery.tenant.as_str().into(), user: delivery.user.as_str().into() };
        let devices = match self.backend.devices(user).await {
            Ok(devices) => devices,
            Err(e) => return (delivery, Err(e.to_string())),
        };
        let body = serde_json::json!({
            "type": "notification",
            "delivery": delivery.seq,
            "attempt": delivery.attempts + 1,
            "tenant": delivery.tenant,
            "user": delivery.user,
            "time": now_ms,
            "notification": delivery.notification,
            "devices": devices,
        });
        let body = Bytes::from(body.to_string());
        let signature = client::sign(&self.key, now_ms / 1000, &body);
        let outcome = match tokio::time::timeout(self.timeout, client::post(&self.target, signature, body)).await {
            Ok(Ok((status, _))) if (200..300).contains(&status) => Ok(()),
            Ok(Ok((status, _))) => Err(format!("HTTP {status}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        (delivery, outcome)
    }

    /// Records a call's outcome: delivered, retried later, or dead.
    async fn settle(&self, mut delivery: Delivery, outcome: Result<(), String>, now_ms: u64) {
        delivery.attempts += 1;
        let outcome_label = if outcome.is_ok() { "delivered" } else { "failed" };
        metrics::counter!("edgerelay_notification_webhook_calls_total", "outcome" => outcome_label).increment(1);
        let (max_attempts, max_dead) = (self.max_attempts, self.max_dead);
        let (base, max) = self.backoff_ms;
        let seq = delivery.seq;
        let (saved, retry) = match outcome {
            Ok(()) => (self.backend.delivered(delivery).await, None),
            Err(error) if delivery.attempts >= max_attempts => {
                tracing::warn!(seq, user = %delivery.user, %error, "notification webhook: dead letter");
                metrics::counter!("edgerelay_notification_dead_letters_total").increment(1);
                delivery.last_error = Some(error);
                (self.backend.dead(delivery, now_ms, max_dead).await, None)
            }
            Err(error) => {
                delivery.last_error = Some(error);
                delivery.next_at = now_ms.saturating_add(backoff(delivery.attempts, base, max));
                (self.backend.retry(delivery.clone()).await, Some(delivery))
            }
        };
        if let Err(error) = saved {
            tracing::warn!(seq, %error, "notification webhook: recording a call's outcome");
        }
        // In a region the next attempt is a new entry of the shared outbox.
        lock(&self.held).remove(&seq);
        if let Some(delivery) = retry.filter(|_| !self.backend.shared()) {
            self.hold(delivery);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let waits: Vec<u64> = (1..=7).map(|n| backoff(n, 1_000, 30_000)).collect();
        assert_eq!(waits, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
        assert_eq!(backoff(u32::MAX, 1_000, 30_000), 30_000, "no overflow");
    }
}
