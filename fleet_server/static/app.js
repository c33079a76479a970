// The EdgeOps fleet dashboard: one snapshot from the API, then live changes from server-sent events.
//
// State lives in `state`; every change schedules one re-render of the current view (hash routes:
// #/ fleet, #/rollouts, #/alerts, #/devices/ID). The stream's `hello` event (sent on every
// connect, including reconnects after the server dropped a slow reader) reloads the snapshot, so
// whatever was missed while disconnected is caught up.
import { barChart, formatNumber, formatTime, heatmap, lineChart } from './charts.js';

const API = '/api/v1';
const LOGIN = '/dashboard/login';
const TELEMETRY_WINDOWS = 120;
const DRIFT_WINDOWS = 60;
const ALERTS = 50;
const UPDATE_KINDS = new Set(['update_started', 'update_state', 'update_committed', 'update_failed', 'rollback',
  'desired_rejected', 'chunk_rejected', 'model_loaded']);
const PERCENT_GATES = new Set(['committed', 'failed', 'error_rate']);
const SETTLED_PHASES = new Set(['idle', 'committed', null, undefined]);
// Device fields the server's sync state depends on, and how often it is refetched anyway (a stall
// or a new deployment changes it without any device message).
const SYNC_INPUTS = ['phase', 'active_digest', 'online'];
const SYNC_REFRESH_MS = 30000;
const ATTENTION = new Set(['stalled', 'fell_back', 'rejected']);

const state = {
  fleet: '',
  actor: '',
  devices: new Map(),
  rollouts: new Map(),
  alerts: [],
  detail: null, // {id, device, telemetry: [], drift: [], history: [], error}
  messages: 0,
};

// --- DOM helpers -------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function age(ms) {
  if (!ms) return '–';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function pct(value) {
  return value === null || value === undefined ? '–' : `${(value * 100).toFixed(1)} %`;
}

// --- data --------------------------------------------------------------------------------------

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
  if (response.status === 401) {
    window.location.assign(LOGIN);
    throw new Error('signed out');
  }
  if (!response.ok) {
    let message = `${response.status}`;
    try {
      message = (await response.json()).error.message;
    } catch (err) {
      message = `${response.status} ${response.statusText}`;
    }
    throw new Error(message);
  }
  return response.json();
}

async function loadOverview() {
  const data = await getJson(`${API}/dashboard/overview`);
  state.fleet = data.fleet;
  state.actor = data.actor;
  state.devices = new Map(data.devices.map((d) => [d.device_id, d]));
  state.rollouts = new Map(data.rollouts.map((r) => [r.id, r]));
  state.alerts = data.alerts;
  scheduleRender();
}

async function loadDevice(id) {
  try {
    const data = await getJson(`${API}/dashboard/devices/${encodeURIComponent(id)}`);
    if (state.detail && state.detail.id === id) {
      Object.assign(state.detail, data, { error: null });
    }
  } catch (err) {
    if (state.detail && state.detail.id === id) state.detail.error = err.message;
  }
  scheduleRender();
}

let overviewTimer = null;
function reloadOverviewSoon() {
  if (overviewTimer !== null) return;
  overviewTimer = window.setTimeout(() => {
    overviewTimer = null;
    loadOverview().catch((err) => console.warn('overview reload failed', err));
  }, 500);
}

// --- live stream -------------------------------------------------------------------------------

let source = null;
let sourceDevice = null;
let retryTimer = null;

function setLive(kind, label) {
  const node = document.getElementById('live-status');
  node.dataset.state = kind;
  node.dataset.messages = String(state.messages);
  node.textContent = label;
}

function connect(device) {
  if (source) source.close();
  window.clearTimeout(retryTimer);
  sourceDevice = device;
  const url = device ? `${API}/stream?device=${encodeURIComponent(device)}` : `${API}/stream`;
  source = new EventSource(url);
  setLive('connecting', 'connecting…');
  source.addEventListener('hello', () => {
    setLive('live', 'live');
    loadOverview().catch((err) => console.warn('overview load failed', err));
    if (state.detail) loadDevice(state.detail.id);
  });
  source.addEventListener('device', (e) => onMessage(e, patchDevice));
  source.addEventListener('telemetry', (e) => onMessage(e, addTelemetry));
  source.addEventListener('event', (e) => onMessage(e, addEvent));
  source.addEventListener('drift', (e) => onMessage(e, addDrift));
  source.addEventListener('rollout', (e) => onMessage(e, (r) => state.rollouts.set(r.id, r)));
  source.addEventListener('reset', () => {
    // The server dropped us for falling behind: reconnect, and hello reloads the snapshot.
    setLive('reconnecting', 'catching up…');
    reconnectSoon();
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (signed out or revoked) or the server is gone: find out which, then retry.
      setLive('reconnecting', 'reconnecting…');
      getJson(`${API}/dashboard/overview`).then(() => reconnectSoon(), () => reconnectSoon(5000));
    } else {
      setLive('reconnecting', 'reconnecting…');
    }
  };
}

function reconnectSoon(delay = 1000) {
  if (source) source.close();
  window.clearTimeout(retryTimer);
  retryTimer = window.setTimeout(() => connect(sourceDevice), delay);
}

function onMessage(event, apply) {
  state.messages += 1;
  document.getElementById('live-status').dataset.messages = String(state.messages);
  apply(JSON.parse(event.data));
  scheduleRender();
}

function patchDevice(patch) {
  const device = state.devices.get(patch.device_id);
  if (device) {
    // The sync state is the server's (reported against desired): refetch when what it rests on moves.
    if (SYNC_INPUTS.some((k) => k in patch && patch[k] !== device[k])) reloadOverviewSoon();
    Object.assign(device, patch);
  } else {
    state.devices.set(patch.device_id, { tags: [], last_telemetry: null, ...patch });
    reloadOverviewSoon(); // a new device: fetch its full row
  }
  if (state.detail && state.detail.id === patch.device_id && state.detail.device) {
    Object.assign(state.detail.device, patch);
  }
}

function insertByTs(list, item, key, limit) {
  if (list.some((x) => x[key] === item[key])) return list; // QoS 1 redelivery
  list.push(item);
  list.sort((a, b) => a.ts - b.ts);
  return list.length > limit ? list.slice(list.length - limit) : list;
}

function addTelemetry(window_) {
  const device = state.devices.get(window_.device_id);
  if (!device) {
    reloadOverviewSoon();
    return;
  }
  if (!device.last_telemetry || device.last_telemetry.ts <= window_.ts) {
    device.last_telemetry = window_;
    device.last_telemetry_ms = window_.ts;
  }
  const detail = state.detail;
  if (detail && detail.id === window_.device_id && detail.telemetry) {
    detail.telemetry = insertByTs(detail.telemetry, window_, 'window_id', TELEMETRY_WINDOWS);
  }
}

function addEvent(event) {
  if (event.kind === 'drift_alert') {
    const same = (a) => a.device_id === event.device_id && a.ts === event.ts && a.message === event.message;
    if (!state.alerts.some(same)) state.alerts = [event, ...state.alerts].slice(0, ALERTS);
  }
  const detail = state.detail;
  if (detail && detail.id === event.device_id && detail.history && UPDATE_KINDS.has(event.kind)) {
    detail.history = [event, ...detail.history].slice(0, 50);
  }
}

function addDrift(column) {
  const detail = state.detail;
  if (detail && detail.id === column.device_id && detail.drift) {
    detail.drift = insertByTs(detail.drift, column, 'window_id', DRIFT_WINDOWS);
  }
}

// --- views -------------------------------------------------------------------------------------

function card(label, value, testid) {
  return h('div', { class: 'card', 'data-testid': testid }, h('div', { class: 'card-value' }, value),
    h('div', { class: 'card-label' }, label));
}

function onlineBadge(online) {
  return h('span', { class: `dot ${online ? 'on' : 'off'}`, title: online ? 'online' : 'offline' },
    online ? 'online' : 'offline');
}

function distribution(title, counts, testid) {
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  const rows = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  return h('section', { class: 'panel', 'data-testid': testid }, h('h2', {}, title),
    rows.length ? h('table', { class: 'dist' }, rows.map(([name, count]) => h('tr', { 'data-value': name },
      h('th', {}, name), h('td', { class: 'bar-cell' }, h('meter', { min: 0, max: total, value: count })),
      h('td', { class: 'num' }, count)))) : h('p', { class: 'muted' }, 'no devices yet'));
}

function rolloutProgress(r, compact = false) {
  const total = Math.max(r.selected, r.assigned, 1);
  return h('div', { class: 'progress-row' },
    h('progress', { max: total, value: r.committed, 'data-testid': 'rollout-progress' }),
    h('span', { class: 'num' }, `${r.committed} / ${r.selected} committed`),
    compact ? null : h('span', { class: 'muted' }, ` · ${r.assigned} assigned`));
}

function overviewView() {
  const devices = [...state.devices.values()].sort((a, b) => a.device_id.localeCompare(b.device_id));
  const online = devices.filter((d) => d.online).length;
  const updating = devices.filter((d) => !SETTLED_PHASES.has(d.phase) && d.phase !== 'failed').length;
  const failed = devices.filter((d) => d.phase === 'failed').length;
  const attention = devices.filter((d) => ATTENTION.has(d.sync)).length;
  const versions = new Map();
  const phases = new Map();
  for (const d of devices) {
    const v = d.running || 'none';
    versions.set(v, (versions.get(v) || 0) + 1);
    const p = d.phase || 'unknown';
    phases.set(p, (phases.get(p) || 0) + 1);
  }
  const live = [...state.rollouts.values()].filter((r) => r.live);
  return h('div', { class: 'overview' },
    h('section', { class: 'cards' }, card('devices', devices.length, 'count-devices'),
      card('online', online, 'count-online'), card('offline', devices.length - online, 'count-offline'),
      card('updating', updating, 'count-updating'), card('failed', failed, 'count-failed'),
      card('stalled, fell back or refused', attention, 'count-attention')),
    h('div', { class: 'two' }, distribution('Running versions', versions, 'versions'),
      distribution('Update phases', phases, 'phases')),
    live.length ? h('section', { class: 'panel' }, h('h2', {}, 'Live rollouts'),
      live.map((r) => h('div', { class: 'rollout-mini', 'data-rollout-id': r.id },
        h('a', { href: '#/rollouts' }, r.id), ` ${r.target || r.target_digest.slice(0, 12)} · ${r.state} · stage ${r.stage} `,
        rolloutProgress(r, true)))) : null,
    h('section', { class: 'panel' }, h('h2', {}, 'Devices'),
      h('table', { class: 'devices', 'data-testid': 'devices-table' },
        h('thead', {}, h('tr', {}, ['device', 'presence', 'running', 'phase', 'desired', 'sync', 'agent', 'p95 ms',
          'errors', 'drift', 'last window'].map((c) => h('th', {}, c)))),
        h('tbody', {}, devices.map((d) => {
          const t = d.last_telemetry || {};
          return h('tr', { 'data-device-id': d.device_id, class: d.online ? '' : 'offline' },
            h('td', {}, h('a', { href: `#/devices/${encodeURIComponent(d.device_id)}` }, d.device_id)),
            h('td', {}, onlineBadge(d.online)), h('td', {}, d.running || '–'),
            h('td', { class: `phase ${d.phase || ''}` }, d.phase || '–'), h('td', {}, d.desired_version || '–'),
            syncCell(d), h('td', {}, d.agent_version || '–'),
            h('td', { class: 'num' }, formatNumber(t.latency_ms_p95)),
            h('td', { class: 'num' }, t.errors ?? '–'), h('td', { class: 'num' }, formatNumber(t.drift_score)),
            h('td', { class: 'muted', 'data-ts': d.last_telemetry_ms || '' }, age(d.last_telemetry_ms)));
        })))));
}

function syncCell(d) {
  return h('td', { class: `sync ${d.sync || ''}`, 'data-sync': d.sync || '' }, (d.sync || '–').replace('_', ' '));
}

function gateRow(g) {
  const status = g.ok === null ? 'pending' : g.ok ? 'pass' : 'fail';
  const fmt = (v) => {
    if (g.name === 'soak') return formatNumber(v, 0);
    return PERCENT_GATES.has(g.name) ? pct(v) : formatNumber(v, 2);
  };
  return h('tr', { 'data-gate': g.name, 'data-status': status },
    h('th', {}, g.label), h('td', { class: 'num' }, fmt(g.value)),
    h('td', { class: 'num muted' }, g.threshold === null ? 'not gated' : `${g.op} ${fmt(g.threshold)}`),
    h('td', { class: `gate ${status}` }, status));
}

function rolloutCard(r) {
  return h('article', { class: `panel rollout ${r.state}`, 'data-rollout-id': r.id, 'data-state': r.state,
    'data-committed': r.committed, 'data-assigned': r.assigned, 'data-selected': r.selected },
  h('header', {}, h('h2', {}, r.id), h('span', { class: `badge state ${r.state}` }, r.state.replaceAll('_', ' '))),
  h('p', {}, h('strong', {}, r.target || r.target_digest.slice(0, 12)), ` to ${r.selector} · policy ${r.policy}`),
  rolloutProgress(r),
  h('ol', { class: 'stages' }, r.stages.map((s) => h('li', { class: `stage ${s.status}`, 'data-stage': s.name },
    h('span', { class: 'stage-name' }, s.name), h('span', { class: 'muted' },
      s.count !== null ? ` ${s.count} device${s.count === 1 ? '' : 's'}` : ` ${s.percent} %`),
    h('progress', { max: Math.max(s.devices, 1), value: s.committed }),
    h('span', { class: 'num' }, `${s.committed} / ${s.devices}`), h('span', { class: 'muted' }, ` ${s.status}`)))),
  r.gates.length ? h('table', { class: 'gates' },
    h('caption', {}, `Gates of stage ${r.stage}`), r.gates.map(gateRow)) : null,
  r.reason ? h('p', { class: 'reason muted' }, r.reason) : null);
}

function rolloutsView() {
  const list = [...state.rollouts.values()].reverse();
  return h('div', { class: 'rollouts' }, list.length ? list.map(rolloutCard)
    : h('p', { class: 'muted' }, 'No rollouts yet: edgeops rollout start NAME:VERSION'));
}

function alertsView() {
  return h('section', { class: 'panel' }, h('h2', {}, 'Drift alerts'),
    state.alerts.length ? h('table', { class: 'alerts', 'data-testid': 'alerts-table' },
      h('thead', {}, h('tr', {}, ['time', 'device', 'version', 'message'].map((c) => h('th', {}, c)))),
      h('tbody', {}, state.alerts.map((a) => h('tr', { 'data-device-id': a.device_id },
        h('td', {}, formatTime(a.ts)), h('td', {}, h('a', { href: `#/devices/${encodeURIComponent(a.device_id)}` },
          a.device_id)), h('td', {}, a.bundle ? `${a.bundle.name}:${a.bundle.version}` : '–'),
        h('td', {}, a.message)))))
      : h('p', { class: 'muted' }, 'No drift alerts.'));
}

function deviceView() {
  const detail = state.detail;
  if (!detail.device) {
    return h('p', { class: detail.error ? 'error' : 'muted' }, detail.error || `Loading ${detail.id}…`);
  }
  const d = { ...detail.device, ...(state.devices.get(detail.id) || {}) };
  const windows = detail.telemetry;
  const latency = lineChart({ label: 'inference latency (ms)', series: [
    { name: 'p50', cls: 's1', points: windows.map((w) => [w.ts, w.latency_ms_p50]) },
    { name: 'p95', cls: 's2', points: windows.map((w) => [w.ts, w.latency_ms_p95]) }],
  attrs: { 'data-testid': 'latency-chart', 'data-last-window': windows.length ? windows[windows.length - 1].window_id : '' } });
  const errors = barChart({ label: 'errors per window', cls: 'bar err', bars: windows.map((w) => [w.ts, w.errors]),
    attrs: { 'data-testid': 'errors-chart' } });
  const inferences = barChart({ label: 'inferences per window', bars: windows.map((w) => [w.ts, w.inferences]),
    height: 120, attrs: { 'data-testid': 'inferences-chart' } });
  const driftScore = lineChart({ label: 'drift score', height: 140, yFormat: (v) => formatNumber(v, 2),
    series: [{ name: 'drift score', cls: 's3', points: windows.map((w) => [w.ts, w.drift_score]) }],
    attrs: { 'data-testid': 'drift-score-chart' } });
  const map = heatmap({ label: 'per-feature PSI', columns: detail.drift, attrs: { 'data-testid': 'drift-heatmap' } });
  const fields = [['presence', onlineBadge(d.online)], ['running', d.running || '–'], ['phase', d.phase || '–'],
    ['sync', (d.sync || '–').replace('_', ' ')],
    ['agent', d.agent_version || '–'], ['tags', (d.tags || []).join(', ') || '–'],
    ['desired', d.desired ? `deployment ${d.desired.deployment_id}${d.desired.rollout_id ? ` (${d.desired.rollout_id})` : ''}` : '–'],
    ['last error', d.last_error || '–'],
    ...(d.rejected_reason ? [['refused', `${d.rejected_reason} (${age(d.rejected_ms)})`]] : []),
    ['last window', age(d.last_telemetry_ms)]];
  return h('div', { class: 'device', 'data-device-id': d.device_id },
    h('p', {}, h('a', { href: '#/' }, '← fleet')),
    h('h2', {}, d.device_id),
    h('dl', { class: 'facts' }, fields.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    h('div', { class: 'two' },
      h('section', { class: 'panel' }, h('h3', {}, `Latency, last ${windows.length} windows (ms)`), latency),
      h('section', { class: 'panel' }, h('h3', {}, 'Errors per window'), errors, h('h3', {}, 'Inferences per window'),
        inferences)),
    h('div', { class: 'two' },
      h('section', { class: 'panel' }, h('h3', {}, 'Per-feature drift (PSI) over time'), map,
        h('p', { class: 'legend-note muted' }, 'pale: no shift · amber: PSI 0.1 · red: PSI ≥ 0.25')),
      h('section', { class: 'panel' }, h('h3', {}, 'Drift score'), driftScore)),
    h('section', { class: 'panel' }, h('h3', {}, 'Update history'),
      detail.history.length ? h('table', { class: 'history', 'data-testid': 'update-history' },
        h('thead', {}, h('tr', {}, ['time', 'event', 'version', 'message'].map((c) => h('th', {}, c)))),
        h('tbody', {}, detail.history.map((e) => h('tr', { 'data-kind': e.kind }, h('td', {}, formatTime(e.ts)),
          h('td', {}, e.kind.replaceAll('_', ' ')), h('td', {}, e.bundle ? `${e.bundle.name}:${e.bundle.version}` : '–'),
          h('td', {}, e.error ? `${e.message} (${e.error.code})` : e.message)))))
        : h('p', { class: 'muted' }, 'No update events yet.')));
}

// --- routing and rendering ---------------------------------------------------------------------

function route() {
  const hash = window.location.hash || '#/';
  const match = /^#\/devices\/(.+)$/.exec(hash);
  if (match) return { name: 'device', id: decodeURIComponent(match[1]) };
  if (hash === '#/rollouts') return { name: 'rollouts' };
  if (hash === '#/alerts') return { name: 'alerts' };
  return { name: 'overview' };
}

let pending = false;
function scheduleRender() {
  if (pending) return;
  pending = true;
  window.requestAnimationFrame(() => {
    pending = false;
    render();
  });
}

function render() {
  const current = route();
  document.getElementById('fleet-name').textContent = state.fleet ? `· fleet ${state.fleet}` : '';
  document.getElementById('actor').textContent = state.actor ? `signed in as ${state.actor}` : '';
  const count = document.getElementById('alert-count');
  count.textContent = state.alerts.length ? String(state.alerts.length) : '';
  for (const link of document.querySelectorAll('nav a')) {
    const active = link.dataset.nav === current.name;
    link.classList.toggle('active', active);
    if (active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const view = current.name === 'device' && state.detail ? deviceView()
    : current.name === 'rollouts' ? rolloutsView()
      : current.name === 'alerts' ? alertsView() : overviewView();
  view.dataset.view = current.name;
  document.getElementById('view').replaceChildren(view);
}

function onRoute() {
  const current = route();
  if (current.name === 'device') {
    if (!state.detail || state.detail.id !== current.id) {
      state.detail = { id: current.id, device: null, telemetry: [], drift: [], history: [], error: null };
      // The stream relays per-feature drift details only for the device being looked at.
      if (sourceDevice !== current.id) connect(current.id);
      else loadDevice(current.id);
    }
  } else {
    state.detail = null;
  }
  scheduleRender();
}

window.addEventListener('hashchange', onRoute);
// Ages ("12 s ago") move on even when nothing arrives; so do sync states (a stall, a new deployment).
window.setInterval(scheduleRender, 5000);
window.setInterval(reloadOverviewSoon, SYNC_REFRESH_MS);
const first = route();
onRoute();
if (first.name !== 'device') connect(null);
