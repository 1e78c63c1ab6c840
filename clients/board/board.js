// The collaborative board served at `/board/` (docs/sessions.md, "The board demo"): a to-do
// board in three columns that everyone on it edits together, built only on the browser SDK's
// sessions module (`/sdk/sessions.js`). The board is one session's JSON document:
//
//   {"title": "…", "cards": {"<id>": {"text": "…", "column": "todo" | "doing" | "done", "by": "alice", "at": 1700000000000}}}
//
// Cards are keyed by id, so two people adding cards at once touch different paths and both
// patches apply (the relay rebases the later one); two people editing the same card's text
// conflict, and the page makes its edit again on the newer board (the latest edit wins, nothing
// is half-applied). Everyone's pointer is a session cursor (`{x, y, card}`, fractions of the
// board's box): ephemeral, throttled by the relay, gone when its owner leaves. The member list
// shows each user's role; the owner can change them, and a viewer's board is read-only.
//
// Why the page keeps no state of its own: it renders `Session.doc` after every change, and a
// reload joins again and gets the board from the relay.
//
// URL fragment options: `name`, `board` (the session id, default `board:team`), `token` (use
// this token instead of a dev token; kept in this tab's sessionStorage, out of the address bar),
// `transport` (`auto` | `webtransport` | `websocket`). `window.board` exposes the page's state
// and actions for tests.

import { EdgeRelay, endpointUrls, messageId } from "/sdk/index.js";
import { SessionConflict, session } from "/sdk/sessions.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const TOKEN_KEY = "edgerelay-board-token";
if (params.get("token")) {
  sessionStorage.setItem(TOKEN_KEY, params.get("token"));
  params.delete("token");
  history.replaceState(null, "", `#${params}`);
}
if (params.get("name")) $("name").value = params.get("name");
if (params.get("board")) $("board-id").value = params.get("board");

const COLUMNS = [
  ["todo", "To do"],
  ["doing", "Doing"],
  ["done", "Done"],
];
const INITIAL = { title: "Our board", cards: {} };
// Relay error codes (docs/sessions.md, "Errors").
const UNKNOWN_SESSION = 170;
const SESSION_EXISTS = 171;
const PATCH_FAILED = 177;
// Pointer updates sent at most this often (the relay delivers at most `sessions.cursor_rate`/s).
const CURSOR_EVERY_MS = 60;
// Edits made again on a newer board after a conflict, at most.
const RETRIES = 5;

const board = {
  client: null,
  session: null,
  state: "idle",
  transport: null,
  me: null,
  /** Cursors shown: user → `{x, y, card}`. */
  cursors: new Map(),
  /** Conflicts met and edits made again (for the curious and for tests). */
  conflicts: 0,
};
window.board = board;

// --- colours: one per user, the same on every page ---

function colour(user) {
  let h = 0;
  for (const c of user) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return `hsl(${h % 360} 70% 45%)`;
}

// --- status and notices ---

const TRANSPORTS = { webtransport: "WebTransport", websocket: "WebSocket" };

function showStatus({ state, transport }) {
  board.state = state;
  board.transport = transport;
  const status = $("status");
  status.className = state;
  status.textContent =
    state === "open"
      ? `Connected over ${TRANSPORTS[transport] ?? transport}`
      : state === "reconnecting"
        ? "Connection lost. Reconnecting… (your board comes back as it is on the relay)"
        : state === "connecting"
          ? "Connecting…"
          : state === "closed"
            ? "Disconnected"
            : state;
  render();
}

let noticeTimer;
function notice(text) {
  $("notice").textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => ($("notice").textContent = ""), 6000);
}

// --- rendering ---

const canEdit = () => board.session?.joined && board.session.myRole !== "viewer" && board.session.status === "open";

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

function cardsIn(column) {
  const cards = board.session?.doc?.cards ?? {};
  return Object.entries(cards)
    .filter(([, card]) => card?.column === column)
    .sort(
      ([a, x], [b, y]) =>
        (x.at ?? 0) - (y.at ?? 0) || String(x.text).localeCompare(String(y.text), undefined, { numeric: true }) || (a < b ? -1 : 1),
    );
}

function renderCard(id, card, columnIndex) {
  const editable = canEdit();
  const text = el("div", { className: "text", textContent: card.text ?? "", title: editable ? "double-click to edit" : "" });
  text.addEventListener("dblclick", () => editInPlace(li, id, card.text ?? ""));
  const move = (delta, label, title) => {
    const target = COLUMNS[columnIndex + delta];
    const button = el("button", { type: "button", textContent: label, title, disabled: !editable || !target });
    button.addEventListener("click", () => board.moveCard(id, target[0]));
    return button;
  };
  const remove = el("button", { type: "button", textContent: "✕", title: "delete", disabled: !editable });
  remove.addEventListener("click", () => board.removeCard(id));
  const li = el("li", { className: "card" }, [
    text,
    el("div", { className: "meta" }, [
      el("span", { className: "by", textContent: card.by ?? "" }),
      move(-1, "←", "move left"),
      move(1, "→", "move right"),
      remove,
    ]),
  ]);
  li.dataset.card = id;
  // Someone else's pointer on this card outlines it in their colour.
  const over = [...board.cursors].find(([, c]) => c?.card === id);
  if (over) li.style.outlineColor = colour(over[0]);
  return li;
}

function editInPlace(li, id, current) {
  if (!canEdit()) return;
  const input = el("input", { value: current, "aria-label": "card text" });
  li.querySelector(".text").replaceWith(input);
  input.focus();
  input.select();
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    const value = input.value.trim();
    if (save && value && value !== current) board.editCard(id, value);
    else render();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") finish(true);
    if (e.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
}

function render() {
  const s = board.session;
  const doc = s?.doc;
  const editable = canEdit();
  if (document.activeElement !== $("title")) $("title").value = doc?.title ?? "";
  $("title").disabled = !editable;
  // Keep an open in-place editor: re-rendering would drop what is being typed.
  if (document.activeElement?.closest?.(".card")) return renderSide();
  const columns = COLUMNS.map(([column, label], index) => {
    const cards = cardsIn(column);
    const list = el("ul", { className: "cards" }, cards.map(([id, card]) => renderCard(id, card, index)));
    const parts = [el("h2", {}, [label, el("span", { className: "count", textContent: String(cards.length) })]), list];
    if (column === "todo") {
      const input = el("input", { placeholder: editable ? "add a card" : "read-only", disabled: !editable, "aria-label": "new card" });
      const form = el("form", { className: "add" }, [input, el("button", { textContent: "Add", disabled: !editable })]);
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        const text = input.value.trim();
        if (!text) return;
        input.value = "";
        board.addCard(text).catch(() => {});
      });
      parts.splice(1, 0, form);
    }
    const section = el("section", { className: "column" }, parts);
    section.dataset.column = column;
    return section;
  });
  const had = $("board").querySelector(".add input");
  const refocus = had && document.activeElement === had;
  const typed = had?.value ?? "";
  $("board").replaceChildren(...columns, ...cursorNodes());
  const add = $("board").querySelector(".add input");
  if (add) {
    add.value = typed;
    if (refocus) add.focus();
  }
  renderSide();
}

function renderSide() {
  const s = board.session;
  if (!s?.joined && !s?.members?.size) return;
  const iAmOwner = s.myRole === "owner";
  const items = [...s.members.values()].map((m) => {
    const me = m.user === board.me;
    const parts = [
      el("span", { className: "swatch", style: `background:${colour(m.user)}` }),
      el("span", { className: "name", textContent: me ? `${m.user} (you)` : m.user, title: m.present ? "here" : "away" }),
    ];
    if (iAmOwner && !me) {
      const select = el(
        "select",
        { "aria-label": `role of ${m.user}` },
        ["viewer", "editor", "owner"].map((r) => el("option", { value: r, textContent: r, selected: r === m.role })),
      );
      select.addEventListener("change", () =>
        s.role(m.user, select.value).catch((err) => {
          notice(`could not change ${m.user}'s role: ${err.message}`);
          renderSide();
        }),
      );
      parts.push(select);
    } else {
      parts.push(el("span", { className: `role ${m.role}`, textContent: m.role }));
    }
    const li = el("li", { className: m.present ? "" : "away" }, parts);
    li.dataset.user = m.user;
    li.dataset.role = m.role;
    return li;
  });
  $("members").replaceChildren(...items);
  const mine = s.myRole === "viewer" ? " · you can view, not edit" : "";
  $("version").textContent = s.version === null ? "" : `version ${s.version}${s.status === "closed" ? " · closed" : ""}${mine}`;
}

// --- cursors ---

function cursorNodes() {
  return [...board.cursors].map(([user, c]) => cursorNode(user, c));
}

function cursorNode(user, c) {
  const node = el("div", { className: "cursor" });
  node.dataset.user = user;
  node.innerHTML = `<svg width="16" height="20" viewBox="0 0 16 20"><path d="M1 1 L1 16 L5 12 L8 19 L11 18 L8 11 L14 11 Z" fill="${colour(user)}" stroke="#fff" stroke-width="1.2"/></svg>`;
  node.append(el("span", { textContent: user, style: `background:${colour(user)}` }));
  placeCursor(node, c);
  return node;
}

function placeCursor(node, c) {
  const box = $("board").getBoundingClientRect();
  node.style.transform = `translate(${Math.round(c.x * box.width)}px, ${Math.round(c.y * box.height)}px)`;
}

function showCursor({ user, data }) {
  const valid = data && typeof data.x === "number" && typeof data.y === "number";
  if (!valid) board.cursors.delete(user);
  else board.cursors.set(user, { x: clamp(data.x), y: clamp(data.y), card: typeof data.card === "string" ? data.card : null });
  const old = $("board").querySelector(`.cursor[data-user="${CSS.escape(user)}"]`);
  const hoverChanged = (old?.dataset.card ?? null) !== (board.cursors.get(user)?.card ?? null);
  if (!valid) old?.remove();
  else if (old) placeCursor(old, board.cursors.get(user));
  else $("board").append(cursorNode(user, board.cursors.get(user)));
  const node = $("board").querySelector(`.cursor[data-user="${CSS.escape(user)}"]`);
  if (node) node.dataset.card = board.cursors.get(user)?.card ?? "";
  if (hoverChanged) {
    for (const li of $("board").querySelectorAll(".card")) {
      const over = [...board.cursors].find(([, c]) => c?.card === li.dataset.card);
      li.style.outlineColor = over ? colour(over[0]) : "transparent";
    }
  }
}

const clamp = (v) => Math.min(1, Math.max(0, v));

let lastCursorAt = 0;
let cursorTimer = null;
let pendingCursor = null;
$("board").addEventListener("pointermove", (e) => {
  if (!board.session?.joined) return;
  const box = $("board").getBoundingClientRect();
  const card = e.target.closest?.(".card")?.dataset.card ?? null;
  pendingCursor = { x: (e.clientX - box.left) / box.width, y: (e.clientY - box.top) / box.height, card };
  const wait = lastCursorAt + CURSOR_EVERY_MS - Date.now();
  if (cursorTimer) return;
  cursorTimer = setTimeout(sendCursor, Math.max(0, wait));
});

function sendCursor() {
  cursorTimer = null;
  if (!pendingCursor || !board.session?.joined) return;
  lastCursorAt = Date.now();
  board.session.cursor(pendingCursor).catch(() => {});
  pendingCursor = null;
}

// --- editing: each change is a patch made on the board as the page has it ---

/** The version the page reaches once it has applied `version` (the relay sends it). */
function reached(s, version) {
  if (s.version !== null && s.version >= version) return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (s.version === null || s.version < version) return;
      s.removeEventListener("patched", check);
      s.removeEventListener("joined", check);
      resolve();
    };
    s.addEventListener("patched", check);
    s.addEventListener("joined", check);
  });
}

/**
 * Sends the patch `make(doc)` returns (nothing when it returns null). On a conflict (someone
 * changed the same card meanwhile) it waits for their change and makes the patch again on the
 * newer board; the same patch id is not reused, since it is a new patch.
 */
async function edit(make) {
  const s = board.session;
  for (let attempt = 0; attempt <= RETRIES; attempt++) {
    const ops = make(s.doc);
    if (!ops) return null;
    try {
      return await s.patch(ops, { id: messageId() });
    } catch (err) {
      if (err instanceof SessionConflict) {
        board.conflicts++;
        await reached(s, err.version);
        continue;
      }
      if (err?.code === PATCH_FAILED) {
        notice("someone changed that card at the same time: the board shows their change");
        return null;
      }
      notice(`not saved: ${err.message}`);
      throw err;
    }
  }
  notice("the board is changing too fast: try again");
  return null;
}

const pointer = (id) => `/cards/${id.replaceAll("~", "~0").replaceAll("/", "~1")}`;

board.addCard = (text, column = "todo") => {
  const id = `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  const card = { text, column, by: board.me, at: Date.now() };
  return edit(() => [{ op: "add", path: pointer(id), value: card }]).then((r) => (r ? id : null));
};
board.moveCard = (id, column) =>
  edit((doc) => (doc.cards?.[id] ? [{ op: "replace", path: `${pointer(id)}/column`, value: column }] : null));
board.editCard = (id, text) =>
  edit((doc) => (doc.cards?.[id] ? [{ op: "replace", path: `${pointer(id)}/text`, value: text }] : null));
board.removeCard = (id) => edit((doc) => (doc.cards?.[id] ? [{ op: "remove", path: pointer(id) }] : null));
board.setTitle = (title) => edit(() => [{ op: "replace", path: "/title", value: title }]);
board.doc = () => board.session?.doc ?? null;

$("title").addEventListener("change", () => {
  const title = $("title").value.trim();
  if (title && title !== board.session?.doc?.title) board.setTitle(title);
});

// --- opening a board ---

async function devToken(name) {
  const response = await fetch("/v1/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user: name, session: ["board:*"] }),
  });
  if (response.status === 404) {
    $("token-box").open = true;
    notice("this relay hands out no dev tokens: use a token with a session capability for the board");
    setTimeout(() => board.client?.close(), 0);
    throw new Error("no dev tokens here");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.message ?? `dev token: HTTP ${response.status}`);
  return body.token;
}

async function open({ token, name }, id) {
  const endpoints = await fetch("/v1/endpoints").then((r) => r.json());
  const client = new EdgeRelay({
    ...(token ? { token } : { getToken: () => devToken(name) }),
    transport: params.get("transport") ?? "auto",
    ...endpointUrls(location, endpoints),
    certHashes: () => fetch("/v1/cert").then((r) => r.json()).then((cert) => cert.hashes),
    clientName: "edgerelay-board/1",
  });
  board.client = client;
  client.addEventListener("status", (e) => showStatus(e.detail));
  const welcome = await client.connect();
  board.me = welcome.user;
  const s = session(client, id);
  board.session = s;
  for (const type of ["joined", "patched", "member", "closed"]) s.addEventListener(type, render);
  s.addEventListener("cursor", (e) => showCursor(e.detail));
  s.addEventListener("ended", ({ detail }) => notice(`this board was ${detail.reason}`));
  s.addEventListener("error", ({ detail }) => notice(`could not rejoin the board: ${detail.message}`));
  // Join the board, or make it when it does not exist yet (two people making it at once: one
  // makes it, the other joins).
  try {
    await s.join();
  } catch (err) {
    if (err?.code !== UNKNOWN_SESSION) throw err;
    try {
      await s.create(INITIAL);
    } catch (again) {
      if (again?.code !== SESSION_EXISTS) throw again;
      await s.join();
    }
  }
  if (!token) params.set("name", welcome.user);
  params.set("board", id);
  history.replaceState(null, "", `#${params}`);
  showStatus({ state: client.state, transport: client.transport });
  return s;
}

function start(credentials) {
  board.client?.close();
  board.session = null;
  board.cursors.clear();
  board.ready = open(credentials, $("board-id").value.trim() || "board:team");
  board.ready.catch((err) => notice(`could not open the board: ${err.message}`));
  return board.ready;
}

$("open").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("name").value.trim();
  if (!name) return $("name").focus();
  start({ name });
});
$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  start({ token: token || sessionStorage.getItem(TOKEN_KEY) });
});
window.addEventListener("resize", () => {
  for (const node of $("board").querySelectorAll(".cursor")) placeCursor(node, board.cursors.get(node.dataset.user));
});

const stored = sessionStorage.getItem(TOKEN_KEY);
if (stored) start({ token: stored });
else if (params.get("name")) start({ name: params.get("name") });
