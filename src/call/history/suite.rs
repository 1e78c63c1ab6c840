//! The contract every [`CallHistory`] backend must meet, run against each of them (Redis: a
//! `redis-server` the test starts). Times are near the real clock: Redis expires records by it.

use super::*;
use crate::call::types::CallId;

/// A backend under test, with what must outlive it (a temporary directory, a Redis server).
pub(crate) struct Rig {
    pub history: Box<dyn CallHistory>,
    pub _keep: Box<dyn std::any::Any + Send>,
}

const DAY_MS: u64 = 24 * 3600 * 1000;
pub(crate) const KEEP_ALL: HistoryRetention = HistoryRetention { max_calls_per_user: 1000, max_age_ms: 30 * DAY_MS };

/// A moment near now, whole seconds (so offsets below stay readable).
fn base() -> u64 {
    crate::connection::unix_ms() / 1000 * 1000
}

fn alice() -> UserKey {
    UserKey::new("acme", "alice")
}

fn user(name: &str) -> UserKey {
    UserKey::new("acme", name)
}

/// A finished 1:1 call between `caller` and `callee`, answered a second after it started.
pub(crate) fn call(id: u64, started_ms: u64, caller: &str, callee: &str) -> CallRecord {
    let party = |user: &str, role, joined| Participant {
        user: user.into(),
        role,
        device: Some(7),
        joined_ms: Some(joined),
        left_ms: Some(started_ms + 60_000),
    };
    CallRecord {
        id: CallId(id),
        tenant: "acme".into(),
        kind: CallKind::OneToOne,
        media: Media::Audio,
        participants: vec![party(caller, Role::Caller, started_ms), party(callee, Role::Callee, started_ms + 1000)],
        started_ms,
        answered_ms: Some(started_ms + 1000),
        ended_ms: Some(started_ms + 60_000),
        reason: Some("hangup".into()),
        by: Some(Role::Callee),
        side: None,
        duration_ms: Some(59_000),
        quality: None,
    }
}

fn group(id: u64, started_ms: u64, users: &[&str]) -> CallRecord {
    let mut c = call(id, started_ms, "x", "y");
    c.kind = CallKind::Group;
    c.participants = users
        .iter()
        .enumerate()
        .map(|(i, u)| Participant {
            user: (*u).into(),
            role: if i == 0 { Role::Host } else { Role::Member },
            device: None,
            joined_ms: Some(started_ms),
            left_ms: None,
        })
        .collect();
    c
}

fn ids(page: &CallPage) -> Vec<u64> {
    page.calls.iter().map(|c| c.id.0).collect()
}

async fn list(h: &dyn CallHistory, who: &UserKey, now: u64) -> Vec<u64> {
    ids(&h.list(who, None, MAX_PAGE, now).await.unwrap())
}

pub(crate) async fn lists_each_participants_calls_newest_first(h: &dyn CallHistory) {
    let t = base();
    h.record(call(1, t, "alice", "bob"), t).await.unwrap();
    h.record(call(2, t + 2000, "carol", "alice"), t + 2000).await.unwrap();
    h.record(call(3, t + 3000, "bob", "carol"), t + 3000).await.unwrap();
    let now = t + 4000;
    assert_eq!(list(h, &alice(), now).await, vec![2, 1]);
    assert_eq!(list(h, &user("bob"), now).await, vec![3, 1]);
    assert_eq!(list(h, &user("carol"), now).await, vec![3, 2]);
    assert_eq!(list(h, &user("dave"), now).await, Vec::<u64>::new());
    let page = h.list(&alice(), None, 10, now).await.unwrap();
    assert_eq!(page.calls[1], call(1, t, "alice", "bob"), "the record comes back as it was stored");
    assert_eq!(page.next, None);
}

pub(crate) async fn recording_again_updates_the_call_for_everyone(h: &dyn CallHistory) {
    let t = base();
    let mut ringing = call(9, t, "alice", "bob");
    ringing.answered_ms = None;
    ringing.ended_ms = None;
    ringing.reason = None;
    ringing.by = None;
    ringing.duration_ms = None;
    h.record(ringing.clone(), t).await.unwrap();
    assert_eq!(h.get(&user("bob"), CallId(9), t).await.unwrap(), Some(ringing));
    let ended = call(9, t, "alice", "bob");
    h.record(ended.clone(), t + 60_000).await.unwrap();
    h.record(ended.clone(), t + 60_000).await.unwrap();
    for who in [alice(), user("bob")] {
        let page = h.list(&who, None, 10, t + 60_000).await.unwrap();
        assert_eq!(page.calls, vec![ended.clone()], "one entry per call, the latest record");
        assert_eq!(h.get(&who, CallId(9), t + 60_000).await.unwrap(), Some(ended.clone()));
    }
}

pub(crate) async fn pages_follow_the_cursor_without_gaps_or_repeats(h: &dyn CallHistory) {
    let t = base();
    // Ten calls; three pairs start in the same millisecond (ties sort by id).
    let starts = [0, 1000, 1000, 2000, 3000, 3000, 3000, 4000, 5000, 6000];
    for (i, s) in starts.iter().enumerate() {
        h.record(call(100 + i as u64, t + s, "alice", &format!("peer{i}")), t + 7000).await.unwrap();
    }
    let now = t + 7000;
    let all = list(h, &alice(), now).await;
    assert_eq!(all, vec![109, 108, 107, 106, 105, 104, 103, 102, 101, 100]);
    for limit in [1, 2, 3, 4, 10] {
        let (mut seen, mut before) = (Vec::new(), None);
        for _ in 0..20 {
            let page = h.list(&alice(), before, limit, now).await.unwrap();
            assert!(page.calls.len() <= limit);
            seen.extend(ids(&page));
            before = page.next;
            if before.is_none() {
                break;
            }
        }
        assert_eq!(seen, all, "limit {limit}");
    }
    // A cursor in the middle of a tie, and a plain time.
    let mid = HistoryCursor { started_ms: t + 3000, id: CallId(105) };
    assert_eq!(ids(&h.list(&alice(), Some(mid), 3, now).await.unwrap()), vec![104, 103, 102]);
    let plain: HistoryCursor = (t + 3000).to_string().parse().unwrap();
    assert_eq!(ids(&h.list(&alice(), Some(plain), 10, now).await.unwrap()), vec![103, 102, 101, 100]);
    let page = h.list(&alice(), None, 3, now).await.unwrap();
    assert_eq!(page.next.map(|c| c.to_string()), Some(format!("{}-{:016x}", t + 4000, 107)));
}

pub(crate) async fn only_participants_get_a_call(h: &dyn CallHistory) {
    let t = base();
    h.record(call(5, t, "alice", "bob"), t).await.unwrap();
    assert!(h.get(&alice(), CallId(5), t).await.unwrap().is_some());
    assert_eq!(h.get(&user("mallory"), CallId(5), t).await.unwrap(), None);
    assert_eq!(h.get(&UserKey::new("globex", "alice"), CallId(5), t).await.unwrap(), None, "other tenant");
    assert_eq!(h.get(&alice(), CallId(6), t).await.unwrap(), None);
}

pub(crate) async fn tenants_are_separate(h: &dyn CallHistory) {
    let t = base();
    let mut other = call(5, t + 1000, "alice", "bob");
    other.tenant = "globex".into();
    h.record(call(5, t, "alice", "bob"), t).await.unwrap();
    h.record(other.clone(), t + 1000).await.unwrap();
    let globex = UserKey::new("globex", "alice");
    assert_eq!(h.list(&globex, None, 10, t + 2000).await.unwrap().calls, vec![other.clone()]);
    assert_eq!(h.get(&globex, CallId(5), t + 2000).await.unwrap(), Some(other));
    assert_eq!(h.get(&alice(), CallId(5), t + 2000).await.unwrap(), Some(call(5, t, "alice", "bob")));
}

pub(crate) async fn each_user_keeps_at_most_the_count(h: &dyn CallHistory) {
    let t = base();
    // Retention: 3 calls per user. Alice makes 5 calls, one of them with bob.
    h.record(call(1, t, "alice", "bob"), t).await.unwrap();
    for i in 2..=5 {
        h.record(call(i, t + i * 1000, "alice", &format!("peer{i}")), t + i * 1000).await.unwrap();
    }
    let now = t + 6000;
    assert_eq!(list(h, &alice(), now).await, vec![5, 4, 3]);
    assert_eq!(h.get(&alice(), CallId(1), now).await.unwrap(), None, "gone from alice's list");
    assert_eq!(list(h, &user("bob"), now).await, vec![1], "bob has fewer calls: his list keeps it");
    assert!(h.get(&user("bob"), CallId(1), now).await.unwrap().is_some());
    assert_eq!(h.get(&user("peer2"), CallId(2), now).await.unwrap().map(|c| c.id), Some(CallId(2)));
    // Recording the trimmed call again (it changed for bob) does not bring it back for alice.
    h.record(call(1, t, "alice", "bob"), now).await.unwrap();
    assert_eq!(list(h, &alice(), now).await, vec![5, 4, 3]);
    assert_eq!(list(h, &user("bob"), now).await, vec![1]);
}

pub(crate) async fn calls_older_than_the_age_are_gone(h: &dyn CallHistory) {
    // Retention: 10 days.
    let t = base();
    h.record(call(1, t - 20 * DAY_MS, "alice", "bob"), t - 20 * DAY_MS).await.unwrap();
    h.record(call(2, t - 9 * DAY_MS, "alice", "bob"), t - 9 * DAY_MS).await.unwrap();
    assert_eq!(list(h, &alice(), t).await, vec![2]);
    assert_eq!(h.get(&alice(), CallId(1), t).await.unwrap(), None);
    // A day and a half later the second is past the age too, recorded again or not.
    let later = t + DAY_MS + DAY_MS / 2;
    assert_eq!(list(h, &alice(), later).await, Vec::<u64>::new());
    h.record(call(3, t, "alice", "carol"), t).await.unwrap();
    assert_eq!(list(h, &alice(), later).await, vec![3]);
    let page = h.list(&alice(), Some(HistoryCursor { started_ms: t, id: CallId(3) }), 5, later).await.unwrap();
    assert_eq!((page.calls.len(), page.next), (0, None));
}

pub(crate) async fn a_group_call_lists_every_member_and_drops_removed_ones(h: &dyn CallHistory) {
    let t = base();
    h.record(group(7, t, &["host", "ann", "ben"]), t).await.unwrap();
    for who in ["host", "ann", "ben"] {
        assert_eq!(list(h, &user(who), t).await, vec![7], "{who}");
    }
    // Ben is taken off the record (the group layer keeps leavers, but a record may shrink).
    h.record(group(7, t, &["host", "ann"]), t + 1000).await.unwrap();
    assert_eq!(list(h, &user("ben"), t + 1000).await, Vec::<u64>::new());
    assert_eq!(h.get(&user("ben"), CallId(7), t + 1000).await.unwrap(), None);
    assert_eq!(list(h, &user("ann"), t + 1000).await, vec![7]);
    // A record whose start moved moves in every list.
    h.record(call(8, t + 500, "ann", "cy"), t + 1000).await.unwrap();
    h.record(group(7, t + 900, &["host", "ann"]), t + 1000).await.unwrap();
    assert_eq!(list(h, &user("ann"), t + 1000).await, vec![7, 8]);
}

pub(crate) async fn invalid_records_and_limits_are_refused(h: &dyn CallHistory) {
    let t = base();
    let refused = |c: CallRecord| async move {
        assert!(matches!(h.record(c.clone(), t).await, Err(HistoryError::Invalid(_))), "{c:?}");
    };
    let mut bad = call(1, t, "alice", "bob");
    bad.tenant = "no spaces".into();
    refused(bad).await;
    refused(call(1, t, "alice", "alice")).await;
    refused(call(1, t, "alice", "")).await;
    refused(call(1, t, "alice", "b\0b")).await;
    refused(call(1, MAX_TIME_MS, "alice", "bob")).await;
    refused(group(1, t, &[])).await;
    let mut three = group(1, t, &["a", "b", "c"]);
    three.kind = CallKind::OneToOne;
    refused(three).await;
    assert_eq!(list(h, &alice(), t).await, Vec::<u64>::new(), "nothing was stored");
    for limit in [0, MAX_PAGE + 1] {
        assert!(matches!(h.list(&alice(), None, limit, t).await, Err(HistoryError::Invalid(_))));
    }
}

/// Runs every check above, each on a fresh backend from `$make(retention)`.
macro_rules! call_history_suite {
    ($make:path) => {
        use $crate::call::history::HistoryRetention;
        use $crate::call::history::suite::{self as s, KEEP_ALL};

        #[tokio::test]
        async fn lists_each_participants_calls_newest_first() {
            s::lists_each_participants_calls_newest_first(&*$make(KEEP_ALL).await.history).await;
        }
        #[tokio::test]
        async fn recording_again_updates_the_call_for_everyone() {
            s::recording_again_updates_the_call_for_everyone(&*$make(KEEP_ALL).await.history).await;
        }
        #[tokio::test]
        async fn pages_follow_the_cursor_without_gaps_or_repeats() {
            s::pages_follow_the_cursor_without_gaps_or_repeats(&*$make(KEEP_ALL).await.history).await;
        }
        #[tokio::test]
        async fn only_participants_get_a_call() {
            s::only_participants_get_a_call(&*$make(KEEP_ALL).await.history).await;
        }
        #[tokio::test]
        async fn tenants_are_separate() {
            s::tenants_are_separate(&*$make(KEEP_ALL).await.history).await;
        }
        #[tokio::test]
        async fn each_user_keeps_at_most_the_count() {
            let keep3 = HistoryRetention { max_calls_per_user: 3, ..KEEP_ALL };
            s::each_user_keeps_at_most_the_count(&*$make(keep3).await.history).await;
        }
        #[tokio::test]
        async fn calls_older_than_the_age_are_gone() {
            let ten_days = HistoryRetention { max_age_ms: 10 * 24 * 3600 * 1000, ..KEEP_ALL };
            s::calls_older_than_the_age_are_gone(&*$make(ten_days).await.history).await;
        }
        #[tokio::test]
        async fn a_group_call_lists_every_member_and_drops_removed_ones() {
            s::a_group_call_lists_every_member_and_drops_removed_ones(&*$make(KEEP_ALL).await.history).await;
        }
        #[tokio::test]
        async fn invalid_records_and_limits_are_refused() {
            s::invalid_records_and_limits_are_refused(&*$make(KEEP_ALL).await.history).await;
        }
    };
}

mod memory {
    use super::Rig;

    async fn make(retention: crate::call::history::HistoryRetention) -> Rig {
        Rig { history: Box::new(crate::call::history::MemoryCallHistory::new(retention)), _keep: Box::new(()) }
    }

    call_history_suite!(make);
}

mod embedded {
    use super::Rig;
    use std::sync::Arc;

    async fn make(retention: crate::call::history::HistoryRetention) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::store::EmbeddedHistory::open(&dir.path().join("h.redb")).unwrap();
        let history = crate::call::history::EmbeddedCallHistory::new(Arc::new(store), retention).unwrap();
        Rig { history: Box::new(history), _keep: Box::new(dir) }
    }

    call_history_suite!(make);

    /// Calls survive a restart, and the file keeps serving room history beside them.
    #[tokio::test]
    async fn calls_survive_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.redb");
        let t = super::base();
        {
            let (store, _) = crate::store::EmbeddedHistory::open(&path).unwrap();
            let history = crate::call::history::EmbeddedCallHistory::new(Arc::new(store), KEEP_ALL).unwrap();
            history.record(super::call(1, t, "alice", "bob"), t).await.unwrap();
        }
        let (store, _) = crate::store::EmbeddedHistory::open(&path).unwrap();
        let history = crate::call::history::EmbeddedCallHistory::new(Arc::new(store), KEEP_ALL).unwrap();
        use crate::call::history::CallHistory;
        let page = history.list(&super::alice(), None, 10, t).await.unwrap();
        assert_eq!(page.calls, vec![super::call(1, t, "alice", "bob")]);
    }
}

mod redis {
    use super::Rig;
    use crate::testing::RedisServer;
    use fred::prelude::{Builder, ClientLike, Config};

    async fn make(retention: crate::call::history::HistoryRetention) -> Rig {
        let server = RedisServer::start().expect("start redis-server");
        let client = Builder::from_config(Config::from_url(&server.url()).unwrap()).build().unwrap();
        client.init().await.expect("connect to the test redis");
        let history = crate::call::history::RedisCallHistory::new(client, "test", retention);
        Rig { history: Box::new(history), _keep: Box::new(server) }
    }

    call_history_suite!(make);
}

mod record {
    use super::*;
    use crate::call::types::{CallSummary, EndReason, Side};

    fn summary(reason: EndReason, answered: bool) -> CallSummary {
        CallSummary {
            id: CallId(0xabc),
            caller: UserKey::new("acme", "alice"),
            callee: UserKey::new("acme", "bob"),
            media: Media::Video,
            caller_device: 3,
            callee_device: answered.then_some(4),
            started_ms: 1000,
            answered_ms: answered.then_some(2000),
            ended_ms: Some(5000),
            reason: Some(reason),
            duration_ms: Some(if answered { 3000 } else { 0 }),
        }
    }

    #[test]
    fn a_one_to_one_summary_becomes_a_record_with_the_documented_json() {
        let record = CallRecord::one_to_one(&summary(EndReason::Hangup { by: Side::Callee }, true));
        record.check().unwrap();
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "0000000000000abc", "tenant": "acme", "kind": "one_to_one", "media": "video",
                "participants": [
                    {"user": "alice", "role": "caller", "device": 3, "joined_ms": 1000, "left_ms": 5000},
                    {"user": "bob", "role": "callee", "device": 4, "joined_ms": 2000, "left_ms": 5000},
                ],
                "started_ms": 1000, "answered_ms": 2000, "ended_ms": 5000,
                "reason": "hangup", "by": "callee", "side": null, "duration_ms": 3000, "quality": null,
            })
        );
        assert_eq!(serde_json::from_value::<CallRecord>(json).unwrap(), record);
    }

    #[test]
    fn an_unanswered_call_has_a_callee_who_never_joined() {
        let record = CallRecord::one_to_one(&summary(EndReason::Missed, false));
        let callee = &record.participants[1];
        assert_eq!((callee.device, callee.joined_ms, callee.left_ms), (None, None, None));
        assert_eq!((record.reason.as_deref(), record.duration_ms), (Some("missed"), Some(0)));
        let lost = CallRecord::one_to_one(&summary(EndReason::ConnectionLost { side: Side::Caller }, true));
        assert_eq!((lost.by, lost.side), (None, Some(Role::Caller)));
    }

    #[test]
    fn older_records_without_quality_still_read() {
        let mut json = serde_json::to_value(call(1, 1000, "a", "b")).unwrap();
        json.as_object_mut().unwrap().remove("quality");
        assert_eq!(serde_json::from_value::<CallRecord>(json).unwrap(), call(1, 1000, "a", "b"));
    }

    #[test]
    fn cursors_parse_from_what_pages_print() {
        let at = HistoryCursor { started_ms: 1700000000123, id: CallId(0xdead) };
        assert_eq!(at.to_string(), "1700000000123-000000000000dead");
        assert_eq!(at.to_string().parse::<HistoryCursor>().unwrap(), at);
        assert_eq!("5".parse::<HistoryCursor>().unwrap(), HistoryCursor { started_ms: 5, id: CallId(0) });
        for bad in ["", "x", "-1", "1-dead", "1-000000000000zzzz", "1-000000000000dead-1", "99999999999999999999"] {
            assert!(bad.parse::<HistoryCursor>().is_err(), "{bad:?}");
        }
    }
}
