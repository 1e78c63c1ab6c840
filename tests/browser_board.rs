//! The collaborative board (`/board/`, docs/sessions.md "The board demo") as two people use it in
//! headless Chromium: Alice on WebTransport, Bob forced onto WebSocket, each with a name and a dev
//! token the page asks for. Both add cards and edit the same card at once and end with the same
//! board, on screen too; Alice's pointer moves on Bob's page; roles show and a role change makes
//! Bob's board read-only; a reload brings the board back from the relay. The screenshot is
//! `target/tmp/board.png` (`docs/sessions-board.png` with `EDGERELAY_UPDATE_SCREENSHOTS=1`).
//!
//! Chromium is driven by tests/common/browser.rs, as in tests/browser.rs.

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::Browser;
use common::start;
use serde_json::{Value, json};

const BOARD: &str = "board:e2e";
const CARDS_EACH: usize = 5;

/// The page's board and version once it is joined and has reached `version` or more.
async fn board_at(browser: &mut Browser, page: &str, version: u64) -> Value {
    browser
        .wait_for(
            page,
            &format!(
                "window.board && board.session && board.session.joined && board.session.version >= {version} \
                 && {{version: board.session.version, doc: board.session.doc}}"
            ),
        )
        .await
}

/// The cards shown on a page: (column, text), sorted.
async fn shown(browser: &mut Browser, page: &str) -> Vec<(String, String)> {
    let cards = browser
        .eval(
            page,
            "[...document.querySelectorAll('.column')].flatMap(c => [...c.querySelectorAll('.card .text')].map(t => [c.dataset.column, t.textContent]))",
        )
        .await;
    let mut cards: Vec<(String, String)> = serde_json::from_value(cards).unwrap();
    cards.sort();
    cards
}

/// The cards of a board document: (column, text), sorted.
fn cards_of(doc: &Value) -> Vec<(String, String)> {
    let mut cards: Vec<(String, String)> = doc["cards"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| (c["column"].as_str().unwrap().to_owned(), c["text"].as_str().unwrap().to_owned()))
        .collect();
    cards.sort();
    cards
}

/// Moves the mouse over `page` to (x, y) CSS pixels.
async fn mouse(browser: &mut Browser, page: &str, x: f64, y: f64) {
    let event = json!({"type": "mouseMoved", "x": x, "y": y});
    browser.call(Some(page), "Input.dispatchMouseEvent", event).await;
}

#[tokio::test]
async fn two_people_edit_one_board_with_live_cursors_roles_and_a_reload() {
    let relay = start().await;
    let mut browser = Browser::launch().await;
    let port = relay.relay.tcp_addr().port();
    let url = |name: &str, extra: &str| format!("http://127.0.0.1:{port}/board/#name={name}&board={BOARD}{extra}");
    let alice = browser.open(&url("alice", "")).await;
    board_at(&mut browser, &alice, 0).await;
    let bob = browser.open(&url("bob", "&transport=websocket")).await;
    board_at(&mut browser, &bob, 0).await;
    assert_eq!(browser.eval(&alice, "board.transport").await, json!("webtransport"));
    assert_eq!(browser.eval(&bob, "board.transport").await, json!("websocket"));

    // Roles show: Alice made the board (owner), Bob joined it (editor), on both pages.
    for page in [&alice, &bob] {
        let roles = browser
            .wait_for(
                page,
                "(a => a && a.length === 2 && a)([...document.querySelectorAll('#members li')].map(li => [li.dataset.user, li.dataset.role]))",
            )
            .await;
        assert_eq!(roles, json!([["alice", "owner"], ["bob", "editor"]]));
    }

    // Concurrent edits: one card to fight over, then both add cards and both retitle it at once.
    let contested = browser.eval(&alice, "board.addCard('contested')").await;
    let contested = contested.as_str().unwrap().to_owned();
    board_at(&mut browser, &bob, 1).await;
    let burst = |who: &str| {
        format!(
            "board.burst = Promise.all([...Array({CARDS_EACH}).keys()].map(i => board.addCard(`{who} ${{i}}`))\
             .concat([board.editCard({contested:?}, 'edited by {who}'), board.moveCard({contested:?}, 'doing')])); true"
        )
    };
    browser.eval(&alice, &burst("alice")).await;
    browser.eval(&bob, &burst("bob")).await;
    for page in [&alice, &bob] {
        browser.eval(page, "board.burst.then(() => true)").await;
    }
    let expected_version = 1 + 2 * (CARDS_EACH as u64 + 2);
    let a = board_at(&mut browser, &alice, expected_version).await;
    let b = board_at(&mut browser, &bob, expected_version).await;
    assert_eq!(a, b, "both pages hold the same board at the same version");
    let cards = cards_of(&a["doc"]);
    assert_eq!(cards.len(), 1 + 2 * CARDS_EACH, "{cards:?}");
    for who in ["alice", "bob"] {
        for i in 0..CARDS_EACH {
            assert!(cards.contains(&("todo".into(), format!("{who} {i}"))), "{who} {i} in {cards:?}");
        }
    }
    let winner = &a["doc"]["cards"][&contested];
    assert_eq!(winner["column"], json!("doing"));
    assert!(matches!(winner["text"].as_str(), Some("edited by alice" | "edited by bob")), "{winner}");
    for page in [&alice, &bob] {
        assert_eq!(shown(&mut browser, page).await, cards, "the page shows the board it holds");
    }

    // Alice's pointer moves on Bob's page (and outlines the card under it).
    let target = browser
        .eval(
            &alice,
            &format!(
                "(r => [r.left + r.width / 2, r.top + r.height / 2])(document.querySelector('.card[data-card=\"{contested}\"]').getBoundingClientRect())"
            ),
        )
        .await;
    let (x, y) = (target[0].as_f64().unwrap(), target[1].as_f64().unwrap());
    mouse(&mut browser, &alice, x, y).await;
    let seen = browser
        .wait_for(&bob, "document.querySelector('.cursor[data-user=alice]') && board.cursors.get('alice')")
        .await;
    assert_eq!(seen["card"], json!(contested), "the card under Alice's pointer");
    let first_x = seen["x"].as_f64().unwrap();
    mouse(&mut browser, &alice, x - 120.0, y + 200.0).await;
    let moved =
        browser.wait_for(&bob, &format!("(c => c && c.x < {first_x} - 0.05 && c)(board.cursors.get('alice'))")).await;
    assert!(moved["y"].as_f64().unwrap() > seen["y"].as_f64().unwrap(), "it moved down too: {moved}");

    // Bob's pointer on Alice's page.
    let done = browser
        .eval(&bob, "(r => [r.left + r.width / 3, r.top + r.height / 2])(document.querySelector('.column[data-column=done]').getBoundingClientRect())")
        .await;
    mouse(&mut browser, &bob, done[0].as_f64().unwrap(), done[1].as_f64().unwrap()).await;
    browser.wait_for(&alice, "document.querySelector('.cursor[data-user=bob]') !== null").await;
    // Bob's page, in front, shows Alice's pointer over the board.
    browser.call(Some(&bob), "Page.bringToFront", json!({})).await;
    browser.save_screenshot(&bob, "board.png", "sessions-board.png").await;

    // Alice makes Bob a viewer: his page says so and his board is read-only.
    browser.eval(&alice, "board.session.role('bob', 'viewer').then(() => true)").await;
    browser.wait_for(&bob, "board.session.myRole === 'viewer' && document.querySelector('.add input').disabled").await;
    let role = browser.eval(&alice, "document.querySelector('#members li[data-user=bob] select').value").await;
    assert_eq!(role, json!("viewer"), "the owner's page has the role in its picker");
    let refused = browser.eval(&bob, "board.addCard('sneaky').then(id => id, e => e.code)").await;
    assert_eq!(refused, json!(174), "read_only");

    // A reload brings Bob's board back from the relay, as Alice has it.
    browser.call(Some(&bob), "Page.reload", json!({})).await;
    let reloaded = board_at(&mut browser, &bob, expected_version).await;
    assert_eq!(reloaded, board_at(&mut browser, &alice, expected_version).await);
    assert_eq!(shown(&mut browser, &bob).await, cards);
    assert_eq!(browser.eval(&bob, "board.session.myRole").await, json!("viewer"));
    browser.close().await;
}
