// The analyst console: threats table (grouped by the server), time range, heatmap and
// timeline, search, detail drawer with triage, live updates, sensors. Network data goes
// into the page through dom.js as text only.

import { el, clear, fill, $, $$, fmtTime, fmtShort, fmtAge, fmtCount, cut } from './dom.js';
import { get, post, session, qs, ApiError } from './api.js';
import { sparkline, heatmap, timeline } from './charts.js';

const SEVERITIES = new Set(['high', 'medium', 'low']);
const STATUSES = ['new', 'investigating', 'resolved', 'false_positive'];
const RANGES = { '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3 };
const HEATMAP_DAYS = 119; // 17 weeks

const state = {
  view: 'threats',
  q: '',
  range: '24h',
  from: '', // custom range, datetime-local values
  to: '',
  sort: 'last_seen',
  order: 'desc',
  offset: 0,
  limit: 50,
  total: 0,
  selected: new Set(),
  rows: new Map(), // id -> threat summary shown in the table
  liveNew: new Set(),
  notify: false,
  openId: null,
  session: null,
  loadSeq: 0,
  timeline: null, // the last /api/stats/timeline answer, redrawn on resize
  sensorsTimer: 0,
};

const canTriage = () => {
  const r = state.session && state.session.role;
  return r === 'admin' || r === 'analyst';
};

const sevClass = (s) => (SEVERITIES.has(s) ? s : 'unknown');
const statusClass = (s) => (STATUSES.includes(s) ? s : 'unknown');
const statusLabel = (s) => (s === 'false_positive' ? 'false positive' : (s || 'new'));

// ---- URL hash state -------------------------------------------------------------------

function readHash() {
  const p = new URLSearchParams(window.location.hash.slice(1));
  if (p.has('q')) state.q = p.get('q');
  if (p.has('range') && (RANGES[p.get('range')] || p.get('range') === 'custom')) state.range = p.get('range');
  if (p.has('from')) state.from = p.get('from');
  if (p.has('to')) state.to = p.get('to');
  if (['last_seen', 'first_seen', 'count', 'severity'].includes(p.get('sort'))) state.sort = p.get('sort');
  if (['asc', 'desc'].includes(p.get('order'))) state.order = p.get('order');
  const off = Number(p.get('offset'));
  if (Number.isInteger(off) && off >= 0) state.offset = off;
  const lim = Number(p.get('limit'));
  if ([25, 50, 100, 200].includes(lim)) state.limit = lim;
  if (['sensors', 'audit'].includes(p.get('view'))) state.view = p.get('view');
}

function writeHash() {
  const p = new URLSearchParams();
  if (state.view !== 'threats') p.set('view', state.view);
  if (state.q) p.set('q', state.q);
  if (state.range !== '24h') p.set('range', state.range);
  if (state.range === 'custom') {
    p.set('from', state.from);
    p.set('to', state.to);
  }
  if (state.sort !== 'last_seen') p.set('sort', state.sort);
  if (state.order !== 'desc') p.set('order', state.order);
  if (state.offset) p.set('offset', String(state.offset));
  if (state.limit !== 50) p.set('limit', String(state.limit));
  const h = p.toString();
  window.history.replaceState(null, '', h ? `#${h}` : window.location.pathname);
}

/** The time window as API parameters (RFC 3339). */
function timeParams() {
  if (state.range === 'custom') {
    const f = state.from ? new Date(state.from) : null;
    const t = state.to ? new Date(state.to) : null;
    return {
      from: f && !Number.isNaN(f.getTime()) ? f.toISOString() : '',
      to: t && !Number.isNaN(t.getTime()) ? t.toISOString() : '',
    };
  }
  const now = Date.now();
  return { from: new Date(now - RANGES[state.range]).toISOString(), to: new Date(now + 60e3).toISOString() };
}

function viewParams() {
  return { q: state.q, ...timeParams(), sort: state.sort, order: state.order };
}

// ---- errors ---------------------------------------------------------------------------

function showError(msg, box = $('#error')) {
  if (!msg) {
    box.hidden = true;
    clear(box);
    return;
  }
  fill(box, msg);
  box.hidden = false;
}

// ---- threats table --------------------------------------------------------------------

function listCell(values, max = 2) {
  const list = Array.isArray(values) ? values.map(String) : [];
  const shown = list.slice(0, max).join(', ');
  const more = list.length > max ? ` +${list.length - max}` : '';
  return el('td', { title: list.join('\n') || null }, shown, more ? el('span', { class: 'more' }, more) : null);
}

function threatRow(t) {
  const id = String(t.id);
  const tr = el('tr', { dataset: { id }, class: `row sev-row-${sevClass(t.severity)}` });
  if (canTriage()) {
    const box = el('input', { type: 'checkbox', class: 'row-select', 'aria-label': 'Select' });
    box.checked = state.selected.has(id);
    box.addEventListener('click', (ev) => ev.stopPropagation());
    box.addEventListener('change', () => {
      if (box.checked) state.selected.add(id); else state.selected.delete(id);
      updateBulkBar();
    });
    tr.append(el('td', { class: 'sel' }, box));
  }
  tr.append(
    el('td', null, el('span', { class: `sev sev-${sevClass(t.severity)}` }, t.severity || '?')),
    el('td', { class: 'time', title: fmtTime(t.first_seen) || null }, fmtShort(t.first_seen)),
    el('td', { class: 'time', title: `${fmtTime(t.last_seen)} (${fmtAge(t.last_seen)})` }, fmtShort(t.last_seen)),
    el('td', { class: 'num' }, fmtCount(t.count)),
    el('td', { class: 'sparkcell' }, sparkline(t.sparkline)),
    listCell(t.sources),
    el('td', { class: 'trail', title: t.trail || null }, cut(t.trail, 42)),
    el('td', { class: 'info', title: t.info || null }, cut(t.info, 28)),
    el('td', null, t.type || '', t.kind && t.kind !== 'trail' ? el('span', { class: 'kind' }, t.kind) : null),
    listCell(t.sensors, 2),
    el('td', null, el('span', { class: `status status-${statusClass(t.status)}` }, statusLabel(t.status)),
      Number(t.notes) > 0 ? el('span', { class: 'note-count', title: `${t.notes} notes` }, ` ✎${t.notes}`) : null),
    el('td', null, t.assignee || ''),
    el('td', null, (Array.isArray(t.tags) ? t.tags : []).map((g) => el('span', { class: 'tag' }, g))),
  );
  tr.tabIndex = 0;
  tr.addEventListener('click', () => openDetail(id));
  tr.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && ev.target === tr) openDetail(id);
  });
  return tr;
}

function renderThreats(data) {
  const body = $('#threat-rows');
  const list = Array.isArray(data.threats) ? data.threats : [];
  state.rows = new Map(list.map((t) => [String(t.id), t]));
  state.total = Number(data.total) || list.length;
  clear(body);
  if (list.length === 0) {
    body.append(el('tr', { class: 'empty' }, el('td', { colspan: 14 }, 'No threats in this range.')));
  }
  for (const t of list) body.append(threatRow(t));
  const first = list.length ? state.offset + 1 : 0;
  fill($('#page-info'), `${fmtCount(first)}–${fmtCount(state.offset + list.length)} of ${fmtCount(state.total)}`);
  $('#prev-page').disabled = state.offset === 0;
  $('#next-page').disabled = state.offset + list.length >= state.total;
  for (const th of $$('#threats th[data-sort]')) {
    th.classList.toggle('sorted', th.dataset.sort === state.sort);
    th.classList.toggle('asc', th.dataset.sort === state.sort && state.order === 'asc');
  }
  $('#select-all').checked = false;
  updateBulkBar();
}

function updateExports() {
  const p = qs(viewParams());
  $('#export-csv').href = `/api/threats.csv${p}`;
  $('#export-json').href = `/api/threats.json${p}`;
  $('#export-iocs').href = `/api/iocs${p}`;
}

async function loadThreats() {
  const seq = ++state.loadSeq;
  writeHash();
  updateExports();
  document.body.classList.add('loading');
  try {
    const data = await get(`/api/threats${qs({ ...viewParams(), offset: state.offset, limit: state.limit })}`);
    if (seq !== state.loadSeq) return;
    showError('');
    renderThreats(data);
    // Time from navigation to the first table drawn (read by the browser test).
    if (!document.body.dataset.firstViewMs) document.body.dataset.firstViewMs = String(Math.round(performance.now()));
  } catch (e) {
    if (seq !== state.loadSeq) return;
    showError(e instanceof ApiError && e.status === 400 ? `Query: ${e.message}` : `Could not load threats: ${e.message}`);
    // Point at the position of a syntax error in the search box.
    const pos = e instanceof ApiError && e.data ? Number(e.data.position) : NaN;
    if (Number.isInteger(pos) && pos >= 0) {
      const q = $('#q');
      q.focus();
      q.setSelectionRange(Math.min(pos, q.value.length), Math.min(pos + 1, q.value.length));
    }
  } finally {
    if (seq === state.loadSeq) document.body.classList.remove('loading');
  }
}

async function loadCharts() {
  const now = new Date();
  const from = new Date(now.getTime() - HEATMAP_DAYS * 86400e3);
  try {
    const daily = await get(`/api/stats/daily${qs({ q: state.q, from: from.toISOString(), to: now.toISOString() })}`);
    fill($('#heatmap'), heatmap(daily.days, from, now, pickDay));
  } catch (e) {
    fill($('#heatmap'), el('p', { class: 'muted' }, `Heatmap unavailable: ${e.message}`));
  }
  try {
    const tl = await get(`/api/stats/timeline${qs({ q: state.q, ...timeParams() })}`);
    state.timeline = tl;
    fill($('#timeline'), timeline(tl, $('#timeline').clientWidth));
  } catch (e) {
    fill($('#timeline'), el('p', { class: 'muted' }, `Timeline unavailable: ${e.message}`));
  }
}

function refresh() {
  state.liveNew.clear();
  updateLiveBadge();
  loadThreats();
  loadCharts();
}

/** A Date as the value of a datetime-local input (local time, minutes). */
function localInput(d) {
  return new Date(d.getTime() - d.getTimezoneOffset() * 60e3).toISOString().slice(0, 16);
}

/** A heatmap day (a UTC day, as the server counts them) picked: that day as a custom range. */
function pickDay(day) {
  const start = new Date(`${day}T00:00:00Z`);
  state.range = 'custom';
  state.from = localInput(start);
  state.to = localInput(new Date(start.getTime() + 86400e3));
  state.offset = 0;
  syncRangeInputs();
  refresh();
}

function syncRangeInputs() {
  $('#range').value = state.range;
  $('#custom-range').hidden = state.range !== 'custom';
  $('#from').value = state.from;
  $('#to').value = state.to;
  $('#q').value = state.q;
  $('#page-size').value = String(state.limit);
}

// ---- bulk triage ----------------------------------------------------------------------

function updateBulkBar() {
  const n = state.selected.size;
  $('#bulk-bar').hidden = !canTriage() || n === 0;
  fill($('#bulk-count'), `${n} selected`);
}

async function applyBulk() {
  const body = { ids: Array.from(state.selected) };
  const status = $('#bulk-status').value;
  const assignee = $('#bulk-assignee').value.trim();
  const tag = $('#bulk-tag').value.trim();
  if (status) body.status = status;
  if (assignee) body.assignee = assignee;
  if (tag) body.add_tags = [tag];
  if (Object.keys(body).length === 1) return;
  try {
    await post('/api/threats/triage', body);
    state.selected.clear();
    $('#bulk-status').value = '';
    $('#bulk-assignee').value = '';
    $('#bulk-tag').value = '';
    showError('');
    loadThreats();
  } catch (e) {
    showError(`Bulk change refused: ${e.message}`);
  }
}

// ---- detail drawer --------------------------------------------------------------------

function kv(label, value) {
  if (value === undefined || value === null || value === '' || (Array.isArray(value) && value.length === 0)) return null;
  const v = Array.isArray(value) ? value.join(', ') : value;
  return [el('dt', null, label), el('dd', null, v instanceof Node ? v : String(v))];
}

function eventDetails(e) {
  const parts = [];
  if (e.dns_query) parts.push(el('div', null, el('b', null, 'DNS '), `${e.dns_query}${e.dns_qtype ? ` (${e.dns_qtype})` : ''}`));
  if (e.http_method || e.http_host || e.http_path) {
    parts.push(el('div', null, el('b', null, 'HTTP '), `${e.http_method || ''} ${e.http_host || ''}${e.http_path || ''}`));
  }
  if (e.http_user_agent) parts.push(el('div', null, el('b', null, 'UA '), e.http_user_agent));
  if (e.tls_sni) parts.push(el('div', null, el('b', null, 'SNI '), e.tls_sni));
  return parts;
}

function eventsTable(events) {
  if (!events.length) return el('p', { class: 'muted' }, 'No raw events in this range.');
  return el('div', { class: 'table-wrap' }, el('table', { class: 'grid events' },
    el('thead', null, el('tr', null, ['Time', 'Sensor', 'Source', 'Destination', 'Proto', 'Type', 'Details'].map((h) => el('th', null, h)))),
    el('tbody', null, events.map((e) => el('tr', null,
      el('td', { class: 'time', title: e.ts || null }, fmtShort(e.ts)),
      el('td', null, e.sensor || ''),
      el('td', null, `${e.src_ip || ''}:${e.src_port ?? ''}`),
      el('td', null, `${e.dst_ip || ''}:${e.dst_port ?? ''}`),
      el('td', null, e.proto || ''),
      el('td', null, e.type || ''),
      el('td', { class: 'details' }, eventDetails(e)),
    )))));
}

function relatedList(title, list) {
  const items = Array.isArray(list) ? list : [];
  return el('div', { class: 'related' }, el('h4', null, title),
    items.length === 0 ? el('p', { class: 'muted' }, 'None.') : el('ul', null, items.map((r) => el('li', null,
      el('a', { href: '#', class: 'related-link', dataset: { id: String(r.id) }, onclick: (ev) => { ev.preventDefault(); openDetail(String(r.id)); } },
        el('span', { class: `sev sev-${sevClass(r.severity)}` }, r.severity || '?'), ' ',
        `${(r.sources || []).slice(0, 1).join('')} → ${cut(r.trail, 50)}`),
      el('span', { class: 'muted' }, ` ${fmtCount(r.count)} ev, ${fmtAge(r.last_seen)}`)))));
}

function trailSource(ts, t) {
  if (!ts) return kv('Reference', t.reference);
  if (typeof ts === 'string') return kv('Trail source', ts);
  const out = [];
  for (const [k, v] of Object.entries(ts)) {
    if (v === null || v === undefined || v === '') continue;
    out.push(kv(`Trail ${k.replace(/_/g, ' ')}`, typeof v === 'object' ? JSON.stringify(v) : v));
  }
  return out;
}

function triageForm(t) {
  const status = el('select', { id: 'triage-status', 'aria-label': 'Status' },
    STATUSES.map((s) => el('option', { value: s }, statusLabel(s))));
  status.value = STATUSES.includes(t.status) ? t.status : 'new';
  const suppress = el('select', { id: 'triage-suppress', 'aria-label': 'Suppress' },
    el('option', { value: '' }, 'do not suppress'),
    el('option', { value: 'trail' }, 'suppress this trail'),
    el('option', { value: 'source' }, 'suppress this source'));
  const suppressWrap = el('label', { class: 'suppress' }, suppress);
  suppressWrap.hidden = status.value !== 'false_positive';
  status.addEventListener('change', () => { suppressWrap.hidden = status.value !== 'false_positive'; });
  const assignee = el('input', { id: 'triage-assignee', placeholder: 'assignee', value: t.assignee || '' });
  const tags = el('input', { id: 'triage-tags', placeholder: 'tags, comma separated', value: (t.tags || []).join(', ') });
  const note = el('textarea', { id: 'triage-note', rows: 2, placeholder: 'add a note' });
  const msg = el('span', { class: 'muted', id: 'triage-msg' });
  const save = el('button', { type: 'submit', id: 'triage-save' }, 'Save');
  const form = el('form', { class: 'triage', id: 'triage-form' },
    el('label', null, 'Status ', status), suppressWrap,
    el('label', null, 'Assignee ', assignee),
    el('label', null, 'Tags ', tags),
    note, el('div', null, save, ' ', msg));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = {
      status: status.value,
      assignee: assignee.value.trim(),
      tags: tags.value.split(',').map((s) => s.trim()).filter(Boolean),
    };
    if (note.value.trim()) body.note = note.value.trim();
    if (status.value === 'false_positive' && suppress.value) body.suppress = suppress.value;
    save.disabled = true;
    try {
      await post(`/api/threats/${encodeURIComponent(t.id)}/triage`, body);
      fill(msg, 'Saved.');
      await openDetail(String(t.id));
      loadThreats();
    } catch (e) {
      fill(msg, `Refused: ${e.message}`);
    } finally {
      save.disabled = false;
    }
  });
  return form;
}

function readOnlyTriage(t) {
  return el('dl', { class: 'kv' },
    kv('Status', el('span', { class: `status status-${statusClass(t.status)}` }, statusLabel(t.status))),
    kv('Assignee', t.assignee), kv('Tags', t.tags),
    el('dt', null, 'Access'), el('dd', { class: 'muted', id: 'read-only-note' }, 'Read only (viewer role)'));
}

function iocBox(iocs) {
  const list = Array.isArray(iocs) ? iocs.map(String) : [];
  if (!list.length) return el('p', { class: 'muted' }, 'None.');
  const area = el('textarea', { id: 'ioc-list', readonly: true, rows: Math.min(6, list.length), spellcheck: 'false' });
  area.value = list.join('\n');
  const btn = el('button', { type: 'button', id: 'ioc-copy' }, 'Copy');
  btn.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(area.value);
      fill(btn, 'Copied');
    } catch {
      area.select();
      document.execCommand('copy');
      fill(btn, 'Copied');
    }
  });
  return el('div', { class: 'iocs' }, area, btn);
}

function notesList(d) {
  const notes = Array.isArray(d.notes) ? d.notes : [];
  const hist = Array.isArray(d.history) ? d.history : [];
  return [
    el('h3', null, 'Notes'),
    notes.length ? el('ul', { class: 'notes' }, notes.map((n) => el('li', null,
      el('span', { class: 'muted' }, `${fmtTime(n.time)} ${n.user || ''}: `), n.text || ''))) : el('p', { class: 'muted' }, 'No notes.'),
    el('h3', null, 'History'),
    hist.length ? el('ul', { class: 'notes' }, hist.map((h) => el('li', null,
      el('span', { class: 'muted' }, `${fmtTime(h.time)} ${h.user || ''}: `),
      h.text || h.detail || h.change || (h.action ? `${h.action}` : JSON.stringify(h))))) : el('p', { class: 'muted' }, 'No changes yet.'),
  ];
}

async function openDetail(id) {
  state.openId = id;
  const drawer = $('#drawer');
  const body = $('#drawer-body');
  drawer.hidden = false;
  delete drawer.dataset.loaded;
  document.body.classList.add('drawer-open');
  fill($('#drawer-title'), 'Loading…');
  fill(body, el('p', { class: 'muted' }, 'Loading…'));
  for (const tr of $$('#threat-rows tr')) tr.classList.toggle('open', tr.dataset.id === id);
  let d;
  try {
    d = await get(`/api/threats/${encodeURIComponent(id)}${qs(timeParams())}`);
  } catch (e) {
    if (state.openId !== id) return;
    fill($('#drawer-title'), 'Threat');
    fill(body, el('p', { class: 'error' }, `Could not load the threat: ${e.message}`));
    drawer.dataset.loaded = id;
    return;
  }
  if (state.openId !== id) return;
  const t = d.threat && typeof d.threat === 'object' ? { ...d.threat, ...d } : d;
  fill($('#drawer-title'), el('span', { class: `sev sev-${sevClass(t.severity)}` }, t.severity || '?'), ' ', cut(t.trail, 70));
  const events = Array.isArray(d.events) ? d.events : [];
  const related = d.related || {};
  fill(body,
    el('dl', { class: 'kv' },
      kv('Trail', t.trail), kv('Type', [t.type, t.kind].filter(Boolean).join(' / ')), kv('Info', t.info),
      trailSource(d.trail_source, t),
      kv('First seen', fmtTime(t.first_seen)), kv('Last seen', `${fmtTime(t.last_seen)} (${fmtAge(t.last_seen)})`),
      kv('Events', fmtCount(t.count)), kv('Sensors', t.sensors), kv('Sources', t.sources),
      kv('Destinations', t.destinations), kv('Ports', t.ports), kv('Protocols', t.protocols)),
    el('div', { class: 'sparkbig' }, sparkline(t.sparkline)),
    el('h3', null, 'Triage'),
    canTriage() ? triageForm(t) : readOnlyTriage(t),
    el('h3', null, 'Indicators (defanged)'), iocBox(d.iocs),
    el('h3', null, `Raw events (${fmtCount(events.length)}${events.length < (t.count || 0) ? ` of ${fmtCount(t.count)}` : ''})`),
    eventsTable(events),
    el('h3', null, 'Related threats'),
    el('div', { class: 'related-wrap' }, relatedList('Same source', related.same_source), relatedList('Same trail', related.same_trail)),
    notesList(d));
  body.scrollTop = 0;
  drawer.dataset.loaded = id;
}

function closeDetail() {
  state.openId = null;
  $('#drawer').hidden = true;
  document.body.classList.remove('drawer-open');
  for (const tr of $$('#threat-rows tr.open')) tr.classList.remove('open');
}

// ---- search help ----------------------------------------------------------------------

async function toggleHelp() {
  const pop = $('#help-popover');
  if (!pop.hidden) {
    pop.hidden = true;
    $('#help-btn').setAttribute('aria-expanded', 'false');
    return;
  }
  pop.hidden = false;
  $('#help-btn').setAttribute('aria-expanded', 'true');
  fill(pop, el('p', { class: 'muted' }, 'Loading…'));
  try {
    const h = await get('/api/search-help');
    fill(pop, el('h3', null, 'Query syntax'), helpContent(h));
  } catch (e) {
    fill(pop, el('p', { class: 'error' }, `Help unavailable: ${e.message}`));
  }
}

function helpContent(h) {
  if (typeof h === 'string') return el('pre', null, h);
  if (h && typeof h === 'object') {
    const out = [];
    for (const [k, v] of Object.entries(h)) {
      if (typeof v === 'string') {
        out.push(el('p', null, k === 'text' || k === 'help' || k === 'syntax' ? '' : el('b', null, `${k.replace(/_/g, ' ')}: `), v));
      } else if (Array.isArray(v)) {
        out.push(el('h4', null, k), el('ul', null, v.map((item) => el('li', null, helpItem(item)))));
      } else if (v && typeof v === 'object') {
        out.push(el('h4', null, k), el('dl', { class: 'kv help-fields' }, Object.entries(v).map(([f, d]) => [
          el('dt', null, el('code', null, f)), el('dd', null, typeof d === 'string' ? d : JSON.stringify(d))])));
      } else {
        out.push(el('pre', null, JSON.stringify(v, null, 2)));
      }
    }
    return out;
  }
  return el('pre', null, String(h));
}

function helpItem(item) {
  if (typeof item === 'string') return exampleLink(item);
  if (item && typeof item === 'object') {
    const name = item.field || item.name || item.syntax || item.example || '';
    const desc = item.description || item.help || item.text || '';
    const ex = item.example && item.example !== name ? item.example : '';
    return [el('code', null, name), desc ? ` ${desc}` : '', ex ? [' e.g. ', exampleLink(ex)] : ''];
  }
  return String(item);
}

function exampleLink(text) {
  return el('a', { href: '#', class: 'example', onclick: (ev) => {
    ev.preventDefault();
    $('#q').value = text;
    $('#q').focus();
  } }, el('code', null, text));
}

// ---- live -----------------------------------------------------------------------------

function updateLiveBadge() {
  fill($('#live-count'), String(state.liveNew.size));
  $('#live-badge').classList.toggle('has-new', state.liveNew.size > 0);
}

function onLiveThreat(t) {
  if (!t || t.id === undefined) return;
  const id = String(t.id);
  const row = $(`#threat-rows tr[data-id="${CSS.escape(id)}"]`);
  if (row) {
    const merged = { ...state.rows.get(id), ...t };
    state.rows.set(id, merged);
    const fresh = threatRow(merged);
    fresh.classList.add('flash');
    if (row.classList.contains('open')) fresh.classList.add('open');
    row.replaceWith(fresh);
  } else {
    state.liveNew.add(id);
    updateLiveBadge();
  }
  if (state.notify && t.severity === 'high' && 'Notification' in window && Notification.permission === 'granted') {
    const n = new Notification(`xtrail: high severity ${t.kind || 'threat'}`, {
      body: `${(t.sources || []).slice(0, 1).join('')} → ${t.trail || ''}\n${t.info || ''}`,
      tag: id,
    });
    n.onclick = () => { window.focus(); openDetail(id); };
  }
}

function startLive() {
  if (!('EventSource' in window)) return;
  const es = new EventSource('/api/live');
  const badge = $('#live-badge');
  es.addEventListener('open', () => badge.classList.remove('offline'));
  es.addEventListener('error', () => badge.classList.add('offline'));
  es.addEventListener('threat', (ev) => {
    let t;
    try { t = JSON.parse(ev.data); } catch { return; }
    onLiveThreat(t);
  });
}

async function toggleNotify() {
  const btn = $('#notify-btn');
  if (!('Notification' in window)) {
    fill(btn, 'No notifications');
    btn.disabled = true;
    return;
  }
  if (state.notify) {
    state.notify = false;
  } else {
    const p = Notification.permission === 'granted' ? 'granted' : await Notification.requestPermission();
    state.notify = p === 'granted';
  }
  window.localStorage.setItem('xtrail-notify', state.notify ? '1' : '');
  btn.classList.toggle('on', state.notify);
  fill(btn, state.notify ? 'Notify high: on' : 'Notify high');
}

// ---- sensors --------------------------------------------------------------------------

async function loadSensors() {
  const body = $('#sensor-rows');
  try {
    const data = await get('/api/sensors');
    const list = Array.isArray(data.sensors) ? data.sensors : [];
    // Silent sensors first: they are what this page is for.
    list.sort((a, b) => Number(!!b.silent) - Number(!!a.silent));
    showError('', $('#sensors-error'));
    clear(body);
    const silent = list.filter((s) => s.silent).length;
    fill($('#sensors-summary'), `${list.length} sensor${list.length === 1 ? '' : 's'}`,
      silent ? el('span', { class: 'badge silent' }, `${silent} silent`) : null);
    if (!list.length) body.append(el('tr', { class: 'empty' }, el('td', { colspan: 12 }, 'No sensor has connected yet.')));
    for (const s of list) {
      const num = (v) => el('td', { class: 'num' }, v === undefined || v === null ? '' : fmtCount(v));
      const st = s.silent ? 'silent' : (s.last_heartbeat ? 'ok' : 'unknown');
      const label = { silent: 'SILENT', ok: 'ok', unknown: 'no heartbeat' }[st];
      body.append(el('tr', { class: st, dataset: { name: String(s.name ?? '') } },
        el('td', { title: s.silent ? `No heartbeat for more than 3 intervals of ${s.heartbeat_interval_s} s` : null },
          el('span', { class: `badge ${st}` }, label)),
        el('td', null, s.name || ''),
        el('td', { class: 'mono' }, s.identity || ''),
        el('td', null, s.version || ''),
        el('td', null, s.trail_set_version || ''),
        el('td', { title: s.last_event || null }, s.last_event ? fmtAge(s.last_event) : 'never'),
        el('td', { title: s.last_heartbeat || null }, s.last_heartbeat ? fmtAge(s.last_heartbeat) : 'never'),
        el('td', { class: 'num' }, typeof s.events_per_sec === 'number' ? s.events_per_sec.toFixed(1) : ''),
        num(s.drops), num(s.ringbuf_full), num(s.handoff_failed),
        el('td', { class: 'num' }, s.heartbeat_interval_s ? `${s.heartbeat_interval_s} s` : '')));
    }
  } catch (e) {
    showError(`Could not load sensors: ${e.message}`, $('#sensors-error'));
  }
}

// ---- audit log (admins) -----------------------------------------------------------------

async function loadAudit() {
  const body = $('#audit-rows');
  try {
    const data = await get('/api/audit?limit=500');
    const list = Array.isArray(data.entries) ? data.entries : [];
    showError('', $('#audit-error'));
    clear(body);
    fill($('#audit-summary'), `${list.length} newest entr${list.length === 1 ? 'y' : 'ies'}`);
    if (!list.length) body.append(el('tr', { class: 'empty' }, el('td', { colspan: 5 }, 'Nothing logged yet.')));
    for (const a of list) {
      body.append(el('tr', { dataset: { action: String(a.action ?? '') } },
        el('td', { class: 'time', title: a.time || null }, a.time ? fmtTime(a.time) : ''),
        el('td', null, a.user || ''),
        el('td', { class: 'mono' }, a.source || ''),
        el('td', null, a.action || ''),
        el('td', { class: 'detail' }, a.detail || '')));
    }
  } catch (e) {
    showError(`Could not load the audit log: ${e.message}`, $('#audit-error'));
  }
}

// ---- views and wiring -----------------------------------------------------------------

function showView(view) {
  state.view = view;
  $('#view-threats').hidden = view !== 'threats';
  $('#view-sensors').hidden = view !== 'sensors';
  $('#nav-threats').classList.toggle('active', view === 'threats');
  $('#nav-sensors').classList.toggle('active', view === 'sensors');
  $('#view-audit').hidden = view !== 'audit';
  $('#nav-audit').classList.toggle('active', view === 'audit');
  clearInterval(state.sensorsTimer);
  if (view === 'sensors') {
    closeDetail();
    loadSensors();
    // Keep ages and the silent flags current while the page is open.
    state.sensorsTimer = setInterval(loadSensors, 15000);
  }
  if (view === 'audit') {
    closeDetail();
    loadAudit();
  }
  writeHash();
}

function wire() {
  $('#search-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.q = $('#q').value.trim();
    state.offset = 0;
    refresh();
  });
  $('#help-btn').addEventListener('click', toggleHelp);
  $('#range').addEventListener('change', () => {
    state.range = $('#range').value;
    $('#custom-range').hidden = state.range !== 'custom';
    if (state.range === 'custom') {
      if (!state.from) state.from = localInput(new Date(Date.now() - 86400e3));
      if (!state.to) state.to = localInput(new Date(Date.now() + 60e3));
      syncRangeInputs();
      return;
    }
    state.offset = 0;
    refresh();
  });
  $('#apply-range').addEventListener('click', () => {
    state.from = $('#from').value;
    state.to = $('#to').value;
    state.offset = 0;
    refresh();
  });
  for (const th of $$('#threats th[data-sort]')) {
    th.addEventListener('click', () => {
      if (state.sort === th.dataset.sort) state.order = state.order === 'desc' ? 'asc' : 'desc';
      else { state.sort = th.dataset.sort; state.order = 'desc'; }
      state.offset = 0;
      loadThreats();
    });
  }
  $('#prev-page').addEventListener('click', () => { state.offset = Math.max(0, state.offset - state.limit); loadThreats(); });
  $('#next-page').addEventListener('click', () => { state.offset += state.limit; loadThreats(); });
  $('#page-size').addEventListener('change', () => { state.limit = Number($('#page-size').value) || 50; state.offset = 0; loadThreats(); });
  $('#select-all').addEventListener('change', () => {
    const on = $('#select-all').checked;
    for (const box of $$('#threat-rows .row-select')) {
      box.checked = on;
      const id = box.closest('tr').dataset.id;
      if (on) state.selected.add(id); else state.selected.delete(id);
    }
    updateBulkBar();
  });
  $('#bulk-apply').addEventListener('click', applyBulk);
  $('#bulk-clear').addEventListener('click', () => {
    state.selected.clear();
    for (const box of $$('#threat-rows .row-select')) box.checked = false;
    $('#select-all').checked = false;
    updateBulkBar();
  });
  $('#drawer-close').addEventListener('click', closeDetail);
  $('#live-badge').addEventListener('click', refresh);
  $('#notify-btn').addEventListener('click', toggleNotify);
  $('#nav-threats').addEventListener('click', () => showView('threats'));
  $('#nav-sensors').addEventListener('click', () => showView('sensors'));
  $('#sensors-refresh').addEventListener('click', loadSensors);
  $('#nav-audit').addEventListener('click', () => showView('audit'));
  $('#audit-refresh').addEventListener('click', loadAudit);
  let resizeTimer = 0;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (state.timeline) fill($('#timeline'), timeline(state.timeline, $('#timeline').clientWidth));
    }, 200);
  });
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') {
      if (!$('#help-popover').hidden) toggleHelp(); else closeDetail();
    } else if (ev.key === '/' && document.activeElement.tagName !== 'INPUT' && document.activeElement.tagName !== 'TEXTAREA') {
      ev.preventDefault();
      $('#q').focus();
    }
  });
}

async function main() {
  readHash();
  wire();
  try {
    state.session = await session();
  } catch (e) {
    showError(`Could not read the session: ${e.message}`);
    return;
  }
  const s = state.session;
  $('#logout-csrf').value = s.csrf || '';
  fill($('#whoami'), `${s.user} (${s.role}${s.scope && s.scope !== 'all' ? `, ${s.scope}` : ''})`);
  document.body.classList.toggle('read-only', !canTriage());
  document.body.dataset.role = String(s.role || '');
  // The audit log is for admins (the API answers 403 to anyone else).
  $('#nav-audit').hidden = s.role !== 'admin';
  if (state.view === 'audit' && s.role !== 'admin') state.view = 'threats';
  state.notify = window.localStorage.getItem('xtrail-notify') === '1' && 'Notification' in window && Notification.permission === 'granted';
  $('#notify-btn').classList.toggle('on', state.notify);
  if (state.notify) fill($('#notify-btn'), 'Notify high: on');
  syncRangeInputs();
  showView(state.view);
  loadThreats();
  loadCharts();
  startLive();
  document.body.classList.add('ready');
}

main();
