//! Fanout cost of `Hub::deliver`: one committed 100-byte message to a room of N in-process
//! members.
//!
//! Every member has its own `Outbox`, half JSON and half postcard, so the frame is encoded
//! once per codec and shared. The timed part is `Hub::deliver` alone (encoding, one push per
//! member); the engine's commit is not included. Outboxes are drained with `take_all` every
//! `DRAIN_EVERY` publishes, outside the timed part, so they never grow without bound and never
//! overflow. Throughput is in elements = deliveries (subscribers reached per publish).
//!
//! No metrics recorder is installed, so the `metrics` macros in `Hub::deliver` are no-ops here;
//! a relay exporting Prometheus metrics pays for them on top.
//!
//! Run: `cargo bench --bench fanout`. Results and the machine they came from: `docs/performance.md`.

#[path = "support.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edgerelay::hub::{Hub, Membership, RoomKey, Subscriber};
use edgerelay::outbox::{CONTROL, Outbox};
use edgerelay::proto::{Codec, RoomName};
use edgerelay::store::{RoomMeta, StoredMessage};

/// Publishes between two drains of every outbox.
const DRAIN_EVERY: u64 = 32;

/// Large enough that `DRAIN_EVERY` queued messages never come close.
const OUTBOX_CAP: usize = 64 << 20;

const NOW_MS: u64 = 1_760_000_000_000;

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1usize, 100, 1_000, 10_000] {
        let hub = Hub::new(16, 60_000);
        let key = RoomKey { tenant: "acme".into(), room: RoomName::parse("chat:lobby").unwrap() };
        hub.ensure_room(&key, RoomMeta::empty(1), NOW_MS);
        let (catch_up, _lagging) = edgerelay::mailbox::mailbox();
        let outboxes: Vec<Arc<Outbox>> = (0..subscribers)
            .map(|i| {
                let codec = if i % 2 == 0 { Codec::Json } else { Codec::Postcard };
                let outbox = Outbox::new(codec, OUTBOX_CAP);
                let subscriber = Subscriber {
                    outbox: outbox.clone(),
                    lane: CONTROL,
                    membership: Membership::default(),
                    catch_up: catch_up.clone(),
                };
                let mut reply = outbox.reserve(CONTROL, 1);
                hub.attach(&key, i as u64 + 1, subscriber, &mut reply, None, NOW_MS).expect("join");
                outbox
            })
            .collect();
        assert_eq!(support::drain(&outboxes), subscribers, "one joined frame each");
        let data = support::payload_json_100();
        let mut offset = 0;
        let mut message = move || {
            offset += 1;
            StoredMessage { offset, time: NOW_MS, from: "alice".into(), id: "msg-0001".into(), data: data.clone() }
        };

        // One untimed delivery to check the setup: everyone receives it, nobody lags.
        let delivered = hub.deliver(&key, 1, &message());
        assert_eq!((delivered.delivered, delivered.lagging), (subscribers, 0));
        assert_eq!(support::drain(&outboxes), subscribers);

        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let chunk = DRAIN_EVERY.min(iters - done);
                    let messages: Vec<StoredMessage> = (0..chunk).map(|_| message()).collect();
                    let start = Instant::now();
                    for m in &messages {
                        black_box(hub.deliver(&key, 1, m));
                    }
                    timed += start.elapsed();
                    done += chunk;
                    // Untimed: what the connections' writers would do.
                    let taken = support::drain(&outboxes);
                    debug_assert_eq!(taken as u64, chunk * subscribers as u64);
                }
                timed
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = fanout
}
criterion_main!(benches);
