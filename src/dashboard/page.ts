/*
 * The dashboard's one page: inline CSS and JS, no framework, no CDN. It
 * opens /events (server-sent events) and redraws from each state it gets.
 * Every value from etcd goes into the DOM through textContent, never as
 * HTML: key names and values are untrusted.
 */

const css = `
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --mute:#6a7385; --line:#e3e6eb;
  --hold:#1f8a4c; --wait:#b26b00; --dead:#b42318; --accent:#2c5fd9; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  background:var(--bg); color:var(--ink); }
header { display:flex; align-items:baseline; gap:16px; padding:14px 24px; background:#1d2330; color:#fff; }
header h1 { margin:0; font-size:18px; font-weight:600; }
header .meta { color:#b8c0d0; font-size:13px; }
#status { margin-left:auto; font-size:13px; }
#status::before { content:""; display:inline-block; width:9px; height:9px; border-radius:50%; margin-right:6px;
  background:#999; }
#status.live::before { background:#3ccf7a; } #status.down::before { background:#e5534b; }
main { padding:6px 24px 40px; column-width:560px; column-gap:20px; }
section { break-inside:avoid; padding-top:16px; }
section h2 { font-size:13px; text-transform:uppercase; letter-spacing:.06em; color:var(--mute); margin:0 0 8px; }
.grid { display:grid; grid-template-columns:1fr; gap:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px;
  overflow-x:auto; }
.card h3 { margin:0 0 2px; font-size:15px; font-family:ui-monospace,SFMono-Regular,Menlo,monospace;
  word-break:break-all; }
.kind { display:inline-block; font:600 11px system-ui,sans-serif; text-transform:uppercase; color:var(--accent);
  background:#eaf0fd; border-radius:4px; padding:1px 6px; margin-right:6px; vertical-align:2px; }
.summary { color:var(--mute); font-size:13px; margin-bottom:8px; }
table { width:100%; border-collapse:collapse; font-size:12.5px; }
th { text-align:left; font-weight:600; color:var(--mute); border-bottom:1px solid var(--line); padding:4px 6px;
  white-space:nowrap; }
td { border-bottom:1px solid #f0f1f4; padding:4px 6px; font-family:ui-monospace,SFMono-Regular,Menlo,monospace;
  white-space:nowrap; }
td.k { white-space:normal; word-break:break-all; }
tr:last-child td { border-bottom:0; }
.role { font-family:system-ui,sans-serif; font-weight:600; white-space:nowrap; }
tr[data-role=holder] .role, tr[data-role=leader] .role, tr[data-role=claimed] .role { color:var(--hold); }
tr[data-role=waiter] .role, tr[data-role=candidate] .role, tr[data-role=pending] .role { color:var(--wait); }
tr[data-role=dead] .role, .expired { color:var(--dead); }
.empty { color:var(--mute); font-style:italic; padding:6px 0; }
#error { display:none; margin:12px 24px 0; padding:8px 12px; border-radius:6px; background:#fdecea;
  color:var(--dead); }
#none { color:var(--mute); margin-top:24px; }
`;

const js = `
const token = new URLSearchParams(location.search).get('token');
const q = token ? '?token=' + encodeURIComponent(token) : '';
const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c !== undefined && c !== null) e.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return e;
}
const ttl = (t) => t === undefined || t === null ? '-' : t < 0 ? 'expired' : t + 's';
const cut = (s, n = 48) => s === undefined || s === null ? '-' : s.length > n ? s.slice(0, n - 1) + '\\u2026' : s;
function table(head, rows) {
  if (!rows.length) return el('div', { class: 'empty' }, 'none');
  return el('table', {}, el('thead', {}, el('tr', {}, ...head.map((h) => el('th', {}, h)))),
    el('tbody', {}, ...rows.map((r) => el('tr', { 'data-role': r.role, 'data-key': r.key || '' },
      el('td', { class: 'role' }, r.label),
      ...r.cells.map((c, n) =>
        el('td', { class: (n === 0 ? 'k' : '') + (c === 'expired' ? ' expired' : '') }, String(c)))))));
}
const keyCells = (k, extra = []) => [k.key, k.leaseHex, ttl(k.leaseTtl), k.createRevision, ...extra];
const KEY_HEAD = ['', 'key', 'lease (hex)', 'TTL', 'create rev'];
function lockCard(kind, i) {
  const rw = kind === 'rwmutex';
  const mode = (k) => rw ? [k.mode] : [];
  const rows = [
    ...i.holders.map((k) => ({ role: 'holder', key: k.key, label: 'holder', cells: keyCells(k, mode(k)) })),
    ...i.waiters.map((k, n) =>
      ({ role: 'waiter', key: k.key, label: 'waiter ' + (n + 1), cells: keyCells(k, mode(k)) })),
  ];
  const permits = kind === 'semaphore' ? ' \\u00b7 ' + (i.permits ?? '?') + ' permits' : '';
  const held = i.holders.length ? i.holders.length + ' holding' : 'free';
  const summary = held + ' \\u00b7 ' + i.waiters.length + ' waiting' + permits;
  return [summary, table(rw ? [...KEY_HEAD, 'mode'] : KEY_HEAD, rows)];
}
function electionCard(i) {
  const all = [...(i.leader ? [i.leader] : []), ...i.candidates];
  const rows = all.map((c, n) => ({
    role: n ? 'candidate' : 'leader', key: c.key, label: n ? 'candidate ' + n : 'leader',
    cells: keyCells(c, [cut(c.value)]),
  }));
  const led = i.leader ? 'leader: ' + cut(i.leader.value, 40) : 'no leader';
  return [led + ' \\u00b7 ' + i.candidates.length + ' queued', table([...KEY_HEAD, 'value'], rows)];
}
function queueCard(i) {
  const h = i.head;
  const pq = i.kind === 'priority-queue';
  const cells = h ? [h.key, ...(pq ? [h.priority] : []), h.ageRevisions, cut(h.value)] : [];
  const rows = h ? [{ role: 'head', key: h.key, label: 'head', cells }] : [];
  return [i.depth + ' item' + (i.depth === 1 ? '' : 's') + ' \\u00b7 ' + i.waitingConsumers + ' consumer(s) waiting',
    table(['', 'key', ...(pq ? ['priority'] : []), 'age (revs)', 'value'], rows)];
}
function workQueueCard(i) {
  const c = i.counts;
  const row = (role, j, cells) => ({ role, key: j.key, label: role, cells });
  const claimedBy = (j) => j.claim.leaseHex + ' (' + ttl(j.claim.leaseTtl) + ')';
  const rows = [
    ...i.claimed.map((j) => row('claimed', j, [j.id, String(j.attempts), claimedBy(j), cut(j.value)])),
    ...i.pending.map((j) => row('pending', j, [j.id, String(j.attempts), '-', cut(j.value)])),
    ...i.dead.map((j) => row('dead', j, [j.id, '-', '-', cut(j.value)])),
  ];
  const dot = ' \\u00b7 ';
  const summary = c.pending + ' pending' + dot + c.claimed + ' claimed' + dot + c.dead + ' dead' + dot +
    c.waiting + ' worker(s) waiting';
  return [summary, table(['', 'job', 'attempts', 'claimed by (TTL)', 'value'], rows)];
}
function serviceCard(i) {
  const rows = i.instances.map((s) => ({
    role: 'instance', key: s.key, label: s.id,
    cells: [s.address ?? '(not an instance)', s.leaseHex, ttl(s.leaseTtl), cut(JSON.stringify(s.metadata))],
  }));
  const summary = i.total + ' instance' + (i.total === 1 ? '' : 's') + ' under ' + i.prefix;
  return [summary, table(['id', 'address', 'lease (hex)', 'TTL', 'metadata'], rows)];
}
const SECTIONS = [
  ['Locks', ['lock', 'rwmutex', 'semaphore']], ['Elections', ['election']], ['Queues', ['queue', 'priority-queue']],
  ['Work queues', ['work-queue']], ['Services', ['service']],
];
function card(r) {
  const i = r.inspection;
  const [summary, body] = r.kind === 'election' ? electionCard(i)
    : r.kind === 'queue' || r.kind === 'priority-queue' ? queueCard(i)
    : r.kind === 'work-queue' ? workQueueCard(i)
    : r.kind === 'service' ? serviceCard(i)
    : lockCard(r.kind, i);
  return el('div', { class: 'card', 'data-kind': r.kind, 'data-name': i.name },
    el('h3', {}, el('span', { class: 'kind' }, r.kind), i.name), el('div', { class: 'summary' }, summary), body);
}
function render(state) {
  $('prefix').textContent = state.prefix === '' ? '(whole keyspace)' : state.prefix;
  $('revision').textContent = state.revision;
  $('updated').textContent = new Date(state.updatedAt).toLocaleTimeString();
  $('error').style.display = state.error ? 'block' : 'none';
  $('error').textContent = state.error || '';
  const main = $('recipes');
  main.replaceChildren();
  for (const [title, kinds] of SECTIONS) {
    const items = state.recipes.filter((r) => kinds.includes(r.kind));
    if (!items.length) continue;
    main.append(el('section', { 'data-section': kinds[0] }, el('h2', {}, title + ' (' + items.length + ')'),
      el('div', { class: 'grid' }, ...items.map(card))));
  }
  if (!state.recipes.length) main.append(el('div', { id: 'none' }, 'No recipe keys under this prefix.'));
  document.body.dataset.revision = state.revision;
}
const es = new EventSource('events' + q);
es.addEventListener('state', (e) => {
  $('status').className = 'live';
  $('status').textContent = 'live';
  render(JSON.parse(e.data));
});
es.onerror = () => { $('status').className = 'down'; $('status').textContent = 'reconnecting'; };
`;

/** The page, with `nonce` allowing its inline script and style under the Content-Security-Policy. */
export function dashboardPage(nonce: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>etcd-recipes dashboard</title><style nonce="${nonce}">${css}</style></head>
<body>
<header><h1>etcd-recipes</h1><span class="meta">prefix <b id="prefix"></b>
&middot; revision <span id="revision">-</span> &middot; updated <span id="updated">-</span></span>
<span id="status">connecting</span></header>
<div id="error" role="alert"></div>
<main id="recipes"></main>
<script nonce="${nonce}">${js}</script>
</body></html>`;
}
