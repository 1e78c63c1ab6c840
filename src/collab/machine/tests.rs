//! The session rules, one input at a time, no IO.

use std::collections::HashMap;

use serde_json::json;

use super::*;

const LIMITS: Limits = Limits {
    max_document_bytes: 10_000,
    max_patch_bytes: 4096,
    snapshot_every_patches: 3,
    snapshot_every_bytes: 1 << 20,
    keep_patches: 5,
    expire_after_ms: 1000,
};

const OWNER: DeviceId = 1;
const EDITOR: DeviceId = 2;
const VIEWER: DeviceId = 3;

fn p(v: serde_json::Value) -> Payload {
    Payload::json(&v)
}

/// A session `{"title": "t", "items": [], "meta": {"a": 1, "b": 2}}` owned by alice (device 1),
/// with bob (device 2, editor) and carol (device 3, viewer by the session's role) joined.
fn session() -> CollabSession {
    let doc = p(json!({"title": "t", "items": [], "meta": {"a": 1, "b": 2}}));
    let (mut s, writes) = CollabSession::create("alice", &doc, None, SessionRole::Editor, None, LIMITS, 0).unwrap();
    assert!(matches!(&writes[..], [Write::Meta(_), Write::Snapshot(SessionSnapshot { version: 0, .. })]));
    s.join(OWNER, "alice", SessionRole::Owner, 0);
    s.join(EDITOR, "bob", SessionRole::Owner, 0);
    s.set_role(OWNER, "carol", SessionRole::Viewer).unwrap();
    s.join(VIEWER, "carol", SessionRole::Owner, 0);
    s
}

fn applied(outcome: PatchOutcome) -> (SessionPatch, bool, Vec<Write>) {
    match outcome {
        PatchOutcome::Applied { patch, rebased, writes } => (patch, rebased, writes),
        other => panic!("expected applied, got {other:?}"),
    }
}

#[test]
fn patches_get_consecutive_versions_and_change_the_document() {
    let mut s = session();
    let (one, rebased, _) =
        applied(s.patch(EDITOR, "p1", 0, &p(json!([{"op": "replace", "path": "/title", "value": "x"}])), 5).unwrap());
    assert_eq!((one.version, one.user.as_str(), rebased), (1, "bob", false));
    let (two, _, _) =
        applied(s.patch(OWNER, "p1", 1, &p(json!([{"op": "add", "path": "/items/-", "value": 1}])), 6).unwrap());
    assert_eq!(two.version, 2, "patch ids are per user");
    assert_eq!(s.doc(), &json!({"title": "x", "items": [1], "meta": {"a": 1, "b": 2}}));
    assert_eq!(s.version(), 2);
}

#[test]
fn an_older_base_is_rebased_when_it_touches_nothing_later_patches_touched() {
    let mut s = session();
    applied(s.patch(OWNER, "a", 0, &p(json!([{"op": "replace", "path": "/meta/a", "value": 10}])), 1).unwrap());
    // bob still at version 0 changes a sibling: rebased.
    let (patch, rebased, _) =
        applied(s.patch(EDITOR, "b", 0, &p(json!([{"op": "replace", "path": "/meta/b", "value": 20}])), 2).unwrap());
    assert_eq!((patch.version, rebased), (2, true));
    assert_eq!(s.doc()["meta"], json!({"a": 10, "b": 20}));
}

#[test]
fn an_older_base_that_touches_a_later_patch_s_path_is_a_conflict_naming_it() {
    let mut s = session();
    applied(s.patch(OWNER, "a", 0, &p(json!([{"op": "replace", "path": "/meta/a", "value": 10}])), 1).unwrap());
    applied(s.patch(OWNER, "b", 1, &p(json!([{"op": "replace", "path": "/title", "value": "y"}])), 1).unwrap());
    let before = s.doc().clone();
    // The same path, a parent of it, and a test reading it all conflict with version 1 only.
    for (id, ops) in [
        ("c1", json!([{"op": "replace", "path": "/meta/a", "value": 99}])),
        ("c2", json!([{"op": "remove", "path": "/meta"}])),
        ("c3", json!([{"op": "test", "path": "/meta/a", "value": 1}, {"op": "add", "path": "/z", "value": 0}])),
    ] {
        assert_eq!(
            s.patch(EDITOR, id, 0, &p(ops), 2).unwrap(),
            PatchOutcome::Conflict { base: 0, version: 2, conflicting: vec![1] },
            "{id}"
        );
    }
    assert_eq!(s.doc(), &before, "refused patches changed nothing");
    assert_eq!(s.version(), 2);
    // Made against version 1, the same change to /title conflicts with 2 but not with 1.
    let outcome = s.patch(EDITOR, "c4", 1, &p(json!([{"op": "replace", "path": "/title", "value": "z"}])), 2).unwrap();
    assert_eq!(outcome, PatchOutcome::Conflict { base: 1, version: 2, conflicting: vec![2] });
}

#[test]
fn array_element_adds_and_removes_count_as_touching_the_array() {
    let mut s = session();
    applied(s.patch(OWNER, "a", 0, &p(json!([{"op": "add", "path": "/items/0", "value": "x"}])), 1).unwrap());
    let outcome = s.patch(EDITOR, "b", 0, &p(json!([{"op": "add", "path": "/items/-", "value": "y"}])), 1).unwrap();
    assert!(matches!(outcome, PatchOutcome::Conflict { .. }), "indices shifted under it: {outcome:?}");
}

#[test]
fn a_base_older_than_the_remembered_patches_is_always_a_conflict() {
    let mut s = session();
    for i in 0..7u64 {
        let ops = json!([{"op": "replace", "path": "/title", "value": i}]);
        applied(s.patch(OWNER, &format!("t{i}"), i, &p(ops), 1).unwrap());
    }
    assert_eq!(s.oldest_base(), 2, "five patches remembered: 3..=7");
    let outcome = s.patch(EDITOR, "old", 1, &p(json!([{"op": "add", "path": "/other", "value": 1}])), 1).unwrap();
    assert_eq!(outcome, PatchOutcome::Conflict { base: 1, version: 7, conflicting: vec![] });
    assert!(matches!(
        s.patch(EDITOR, "ok", 2, &p(json!([{"op": "add", "path": "/other", "value": 1}])), 1).unwrap(),
        PatchOutcome::Applied { rebased: true, .. }
    ));
}

#[test]
fn test_operations_give_compare_and_set() {
    let mut s = session();
    let cas = |expect: &str, value: &str| {
        p(
            json!([{"op": "test", "path": "/title", "value": expect}, {"op": "replace", "path": "/title", "value": value}]),
        )
    };
    applied(s.patch(OWNER, "a", 0, &cas("t", "alice's"), 1).unwrap());
    // bob read "t" at version 1 too (after seeing it), and loses the race.
    let err = s.patch(EDITOR, "b", 1, &cas("t", "bob's"), 1).unwrap_err();
    assert!(matches!(err, SessionError::PatchFailed(ref m) if m.contains("/title")), "{err}");
    assert_eq!(err.code(), ErrorCode::PATCH_FAILED);
    assert_eq!(s.doc()["title"], json!("alice's"));
    assert_eq!(s.version(), 1);
}

#[test]
fn bad_patches_are_refused_with_their_code_and_change_nothing() {
    let mut s = session();
    let before = (s.doc().clone(), s.version());
    let cases: Vec<(Payload, ErrorCode)> = vec![
        (Payload::from("{\"op\": \"add\"}"), ErrorCode::BAD_PATCH),
        (Payload::from("not json"), ErrorCode::BAD_PATCH),
        (p(json!([{"op": "frobnicate", "path": "/x"}])), ErrorCode::BAD_PATCH),
        (p(json!([{"op": "add", "path": "no-slash", "value": 1}])), ErrorCode::BAD_PATCH),
        (p(json!([{"op": "remove", "path": "/missing"}])), ErrorCode::PATCH_FAILED),
        (p(json!([{"op": "replace", "path": "/meta/a/deeper", "value": 1}])), ErrorCode::PATCH_FAILED),
        // The first operation applies, the second does not: neither stays.
        (
            p(json!([{"op": "replace", "path": "/title", "value": "x"}, {"op": "remove", "path": "/nope"}])),
            ErrorCode::PATCH_FAILED,
        ),
        (p(json!([{"op": "add", "path": "/big", "value": "x".repeat(10_000)}])), ErrorCode::BAD_REQUEST),
    ];
    for (i, (patch, code)) in cases.into_iter().enumerate() {
        let err = s.patch(EDITOR, &format!("bad{i}"), 0, &patch, 1).unwrap_err();
        assert_eq!(err.code(), code, "case {i}: {err}");
        assert_eq!((s.doc().clone(), s.version()), before, "case {i} changed the session");
    }
    assert_eq!(s.patch(EDITOR, "", 0, &p(json!([])), 1).unwrap_err().code(), ErrorCode::BAD_REQUEST, "empty id");
    let err = s.patch(EDITOR, "ahead", 5, &p(json!([])), 1).unwrap_err();
    assert_eq!(err, SessionError::BadVersion { base: 5, version: 0 });
}

#[test]
fn the_size_limit_holds_for_growth_and_copies() {
    let doc = p(json!({"s": ""}));
    let (mut s, _) = CollabSession::create("alice", &doc, Some(200), SessionRole::Editor, None, LIMITS, 0).unwrap();
    s.join(OWNER, "alice", SessionRole::Owner, 0);
    let grow = |n: usize| p(json!([{"op": "replace", "path": "/s", "value": "x".repeat(n)}]));
    applied(s.patch(OWNER, "a", 0, &grow(150), 1).unwrap());
    let err = s.patch(OWNER, "b", 1, &grow(250), 1).unwrap_err();
    assert!(matches!(err, SessionError::TooLarge { max: 200, .. }), "{err}");
    // A copy doubles the document without growing the patch.
    let err = s.patch(OWNER, "c", 1, &p(json!([{"op": "copy", "from": "/s", "path": "/t"}])), 1).unwrap_err();
    assert_eq!(err.code(), ErrorCode::DOCUMENT_TOO_LARGE);
    assert_eq!(s.doc()["s"].as_str().map(str::len), Some(150));
    // Shrinking is fine, and then the copy fits.
    applied(s.patch(OWNER, "d", 1, &grow(10), 1).unwrap());
    applied(s.patch(OWNER, "e", 2, &p(json!([{"op": "copy", "from": "/s", "path": "/t"}])), 1).unwrap());
    let too_big = p(json!({"s": "x".repeat(300)}));
    let err = CollabSession::create("alice", &too_big, Some(200), SessionRole::Editor, None, LIMITS, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::DOCUMENT_TOO_LARGE);
}

#[test]
fn viewers_cannot_patch_and_the_token_bounds_the_session_role() {
    let mut s = session();
    let patch = p(json!([{"op": "replace", "path": "/title", "value": "v"}]));
    assert_eq!(s.patch(VIEWER, "v", 0, &patch, 1).unwrap_err(), SessionError::ReadOnly);
    // dave is an editor by default, but his token only allows reading.
    let (role, _, _) = s.join(9, "dave", SessionRole::Viewer, 1);
    assert_eq!(role, SessionRole::Viewer);
    assert_eq!(s.patch(9, "d", 0, &patch, 1).unwrap_err().code(), ErrorCode::READ_ONLY);
    // The owner through a read-only token is a viewer on that device.
    s.join(10, "alice", SessionRole::Viewer, 1);
    assert_eq!(s.device_role(10), Some(SessionRole::Viewer));
    assert_eq!(s.set_role(10, "dave", SessionRole::Editor).unwrap_err(), SessionError::NotOwner);
    assert_eq!(s.patch(42, "x", 0, &patch, 1).unwrap_err(), SessionError::NotIn);
    assert_eq!(s.version(), 0);
}

#[test]
fn the_owner_changes_roles_and_hands_ownership_over() {
    let mut s = session();
    assert_eq!(s.set_role(EDITOR, "carol", SessionRole::Editor).unwrap_err(), SessionError::NotOwner);
    let (events, write) = s.set_role(OWNER, "carol", SessionRole::Editor).unwrap();
    assert_eq!(
        events,
        vec![SessionEvent::Member {
            member: SessionMember { user: "carol".into(), role: SessionRole::Editor, present: true }
        }]
    );
    assert!(matches!(write, Write::Meta(ref m) if m.roles.get("carol") == Some(&SessionRole::Editor)));
    applied(s.patch(VIEWER, "now", 0, &p(json!([{"op": "add", "path": "/c", "value": 1}])), 1).unwrap());
    // Hand over to bob: alice becomes an editor and loses the owner's actions.
    let (events, _) = s.set_role(OWNER, "bob", SessionRole::Owner).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(s.meta().owner, "bob");
    assert_eq!(s.role_of("alice"), SessionRole::Editor);
    assert_eq!(s.close(OWNER).unwrap_err(), SessionError::NotOwner);
    assert!(s.close(EDITOR).is_ok());
    assert_eq!(s.set_role(EDITOR, "bob", SessionRole::Viewer).unwrap_err().code(), ErrorCode::BAD_REQUEST);
}

#[test]
fn a_closed_session_refuses_patches_but_stays_readable() {
    let mut s = session();
    let (event, write) = s.close(OWNER).unwrap();
    assert_eq!(event, SessionEvent::Closed { by: "alice".into() });
    assert!(matches!(write, Write::Meta(ref m) if m.status == SessionStatus::Closed));
    let err = s.patch(EDITOR, "x", 0, &p(json!([{"op": "add", "path": "/x", "value": 1}])), 1).unwrap_err();
    assert_eq!(err.code(), ErrorCode::SESSION_CLOSED);
    let (role, _, _) = s.join(7, "erin", SessionRole::Owner, 2);
    assert_eq!(role, SessionRole::Editor, "joining still works");
    assert_eq!(s.close(OWNER).unwrap_err(), SessionError::Closed);
}

#[test]
fn a_retried_patch_id_is_answered_with_its_version_and_applied_once() {
    let mut s = session();
    let patch = p(json!([{"op": "add", "path": "/items/-", "value": "once"}]));
    applied(s.patch(EDITOR, "same", 0, &patch, 1).unwrap());
    // From another device of bob's (he reconnected), against an old base.
    s.join(20, "bob", SessionRole::Owner, 2);
    assert_eq!(s.patch(20, "same", 0, &patch, 2).unwrap(), PatchOutcome::Duplicate { version: 1 });
    assert_eq!(s.doc()["items"], json!(["once"]));
}

#[test]
fn members_and_lifecycle_events_follow_users_not_devices() {
    let mut s = session();
    // bob's second device: no event; his first leaving: none; his last: member + cursor gone.
    let (_, events, _) = s.join(21, "bob", SessionRole::Owner, 1);
    assert!(events.is_empty());
    assert!(s.leave(EDITOR, 2).unwrap().0.is_empty());
    let (events, _) = s.leave(21, 3).unwrap();
    assert_eq!(
        events,
        vec![
            SessionEvent::Member {
                member: SessionMember { user: "bob".into(), role: SessionRole::Editor, present: false }
            },
            SessionEvent::Cursor { user: "bob".into(), data: None },
        ]
    );
    assert!(s.leave(21, 3).is_none(), "not joined any more");
    let (_, events, _) = s.join(22, "frank", SessionRole::Owner, 4);
    assert_eq!(events.len(), 1, "a new user");
    let members = s.members();
    assert_eq!(members[0].user, "alice");
    assert!(members.iter().any(|m| m.user == "carol" && m.role == SessionRole::Viewer && m.present));
}

#[test]
fn a_session_nobody_joined_for_the_configured_time_expires() {
    let mut s = session();
    assert!(!s.expired(10_000), "members are present");
    for d in [OWNER, EDITOR, VIEWER] {
        s.leave(d, 100);
    }
    assert!(!s.expired(1099));
    assert!(s.expired(1100));
    s.join(5, "gus", SessionRole::Owner, 1100);
    assert!(!s.expired(5000));
}

#[test]
fn snapshots_every_n_patches_and_a_restore_reaches_the_same_state() {
    let mut s = session();
    let mut stored = Vec::new();
    let mut snapshot = None;
    for i in 0..7u64 {
        let ops = p(json!([{"op": "add", "path": "/items/-", "value": i}]));
        let (patch, _, writes) = applied(s.patch(EDITOR, &format!("i{i}"), i, &ops, i).unwrap());
        stored.push(patch);
        for w in writes {
            if let Write::Snapshot(snap) = w {
                snapshot = Some(snap);
            }
        }
    }
    let snapshot = snapshot.expect("snapshots were taken");
    assert_eq!(snapshot.version, 6, "every 3 patches");
    let (earlier, after): (Vec<_>, Vec<_>) = stored.iter().cloned().partition(|p| p.version <= 6);
    let restored =
        CollabSession::restore(s.meta().clone(), &snapshot, &earlier, &after, Default::default(), LIMITS).unwrap();
    assert_eq!(restored.doc(), s.doc());
    assert_eq!(restored.version(), 7);
    assert_eq!(restored.patches_after(5).map(|p| p.len()), Some(2), "the missed patches are remembered");
    assert_eq!(restored.patches_after(1), None, "older than remembered");
    // Dedupe survives the restore too.
    let mut restored = restored;
    restored.join(EDITOR, "bob", SessionRole::Owner, 0);
    assert_eq!(restored.patch(EDITOR, "i3", 0, &p(json!([])), 1).unwrap(), PatchOutcome::Duplicate { version: 4 });
}

#[test]
fn patch_ids_are_remembered_per_user_whatever_the_others_send() {
    let mut s = session();
    applied(s.patch(EDITOR, "mine", 0, &p(json!([{"op": "add", "path": "/items/-", "value": 0}])), 1).unwrap());
    for i in 0..(LIMITS.keep_patches as u64 + 10) {
        let ops = p(json!([{"op": "replace", "path": "/title", "value": i}]));
        applied(s.patch(OWNER, &format!("o{i}"), s.version(), &ops, 1).unwrap());
    }
    assert_eq!(s.patch(EDITOR, "mine", 0, &p(json!([])), 1).unwrap(), PatchOutcome::Duplicate { version: 1 });
    // The ids are written with each patch, and restored from there.
    let (_, _, writes) = applied(s.patch(EDITOR, "next", s.version(), &p(json!([])), 1).unwrap());
    let stored: HashMap<String, Vec<(String, u64)>> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Ids { user, ids } => Some((user.clone(), ids.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(stored["bob"].iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), vec!["mine", "next"]);
    let mut restored = CollabSession::restore(s.meta().clone(), &s.snapshot(), &[], &[], stored, LIMITS).unwrap();
    restored.join(EDITOR, "bob", SessionRole::Owner, 0);
    assert_eq!(restored.patch(EDITOR, "mine", 0, &p(json!([])), 1).unwrap(), PatchOutcome::Duplicate { version: 1 });
    // At most DEDUPE_PER_USER per user.
    for i in 0..DEDUPE_PER_USER + 1 {
        applied(s.patch(EDITOR, &format!("b{i}"), s.version(), &p(json!([])), 1).unwrap());
    }
    assert!(matches!(s.patch(EDITOR, "mine", s.version(), &p(json!([])), 1).unwrap(), PatchOutcome::Applied { .. }));
}

#[test]
fn create_checks_its_inputs() {
    let doc = p(json!({}));
    let err = CollabSession::create("a", &doc, None, SessionRole::Owner, None, LIMITS, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BAD_REQUEST);
    let err = CollabSession::create("a", &Payload::from("{"), None, SessionRole::Editor, None, LIMITS, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BAD_PATCH);
    let (s, _) = CollabSession::create("a", &doc, Some(1 << 30), SessionRole::Viewer, None, LIMITS, 0).unwrap();
    assert_eq!(s.meta().max_bytes as usize, LIMITS.max_document_bytes, "bounded by the relay's limit");
    assert_eq!(s.role_of("anyone"), SessionRole::Viewer);
}

#[test]
fn a_schema_holds_for_the_initial_document_and_every_patch() {
    let schema =
        p(json!({"type": "object", "properties": {"n": {"type": "integer", "maximum": 10}}, "required": ["n"]}));
    let bad = CollabSession::create("a", &p(json!({"n": "x"})), None, SessionRole::Editor, Some(&schema), LIMITS, 0);
    assert_eq!(bad.unwrap_err().code(), ErrorCode::SCHEMA_VIOLATION);
    let not_a_schema = p(json!({"type": 12}));
    let bad =
        CollabSession::create("a", &p(json!({"n": 1})), None, SessionRole::Editor, Some(&not_a_schema), LIMITS, 0);
    assert_eq!(bad.unwrap_err().code(), ErrorCode::BAD_REQUEST);
    let (mut s, writes) =
        CollabSession::create("a", &p(json!({"n": 1})), None, SessionRole::Editor, Some(&schema), LIMITS, 0).unwrap();
    s.join(OWNER, "a", SessionRole::Owner, 0);
    applied(s.patch(OWNER, "ok", 0, &p(json!([{"op": "replace", "path": "/n", "value": 10}])), 1).unwrap());
    for (id, ops) in [
        ("too big", json!([{"op": "replace", "path": "/n", "value": 11}])),
        ("wrong type", json!([{"op": "replace", "path": "/n", "value": "ten"}])),
        ("required", json!([{"op": "remove", "path": "/n"}])),
    ] {
        let err = s.patch(OWNER, id, 1, &p(ops), 1).unwrap_err();
        assert_eq!(err.code(), ErrorCode::SCHEMA_VIOLATION, "{id}: {err}");
    }
    assert_eq!((s.version(), s.doc().clone()), (1, json!({"n": 10})), "refused patches changed nothing");
    // The schema is stored with the meta and compiled again on restore.
    let Write::Meta(meta) = &writes[0] else { panic!("meta first") };
    let mut restored =
        CollabSession::restore(meta.clone(), &s.snapshot(), &[], &[], Default::default(), LIMITS).unwrap();
    restored.join(OWNER, "a", SessionRole::Owner, 0);
    let err = restored.patch(OWNER, "again", 1, &p(json!([{"op": "remove", "path": "/n"}])), 1).unwrap_err();
    assert_eq!(err.code(), ErrorCode::SCHEMA_VIOLATION);
}
