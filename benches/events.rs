//! Event fanout (`Events::fanout`) and its parts: the subscription index and filters.
//!
//! - `events_fanout/{plain,filtered,filtered_half}/N`: one ephemeral event with a 100-byte
//!   payload and two tags to N in-process subscribers of `orders.*.created` (half JSON, half
//!   postcard outboxes): no filter; a filter every subscriber's event passes
//!   (`region in (eu, us) and qty >= 10`); the same filter with half the subscribers asking
//!   `region = us` (so half are reached). Throughput elements = subscribers evaluated. Compare
//!   with `fanout/N` (`benches/fanout.rs`, a room's `Hub::deliver`).
//! - `events_filter/*`: one compiled filter evaluated on an event's tags (the per-event,
//!   per-subscriber cost).
//! - `events_index/N`: finding the subscriptions of one topic among N subscriptions on other
//!   topics plus 8 wildcard ones: the cost should not grow with N.
//!
//! Outboxes are drained outside the timed part every `DRAIN_EVERY` events, as in the fanout
//! bench. No metrics recorder is installed (the `metrics` macros are no-ops here).
//!
//! Run: `cargo bench --bench events`. Results: `docs/performance.md`.

#[path = "support.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edgerelay::config::EventsConfig;
use edgerelay::engine::{LocalEngine, LocalEngineConfig};
use edgerelay::events::{Event, Events, Filter, Pattern, Tags, TopicIndex, TopicName};
use edgerelay::hub::Hub;
use edgerelay::outbox::{CONTROL, Outbox};
use edgerelay::proto::Codec;
use edgerelay::store::MemoryHistory;

const DRAIN_EVERY: u64 = 32;
const OUTBOX_CAP: usize = 64 << 20;

fn tags() -> Tags {
    [("region".to_string(), "eu".to_string()), ("qty".to_string(), "12".to_string())].into()
}

fn events_service() -> Arc<Events> {
    let hub = Arc::new(Hub::new(16, 60_000));
    let engine = LocalEngine::start(LocalEngineConfig::default(), Arc::new(MemoryHistory::new()), hub.clone())
        .expect("engine starts");
    Events::new(&EventsConfig::default(), 60_000, hub, Arc::new(engine))
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("events_fanout");
    let identity = edgerelay::auth::Identity {
        user: "bench".into(),
        tenant: "acme".into(),
        caps: edgerelay::auth::Caps { join: vec!["*".into()], ..Default::default() },
        expires_at: u64::MAX,
        token_id: None,
        issued_at: None,
    };
    for (name, filter, other) in [
        ("plain", None, None),
        ("filtered", Some("region in (eu, us) and qty >= 10"), None),
        ("filtered_half", Some("region in (eu, us) and qty >= 10"), Some("region = us")),
    ] {
        for subscribers in [1usize, 100, 1_000, 10_000] {
            let events = events_service();
            let tenant: Arc<str> = "acme".into();
            let outboxes: Vec<Arc<Outbox>> = (0..subscribers)
                .map(|i| {
                    let codec = if i % 2 == 0 { Codec::Json } else { Codec::Postcard };
                    let outbox = Outbox::new(codec, OUTBOX_CAP);
                    let filter = if i % 2 == 1 { other.or(filter) } else { filter };
                    let checked = events.check(&identity, "orders.*.created", filter, None).expect("valid");
                    let owner = edgerelay::events::Owner::new(i as u64 + 1);
                    let _ = events.subscribe(&tenant, &owner, checked, outbox.clone(), CONTROL);
                    outbox
                })
                .collect();
            let event = Event {
                topic: TopicName::parse("orders.eu.created").unwrap(),
                position: None,
                time: 1_760_000_000_000,
                id: "evt-0001".into(),
                tags: tags(),
                data: support::payload_json_100(),
                critical: false,
            };
            let reached = if other.is_some() { subscribers.div_ceil(2) } else { subscribers };
            assert_eq!(events.fanout("acme", &event), reached);
            assert_eq!(support::drain(&outboxes), reached);
            group.throughput(Throughput::Elements(subscribers as u64));
            group.bench_function(BenchmarkId::new(name, subscribers), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let chunk = DRAIN_EVERY.min(iters - done);
                        let start = Instant::now();
                        for _ in 0..chunk {
                            black_box(events.fanout("acme", &event));
                        }
                        timed += start.elapsed();
                        done += chunk;
                        support::drain(&outboxes);
                    }
                    timed
                })
            });
        }
    }
    group.finish();
}

fn filters(c: &mut Criterion) {
    let mut group = c.benchmark_group("events_filter");
    let tags = tags();
    for (name, text) in [
        ("eq", "region = eu"),
        ("in_and_num", "region in (eu, us) and qty >= 10"),
        ("nested_5", "(region = us or region = asia or (qty > 5 and not has vip)) and tier != gold and qty < 100"),
    ] {
        let filter = Filter::parse(text).unwrap();
        group.bench_function(name, |b| b.iter(|| black_box(filter.accepts(black_box(&tags)))));
    }
    group.bench_function("parse_in_and_num", |b| {
        b.iter(|| black_box(Filter::parse(black_box("region in (eu, us) and qty >= 10")).unwrap()))
    });
    group.finish();
}

fn index(c: &mut Criterion) {
    let mut group = c.benchmark_group("events_index");
    let topic = TopicName::parse("orders.eu.created").unwrap();
    for others in [10usize, 1_000, 100_000] {
        let mut index = TopicIndex::default();
        for i in 0..others {
            index.insert(&Pattern::parse(&format!("orders.r{i}.created")).unwrap(), i as u64, ());
        }
        for (j, p) in
            ["orders.*.created", "orders.>", ">", "orders.eu.*", "*.eu.created", "*.*.*", "orders.eu.created", "x.>"]
                .iter()
                .enumerate()
        {
            index.insert(&Pattern::parse(p).unwrap(), (others + j) as u64, ());
        }
        group.bench_function(BenchmarkId::from_parameter(others), |b| {
            b.iter(|| {
                let mut n = 0;
                index.for_each_match(black_box(&topic), |_, _| n += 1);
                assert_eq!(n, 7);
                n
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = fanout, filters, index
}
criterion_main!(benches);
