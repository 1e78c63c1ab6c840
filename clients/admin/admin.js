// The admin UI (docs/operations.md, "Admin UI"). Plain JavaScript, no build step. The page holds
// no data: it signs in with the server API key, keeps it in sessionStorage (this tab only) and
// sends it with every call to /v1/api/admin/... and the server API.

const KEY = 'edgerelay.admin.key';
const PAGE = 20;
const REFRESH_MS = 3000;
const SPARK = 40;

const $ = (id) => document.getElementById(id);
let timer = null;
const view = { roomsOffset: 0, connectionsOffset: 0, history: null };
const samples = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'onclick') node.addEventListener('click', value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ''));
  return node;
}

function status(text, error = false) {
  const box = $('status');
  box.textContent = text;
  box.className = 'shown' + (error ? ' error' : '');
  clearTimeout(status.timer);
  status.timer = setTimeout(() => { box.className = ''; }, 3500);
}

class Unauthorized extends Error {}

async function api(path, { method = 'GET', body } = {}) {
  const key = sessionStorage.getItem(KEY);
  if (!key) throw new Unauthorized('not signed in');
  const headers = { authorization: `Bearer ${key}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  if (response.status === 401) throw new Unauthorized(json?.message ?? 'wrong API key');
  if (!response.ok) throw new Error(json ? `${json.error}: ${json.message}` : `${response.status} ${text}`);
  return json;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v !== undefined && v !== null) q.set(k, v);
  return q.toString();
}

const tenant = () => $('tenant').value.trim();
const ago = (ms) => {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return `${s}s`;
  if (s < 5400) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
};
const clock = (ms) => new Date(ms).toLocaleString();
const fixed = (n, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : '–');

// ---- sign in ----

function showLogin(message = '') {
  clearInterval(timer);
  timer = null;
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('key').focus();
}

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    await api('/v1/api/admin/nodes');
  } catch (err) {
    sessionStorage.removeItem(KEY);
    showLogin(err instanceof Unauthorized ? 'That key was refused.' : String(err.message ?? err));
    return;
  }
  $('login').hidden = true;
  $('app').hidden = false;
  await refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  signIn($('key').value.trim());
});
$('logout').addEventListener('click', () => {
  sessionStorage.removeItem(KEY);
  $('key').value = '';
  showLogin('Signed out.');
});

// ---- refresh ----

async function refresh() {
  try {
    await Promise.all([loadNodes(), loadMetrics(), loadRooms(), loadConnections()]);
    $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (err instanceof Unauthorized) showLogin('The key was refused: sign in again.');
    else status(String(err.message ?? err), true);
  }
}

async function loadNodes() {
  const answer = await api('/v1/api/admin/nodes');
  const self = answer.nodes[0];
  $('node').textContent = `node ${answer.node} · v${self.version}`;
  $('nodes-count').textContent = answer.nodes.length;
  $('nodes').replaceChildren(...answer.nodes.map((n) => {
    const total = Object.values(n.connections).reduce((a, b) => a + b, 0);
    const by = Object.entries(n.connections).filter(([, c]) => c > 0).map(([t, c]) => `${t} ${c}`).join(' · ') || '–';
    return el('tr', { 'data-node': n.node },
      el('td', { class: 'mono' }, n.node, ' ', n.node === answer.node ? el('span', { class: 'badge self' }, 'this node') : ''),
      el('td', {}, n.version), el('td', {}, ago(n.started_at)), el('td', { class: 'num' }, total),
      el('td', { class: 'muted' }, by), el('td', { class: 'num' }, n.rooms), el('td', { class: 'num' }, n.users),
      el('td', { class: 'num muted' }, `${ago(n.seen_at)} ago`));
  }));
}

// Tiles: a gauge's value, a counter's rate, or a histogram's mean over the last interval.
const TILES = [
  { label: 'Connections', gauge: 'edgerelay_connections' },
  { label: 'Rooms', gauge: 'edgerelay_rooms' },
  { label: 'Users online', gauge: 'edgerelay_presence_users' },
  { label: 'Publishes', rate: 'edgerelay_publishes_total', unit: '/s' },
  { label: 'Deliveries', rate: 'edgerelay_deliveries_total', unit: '/s' },
  { label: 'Ack latency (mean)', mean: 'edgerelay_publish_ack_seconds', unit: 'ms' },
  { label: 'Delivery latency (mean)', mean: 'edgerelay_delivery_seconds', unit: 'ms' },
  { label: 'Store commit (mean)', mean: 'edgerelay_store_commit_seconds', unit: 'ms' },
  { label: 'Slow consumers', rate: 'edgerelay_catch_ups_total', unit: '/s', alert: true },
  { label: 'Errors sent', rate: 'edgerelay_errors_total', unit: '/s', alert: true },
  { label: 'Store failures', rate: 'edgerelay_store_failures_total', unit: '/s', alert: true },
  { label: 'CPU', rate: 'process_cpu_seconds_total', unit: '%', scale: 100 },
  { label: 'Memory (RSS)', gauge: 'process_resident_memory_bytes', unit: 'MiB', scale: 1 / 1048576 },
];

function tileValue(tile, now, before) {
  if (tile.gauge) return now.values[tile.gauge] * (tile.scale ?? 1);
  if (!before) return NaN;
  const seconds = (now.time - before.time) / 1000;
  if (tile.rate) return ((now.values[tile.rate] - before.values[tile.rate]) / seconds) * (tile.scale ?? 1);
  const count = now.values[`${tile.mean}_count`] - before.values[`${tile.mean}_count`];
  const sum = now.values[`${tile.mean}_sum`] - before.values[`${tile.mean}_sum`];
  return count > 0 ? (sum / count) * 1000 : NaN;
}

// The last samples, right-aligned (the newest at the right edge), scaled to the largest.
function sparkline(points) {
  const max = Math.max(1e-9, ...points.filter(Number.isFinite));
  const start = SPARK - points.length;
  const coords = points
    .map((v, i) => [start + i, v])
    .filter(([, v]) => Number.isFinite(v))
    .map(([x, v]) => `${(x / (SPARK - 1)) * 100},${24 - (v / max) * 22}`);
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 100 26');
  svg.setAttribute('preserveAspectRatio', 'none');
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', coords.join(' '));
  svg.append(line);
  return svg;
}

async function loadMetrics() {
  const now = await api('/v1/api/admin/metrics');
  samples.push(now);
  if (samples.length > SPARK + 1) samples.shift();
  $('tiles').replaceChildren(...TILES.map((tile) => {
    const series = samples.map((s, i) => tileValue(tile, s, samples[i - 1]));
    const value = series[series.length - 1];
    const digits = tile.unit === 'ms' ? 2 : tile.gauge && !tile.scale ? 0 : 1;
    const shown = tile.gauge && !tile.scale ? String(value) : fixed(value, digits);
    return el('div', { class: 'tile' + (tile.alert && value > 0 ? ' alert' : ''), 'data-metric': tile.label },
      el('div', { class: 'label' }, tile.label),
      el('div', {}, el('span', { class: 'value' }, shown), el('span', { class: 'unit' }, tile.unit ?? '')),
      sparkline(series.slice(-SPARK)));
  }));
}

async function loadRooms() {
  const answer = await api(`/v1/api/admin/rooms?${query({ tenant: tenant(), q: $('room-search').value.trim(), offset: view.roomsOffset, limit: PAGE })}`);
  $('rooms-count').textContent = answer.total;
  $('rooms').replaceChildren(...(answer.rooms.length ? answer.rooms.map((r) =>
    el('tr', { class: 'clickable', 'data-room': r.room, 'data-tenant': r.tenant, title: 'Browse history', onclick: () => openHistory(r.tenant, r.room) },
      el('td', {}, r.tenant), el('td', { class: 'mono' }, r.room),
      el('td', { class: 'num members' }, r.members), el('td', { class: 'num' }, r.connections_here)))
    : [el('tr', {}, el('td', { colspan: 4, class: 'empty' }, 'No rooms.'))]));
  pager('rooms', answer, view.roomsOffset);
}

async function loadConnections() {
  const user = $('user').value.trim();
  const answer = await api(`/v1/api/admin/connections?${query({ tenant: tenant(), user, transport: $('transport').value, offset: view.connectionsOffset, limit: PAGE })}`);
  $('connections-count').textContent = answer.total;
  $('transports').replaceChildren(...Object.entries(answer.by_transport).map(([t, n]) =>
    el('span', { class: 'chip', 'data-transport': t }, t, el('b', {}, n))));
  $('connections').replaceChildren(...(answer.connections.length ? answer.connections.map((c) => {
    const revoke = c.token_id
      ? armed('Revoke token', () => act('/v1/api/revoke', { tenant: c.tenant, jti: c.token_id }, `token ${c.token_id} revoked`))
      : el('span', { class: 'muted', title: 'the token has no jti' }, '–');
    return el('tr', { 'data-user': c.user, 'data-id': c.id },
      el('td', { class: 'mono' }, c.id), el('td', {}, c.tenant),
      el('td', { class: 'mono clickable', title: 'Show this user', onclick: () => { $('user').value = c.user; if (!tenant()) $('tenant').value = c.tenant; userChanged(); } }, c.user),
      el('td', {}, el('span', { class: `badge ${c.transport}` }, c.transport)),
      el('td', { title: clock(c.connected_at) }, `${ago(c.connected_at)} ago`),
      el('td', { class: 'mono', title: c.rooms.join(', ') }, c.rooms.join(', ') || '–'),
      el('td', { class: 'mono', title: `expires ${clock(c.expires_at * 1000)}` }, c.token_id ?? '–'),
      el('td', {}, revoke));
  }) : [el('tr', {}, el('td', { colspan: 8, class: 'empty' }, user ? `No connection of ${user} on this node.` : 'No connections.'))]));
  pager('connections', answer, view.connectionsOffset);
  $('user-actions').hidden = !(user && tenant());
}

function pager(name, answer, offset) {
  const shown = answer[name].length;
  $(`${name}-range`).textContent = answer.total ? `${offset + 1}-${offset + shown} of ${answer.total}` : '';
  $(`${name}-prev`).disabled = offset === 0;
  $(`${name}-next`).disabled = answer.next === null;
  $(`${name}-next`).dataset.next = answer.next ?? '';
}

// A destructive button asks for a second click within 3 s instead of a dialog.
function armed(label, action, button = el('button', { class: 'danger', type: 'button' }, label)) {
  button.addEventListener('click', async () => {
    if (!button.classList.contains('armed')) {
      button.classList.add('armed');
      button.textContent = 'Click again to confirm';
      setTimeout(() => { button.classList.remove('armed'); button.textContent = label; }, 3000);
      return;
    }
    button.classList.remove('armed');
    button.textContent = label;
    button.disabled = true;
    try { await action(); } finally { button.disabled = false; }
  });
  return button;
}

async function act(path, body, done) {
  try {
    const answer = await api(path, { method: 'POST', body });
    status(`${done}: ${answer.closed_here} connection(s) closed on this node`);
    await loadConnections();
  } catch (err) {
    if (err instanceof Unauthorized) showLogin('The key was refused: sign in again.');
    else status(String(err.message ?? err), true);
  }
}

armed('Disconnect user', () => act('/v1/api/disconnect', { tenant: tenant(), user: $('user').value.trim(), reason: 'disconnected by an operator' }, `${$('user').value.trim()} disconnected`), $('disconnect'));
armed("Revoke user's tokens", () => act('/v1/api/revoke', { tenant: tenant(), user: $('user').value.trim() }, `tokens of ${$('user').value.trim()} revoked`), $('revoke-user'));

function userChanged() {
  view.connectionsOffset = 0;
  loadConnections().catch((err) => status(String(err.message ?? err), true));
}

let typing = null;
const debounced = (f) => () => { clearTimeout(typing); typing = setTimeout(f, 250); };
$('user').addEventListener('input', debounced(userChanged));
$('transport').addEventListener('change', userChanged);
$('room-search').addEventListener('input', debounced(() => { view.roomsOffset = 0; loadRooms().catch((err) => status(String(err.message ?? err), true)); }));
$('tenant').addEventListener('input', debounced(() => { view.roomsOffset = 0; view.connectionsOffset = 0; refresh(); }));
for (const name of ['rooms', 'connections']) {
  $(`${name}-prev`).addEventListener('click', () => { view[`${name}Offset`] = Math.max(0, view[`${name}Offset`] - PAGE); refresh(); });
  $(`${name}-next`).addEventListener('click', () => { view[`${name}Offset`] = Number($(`${name}-next`).dataset.next); refresh(); });
}

// ---- history: newest first, a page at a time going back ----

function openHistory(t, room) {
  $('history-tenant').value = t;
  $('history-room').value = room;
  loadHistory(false);
}

async function loadHistory(older) {
  const t = $('history-tenant').value.trim() || tenant();
  const room = $('history-room').value.trim();
  if (!t || !room) return status('Give a tenant and a room', true);
  const before = older && view.history ? view.history.lowest : undefined;
  try {
    const answer = await api(`/v1/api/history?${query({ tenant: t, room, before, limit: PAGE })}`);
    const messages = answer.messages.slice().reverse();
    const rows = messages.map((m) => el('tr', { 'data-offset': m.offset },
      el('td', { class: 'num mono' }, m.offset), el('td', {}, clock(m.time)), el('td', { class: 'mono' }, m.from),
      el('td', { class: 'mono' }, m.id), el('td', { class: 'mono data', title: JSON.stringify(m.data) }, JSON.stringify(m.data))));
    if (older) $('history').append(...rows);
    else $('history').replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: 5, class: 'empty' }, 'No messages.'))]));
    const lowest = answer.messages.length ? answer.messages[0].offset : view.history?.lowest ?? 0;
    view.history = { lowest };
    $('history-title').textContent = `${t} / ${room}`;
    $('history-bounds').textContent = `epoch ${answer.position.epoch} · top ${answer.position.offset} · first retained ${answer.first}`;
    $('history-older').disabled = lowest <= answer.first || answer.messages.length === 0;
  } catch (err) {
    if (err instanceof Unauthorized) showLogin('The key was refused: sign in again.');
    else status(String(err.message ?? err), true);
  }
}

$('history-load').addEventListener('click', () => loadHistory(false));
$('history-older').addEventListener('click', () => loadHistory(true));

// ---- start ----

const saved = sessionStorage.getItem(KEY);
if (saved) signIn(saved);
else showLogin();
