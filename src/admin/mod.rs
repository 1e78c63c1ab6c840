//! The operator's view of a region: what the admin UI (`/admin/`) and its JSON endpoints
//! (`/v1/api/admin/...`, behind the server API key) show.
//!
//! Everything here is read from state the relay keeps anyway (the server API's registry of
//! connections, the presence service's rooms, the metrics recorder); nothing is counted twice.
//! Nodes of a Redis region learn about each other from a report every node writes every
//! [`REPORT_MS`] ([`NodeReport`], kept by the engine); a node whose report is older than
//! [`LAPSE_MS`] is gone. A single node shows itself. This module holds the pure parts (reports,
//! paging, the metric summary); [`http`] is the thin HTTP adapter and the page itself.

pub mod http;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::control::Controls;
use crate::hub::awareness::Awareness;

/// How often a node writes its report.
pub const REPORT_MS: u64 = 5_000;
/// A report older than this is a node that is gone (three missed reports).
pub const LAPSE_MS: u64 = 3 * REPORT_MS;

/// One node as the region sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The engine's name for the node (`local` for a single node).
    pub node: String,
    pub version: String,
    /// Unix ms.
    pub started_at: u64,
    /// Unix ms of this report.
    pub seen_at: u64,
    /// Authenticated connections by transport (`quic`, `webtransport`, `websocket`, `sse`).
    pub connections: BTreeMap<String, usize>,
    /// Rooms with a connection on the node.
    pub rooms: usize,
    /// Users with a connection on the node.
    pub users: usize,
}

/// What a node's report is made of.
pub struct Node {
    pub name: String,
    pub started_at: u64,
    pub controls: Arc<Controls>,
    pub awareness: Arc<Awareness>,
}

impl Node {
    pub fn report(&self, now_ms: u64) -> NodeReport {
        let (by_transport, users) = self.controls.census(None);
        let connections = by_transport.into_iter().map(|(t, n)| (t.to_owned(), n)).collect();
        NodeReport {
            node: self.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at,
            seen_at: now_ms,
            connections,
            rooms: self.awareness.rooms_here(None).len(),
            users,
        }
    }
}

/// The region's nodes: this one first (its report fresh), then the others whose report has not
/// lapsed, by name.
pub fn region(own: NodeReport, reports: Vec<NodeReport>, now_ms: u64) -> Vec<NodeReport> {
    let mut others: Vec<NodeReport> =
        reports.into_iter().filter(|r| r.node != own.node && r.seen_at + LAPSE_MS > now_ms).collect();
    others.sort_by(|a, b| a.node.cmp(&b.node));
    std::iter::once(own).chain(others).collect()
}

/// Most entries in one page of the admin endpoints.
pub const MAX_PAGE: usize = 500;
/// Entries in a page when the request does not say.
pub const DEFAULT_PAGE: usize = 50;

/// A page of a list: `offset` entries skipped, at most `limit` taken, with the total and the
/// offset of the next page (`None` at the end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    pub total: usize,
    pub next: Option<usize>,
    pub items: Vec<T>,
}

pub fn page<T>(items: Vec<T>, offset: usize, limit: usize) -> Page<T> {
    let total = items.len();
    let items: Vec<T> = items.into_iter().skip(offset).take(limit).collect();
    let end = offset.saturating_add(items.len());
    Page { total, next: (end < total).then_some(end), items }
}

/// The series the live metrics panel shows (summed over their labels; a histogram by its
/// `_sum` and `_count`). The UI turns counters into rates between two samples.
pub const LIVE_METRICS: &[&str] = &[
    "edgerelay_connections",
    "edgerelay_rooms",
    "edgerelay_presence_users",
    "edgerelay_publishes_total",
    "edgerelay_deliveries_total",
    "edgerelay_errors_total",
    "edgerelay_catch_ups_total",
    "edgerelay_datagram_drops_total",
    "edgerelay_store_failures_total",
    "edgerelay_publish_ack_seconds_sum",
    "edgerelay_publish_ack_seconds_count",
    "edgerelay_delivery_seconds_sum",
    "edgerelay_delivery_seconds_count",
    "edgerelay_store_commit_seconds_sum",
    "edgerelay_store_commit_seconds_count",
    "edgerelay_redis_probe_failures_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
];

/// Sums, for each of `names`, every sample of that exact metric name in a Prometheus text page
/// (any labels). Names without a sample are 0.
pub fn summarize(page: &str, names: &[&str]) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, f64> = names.iter().map(|n| ((*n).to_owned(), 0.0)).collect();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or(series);
        if let (Some(sum), Ok(value)) = (sums.get_mut(name), value.parse::<f64>())
            && value.is_finite()
        {
            *sum += value;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, seen_at: u64) -> NodeReport {
        NodeReport {
            node: node.into(),
            version: "1".into(),
            started_at: 0,
            seen_at,
            connections: BTreeMap::new(),
            rooms: 0,
            users: 0,
        }
    }

    #[test]
    fn the_region_is_this_node_first_then_the_others_still_reporting() {
        let now = 100_000;
        let stale = report("c", now - LAPSE_MS);
        let own_old = report("a", now - 1_000);
        let listed =
            region(report("a", now), vec![report("d", now - 1), stale, own_old, report("b", now - 9_000)], now);
        let names: Vec<(&str, u64)> = listed.iter().map(|r| (r.node.as_str(), r.seen_at)).collect();
        assert_eq!(names, [("a", now), ("b", now - 9_000), ("d", now - 1)]);
    }

    #[test]
    fn pages_say_where_the_next_one_starts() {
        let p = page((0..7).collect(), 0, 3);
        assert_eq!((p.total, p.next, p.items), (7, Some(3), vec![0, 1, 2]));
        let p = page((0..7).collect(), 6, 3);
        assert_eq!((p.total, p.next, p.items), (7, None, vec![6]));
        let p = page((0..7).collect::<Vec<i32>>(), 9, 3);
        assert_eq!((p.total, p.next, p.items.len()), (7, None, 0));
    }

    #[test]
    fn summaries_add_every_labelled_sample_of_a_name_and_nothing_else() {
        let page = "# HELP edgerelay_connections Open.\n# TYPE edgerelay_connections gauge\n\
                    edgerelay_connections{transport=\"quic\"} 2\nedgerelay_connections{transport=\"websocket\"} 3\n\
                    edgerelay_connections_total{transport=\"quic\"} 9\n\
                    edgerelay_publish_ack_seconds_sum 0.5\nedgerelay_publish_ack_seconds_count 4\nbroken line\n";
        let sums =
            summarize(page, &["edgerelay_connections", "edgerelay_publish_ack_seconds_count", "edgerelay_rooms"]);
        assert_eq!(sums["edgerelay_connections"], 5.0);
        assert_eq!(sums["edgerelay_publish_ack_seconds_count"], 4.0);
        assert_eq!(sums["edgerelay_rooms"], 0.0);
        assert_eq!(sums.len(), 3);
    }
}
