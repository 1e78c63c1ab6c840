//! The contract every [`History`] backend must meet, run against each of them.

use super::*;
use crate::proto::RoomName;

pub(crate) fn key(tenant: &str, room: &str) -> RoomKey {
    RoomKey { tenant: tenant.into(), room: RoomName::parse(room).unwrap() }
}

pub(crate) fn msg(offset: u64, time: u64, id: &str) -> StoredMessage {
    StoredMessage {
        offset,
        time,
        from: "alice".into(),
        id: id.into(),
        data: Payload::from(format!("{offset}").as_str()),
    }
}

fn append(h: &dyn History, k: &RoomKey, epoch: u64, offsets: std::ops::RangeInclusive<u64>, retention: &Retention) {
    let batch: Vec<Append> =
        offsets.map(|o| Append { key: k.clone(), epoch, message: msg(o, o * 10, &format!("m{o}")) }).collect();
    h.append(&batch, retention).unwrap();
}

const KEEP_ALL: Retention = Retention { max_messages: u64::MAX, max_age_ms: u64::MAX };

fn offsets(v: &[StoredMessage]) -> Vec<u64> {
    v.iter().map(|m| m.offset).collect()
}

pub(crate) fn appends_and_reads_in_order(h: &dyn History) {
    let k = key("acme", "r");
    assert_eq!(h.meta(&k).unwrap(), None);
    append(h, &k, 7, 1..=5, &KEEP_ALL);
    append(h, &k, 7, 6..=6, &KEEP_ALL);
    assert_eq!(h.meta(&k).unwrap(), Some(RoomMeta { epoch: 7, first: 1, top: 6 }));
    assert_eq!(offsets(&h.read_after(&k, 0, 100).unwrap()), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(offsets(&h.read_after(&k, 2, 2).unwrap()), vec![3, 4]);
    assert_eq!(offsets(&h.read_after(&k, 6, 10).unwrap()), Vec::<u64>::new());
    assert_eq!(offsets(&h.read_before(&k, 6, 2).unwrap()), vec![4, 5]);
    assert_eq!(offsets(&h.read_before(&k, u64::MAX, 3).unwrap()), vec![4, 5, 6]);
    assert_eq!(offsets(&h.read_before(&k, 1, 3).unwrap()), Vec::<u64>::new());
    let m = &h.read_after(&k, 2, 1).unwrap()[0];
    assert_eq!(m, &msg(3, 30, "m3"));
}

pub(crate) fn rooms_and_tenants_are_separate(h: &dyn History) {
    append(h, &key("acme", "a"), 1, 1..=3, &KEEP_ALL);
    append(h, &key("acme", "ab"), 2, 1..=1, &KEEP_ALL);
    append(h, &key("globex", "a"), 3, 1..=2, &KEEP_ALL);
    assert_eq!(offsets(&h.read_after(&key("acme", "a"), 0, 10).unwrap()), vec![1, 2, 3]);
    assert_eq!(offsets(&h.read_after(&key("acme", "ab"), 0, 10).unwrap()), vec![1]);
    assert_eq!(offsets(&h.read_after(&key("globex", "a"), 0, 10).unwrap()), vec![1, 2]);
    assert_eq!(h.find_id(&key("globex", "a"), "alice", "m3").unwrap(), None);
    assert_eq!(h.find_id(&key("acme", "a"), "alice", "m3").unwrap(), Some((3, 30)));
    assert_eq!(h.find_id(&key("acme", "a"), "bob", "m3").unwrap(), None);
}

pub(crate) fn count_retention_moves_first(h: &dyn History) {
    let k = key("acme", "r");
    let keep3 = Retention { max_messages: 3, max_age_ms: u64::MAX };
    append(h, &k, 1, 1..=5, &keep3);
    append(h, &k, 1, 6..=7, &keep3);
    assert_eq!(h.meta(&k).unwrap(), Some(RoomMeta { epoch: 1, first: 5, top: 7 }));
    assert_eq!(offsets(&h.read_after(&k, 0, 10).unwrap()), vec![5, 6, 7]);
    assert_eq!(h.find_id(&k, "alice", "m2").unwrap(), None, "ids of trimmed messages are gone");
    assert_eq!(h.find_id(&k, "alice", "m6").unwrap(), Some((6, 60)));
}

/// Runs one whole age-retention pass in steps of `max_rooms`; returns the messages deleted.
fn expire_pass(h: &dyn History, before_ms: u64, max_rooms: usize) -> u64 {
    let (mut deleted, mut resume) = (0, None);
    for _ in 0..10_000 {
        let step = h.expire(before_ms, resume.as_deref(), max_rooms).unwrap();
        deleted += step.deleted;
        resume = step.resume;
        if resume.is_none() {
            return deleted;
        }
    }
    panic!("an expiry pass never completed");
}

pub(crate) fn an_expiry_pass_in_small_steps_visits_every_room(h: &dyn History) {
    let rooms: Vec<RoomKey> =
        (0..25).map(|i| key(if i % 2 == 0 { "acme" } else { "globex" }, &format!("r{i}"))).collect();
    for k in &rooms {
        append(h, k, 1, 1..=4, &KEEP_ALL);
    }
    assert_eq!(expire_pass(h, 25, 4), 2 * 25, "times 10 and 20 in each room");
    for k in &rooms {
        assert_eq!(h.meta(k).unwrap(), Some(RoomMeta { epoch: 1, first: 3, top: 4 }), "{k:?}");
    }
    assert_eq!(expire_pass(h, 25, 1), 0, "a second pass finds nothing more");
}

pub(crate) fn age_retention_keeps_top(h: &dyn History) {
    let k = key("acme", "r");
    append(h, &k, 1, 1..=5, &KEEP_ALL);
    assert_eq!(expire_pass(h, 35, 100), 3, "times 10, 20, 30 are older than 35");
    assert_eq!(h.meta(&k).unwrap(), Some(RoomMeta { epoch: 1, first: 4, top: 5 }));
    assert_eq!(expire_pass(h, 1000, 100), 2);
    assert_eq!(h.meta(&k).unwrap(), Some(RoomMeta { epoch: 1, first: 6, top: 5 }), "offsets keep counting");
    append(h, &k, 1, 6..=6, &KEEP_ALL);
    assert_eq!(offsets(&h.read_after(&k, 0, 10).unwrap()), vec![6]);
}

pub(crate) fn a_new_epoch_replaces_history(h: &dyn History) {
    let k = key("acme", "r");
    append(h, &k, 1, 1..=4, &KEEP_ALL);
    append(h, &k, 2, 1..=1, &KEEP_ALL);
    assert_eq!(h.meta(&k).unwrap(), Some(RoomMeta { epoch: 2, first: 1, top: 1 }));
    assert_eq!(offsets(&h.read_after(&k, 0, 10).unwrap()), vec![1]);
}

pub(crate) fn cursors_per_user(h: &dyn History) {
    let room = |r: &str| RoomName::parse(r).unwrap();
    let c = |r: &str, off: u64, updated: u64| Cursor {
        room: room(r),
        position: Position { epoch: 1, offset: off },
        updated,
    };
    let of = |tenant: &str, user: &str, cursors: Vec<Cursor>| UserCursors {
        tenant: tenant.into(),
        user: user.into(),
        cursors,
    };
    h.save_cursors(&[of("acme", "alice", vec![c("a", 3, 10), c("b", 1, 20)])]).unwrap();
    h.save_cursors(&[of("acme", "alice", vec![c("a", 5, 30)]), of("acme", "alicia", vec![c("x", 1, 1)])]).unwrap();
    h.save_cursors(&[of("globex", "alice", vec![c("z", 1, 1)])]).unwrap();
    assert_eq!(h.cursors("acme", "alice", 10).unwrap(), vec![c("a", 5, 30), c("b", 1, 20)]);
    assert_eq!(h.cursors("acme", "alice", 1).unwrap(), vec![c("a", 5, 30)]);
    h.forget_cursor("acme", "alice", &room("a")).unwrap();
    assert_eq!(h.cursors("acme", "alice", 10).unwrap(), vec![c("b", 1, 20)]);
    assert_eq!(h.cursors("acme", "bob", 10).unwrap(), vec![]);
}

/// Runs every check above, each on a fresh store from `make`.
macro_rules! history_suite {
    ($make:expr) => {
        #[test]
        fn appends_and_reads_in_order() {
            $crate::store::suite::appends_and_reads_in_order(&*$make());
        }
        #[test]
        fn rooms_and_tenants_are_separate() {
            $crate::store::suite::rooms_and_tenants_are_separate(&*$make());
        }
        #[test]
        fn count_retention_moves_first() {
            $crate::store::suite::count_retention_moves_first(&*$make());
        }
        #[test]
        fn an_expiry_pass_in_small_steps_visits_every_room() {
            $crate::store::suite::an_expiry_pass_in_small_steps_visits_every_room(&*$make());
        }
        #[test]
        fn age_retention_keeps_top() {
            $crate::store::suite::age_retention_keeps_top(&*$make());
        }
        #[test]
        fn a_new_epoch_replaces_history() {
            $crate::store::suite::a_new_epoch_replaces_history(&*$make());
        }
        #[test]
        fn cursors_per_user() {
            $crate::store::suite::cursors_per_user(&*$make());
        }
    };
}
pub(crate) use history_suite;

mod memory {
    super::history_suite!(|| Box::new(crate::store::MemoryHistory::new()) as Box<dyn crate::store::History>);
}

mod embedded {
    use crate::store::History;
    use std::sync::OnceLock;

    fn dir() -> &'static tempfile::TempDir {
        static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
        DIR.get_or_init(|| tempfile::tempdir().unwrap())
    }

    fn open() -> Box<dyn crate::store::History> {
        let path = dir().path().join(format!("h-{}.redb", rand::random::<u64>()));
        Box::new(crate::store::EmbeddedHistory::open(&path).unwrap().0)
    }

    super::history_suite!(open);

    #[test]
    fn history_survives_reopening() {
        let path = dir().path().join("reopen.redb");
        let k = super::key("acme", "r");
        {
            let (h, corrupted) = crate::store::EmbeddedHistory::open(&path).unwrap();
            assert!(!corrupted);
            super::append(&h, &k, 9, 1..=3, &super::KEEP_ALL);
        }
        let (h, _) = crate::store::EmbeddedHistory::open(&path).unwrap();
        assert_eq!(h.meta(&k).unwrap().map(|m| (m.epoch, m.top)), Some((9, 3)));
        assert_eq!(super::offsets(&h.read_after(&k, 0, 10).unwrap()), vec![1, 2, 3]);
    }
}
