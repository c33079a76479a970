// SVG charts for the dashboard: a line chart, a bar chart and a heatmap, drawn from plain arrays.
// No library and no network: every chart is rebuilt from the data on each render (a few hundred
// elements at most), and carries data-* attributes saying what it shows, for people and for tests.

const SVG = 'http://www.w3.org/2000/svg';
const PAD = { left: 48, right: 12, top: 12, bottom: 26 };

export function svg(name, attrs = {}, children = []) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function title(text) {
  const node = svg('title');
  node.textContent = text;
  return node;
}

function text(x, y, content, cls, anchor = 'start') {
  const node = svg('text', { x, y, class: cls, 'text-anchor': anchor });
  node.textContent = content;
  return node;
}

export function formatTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function formatNumber(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  if (Math.abs(value) >= 100) return value.toFixed(0);
  return value.toFixed(digits);
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const exp = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * exp >= value) return step * exp;
  }
  return 10 * exp;
}

// Tick labels with as many decimals as the step between ticks needs (0.05 -> "0.05", 25 -> "25").
function tickLabel(value, step) {
  let decimals = 0;
  while (decimals < 4 && Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-9) decimals += 1;
  return value.toFixed(decimals);
}

function frame(width, height, yMax, xs) {
  const nodes = [];
  const plotH = height - PAD.top - PAD.bottom;
  for (let i = 0; i <= 4; i += 1) {
    const y = PAD.top + plotH - (plotH * i) / 4;
    nodes.push(svg('line', { x1: PAD.left, x2: width - PAD.right, y1: y, y2: y, class: 'grid' }));
    nodes.push(text(PAD.left - 6, y + 4, tickLabel((yMax * i) / 4, yMax / 4), 'tick', 'end'));
  }
  if (xs.length) {
    const first = xs[0];
    const last = xs[xs.length - 1];
    nodes.push(text(PAD.left, height - 8, formatTime(first), 'tick', 'start'));
    if (last !== first) nodes.push(text(width - PAD.right, height - 8, formatTime(last), 'tick', 'end'));
  }
  return nodes;
}

function empty(width, height, message, attrs) {
  return svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart empty', role: 'img', ...attrs },
    [text(width / 2, height / 2, message, 'empty-note', 'middle')]);
}

// series: [{name, cls, points: [[x, y|null], ...]}] with x in epoch ms, sorted.
export function lineChart({ series, width = 640, height = 200, yFormat = (v) => formatNumber(v, 3), label, attrs = {} }) {
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  const ys = series.flatMap((s) => s.points.map((p) => p[1]).filter((v) => v !== null && v !== undefined));
  if (!xs.length || !ys.length) return empty(width, height, 'no data yet', attrs);
  const yMax = niceMax(Math.max(...ys));
  const x0 = xs[0];
  const span = Math.max(1, xs[xs.length - 1] - x0);
  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;
  const px = (x) => PAD.left + (xs.length === 1 ? plotW / 2 : ((x - x0) / span) * plotW);
  const py = (y) => PAD.top + plotH - (Math.min(y, yMax) / yMax) * plotH;
  const nodes = frame(width, height, yMax, xs);
  series.forEach((s, index) => {
    const pts = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (!pts.length) return;
    nodes.push(svg('polyline', { points: pts.map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(' '),
      class: `line ${s.cls}`, 'data-series': s.name }));
    const [lx, ly] = pts[pts.length - 1];
    nodes.push(svg('circle', { cx: px(lx), cy: py(ly), r: 3, class: `dot ${s.cls}` },
      [title(`${s.name} ${yFormat(ly)} at ${formatTime(lx)}`)]));
    nodes.push(text(PAD.left + 8 + index * 90, PAD.top + 10, s.name, `legend ${s.cls}`));
  });
  return svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img', 'aria-label': label,
    'data-points': xs.length, 'data-last-x': xs[xs.length - 1], ...attrs }, nodes);
}

// bars: [[x, value]] with x in epoch ms, sorted; one bar per entry.
export function barChart({ bars, width = 640, height = 160, cls = 'bar', label, yFormat = (v) => formatNumber(v, 0), attrs = {} }) {
  if (!bars.length) return empty(width, height, 'no data yet', attrs);
  const yMax = niceMax(Math.max(4, ...bars.map((b) => b[1] || 0)));
  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;
  const step = plotW / bars.length;
  const nodes = frame(width, height, yMax, bars.map((b) => b[0]));
  bars.forEach(([x, value], i) => {
    const h = ((value || 0) / yMax) * plotH;
    nodes.push(svg('rect', { x: PAD.left + i * step + step * 0.15, y: PAD.top + plotH - h, width: Math.max(1, step * 0.7),
      height: Math.max(0, h), class: value ? cls : `${cls} zero` }, [title(`${yFormat(value || 0)} at ${formatTime(x)}`)]));
  });
  return svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img', 'aria-label': label,
    'data-points': bars.length, 'data-last-x': bars[bars.length - 1][0], ...attrs }, nodes);
}

// PSI 0 is pale, 0.1 (moderate shift) amber, 0.25 and above (significant) deep red.
export function psiColor(psi) {
  if (psi === null || psi === undefined) return '#eceff1';
  const t = Math.max(0, Math.min(1, psi / 0.25));
  const hue = 50 - 50 * t;
  const light = 92 - 52 * t;
  return `hsl(${hue.toFixed(0)}, 85%, ${light.toFixed(0)}%)`;
}

// columns: [{ts, window_id, psi: [per feature], drifted_features: [...]}] oldest first.
export function heatmap({ columns, maxRows = 64, width = 640, label, attrs = {} }) {
  const features = Math.max(0, ...columns.map((c) => (c.psi || []).length));
  if (!columns.length || !features) return empty(width, 120, 'no drift details yet', attrs);
  // More features than rows: show the ones that drifted most in the shown windows.
  let rows = [...Array(features).keys()];
  if (features > maxRows) {
    const peak = rows.map((f) => Math.max(0, ...columns.map((c) => c.psi[f] || 0)));
    rows = rows.sort((a, b) => peak[b] - peak[a]).slice(0, maxRows).sort((a, b) => a - b);
  }
  const cell = Math.max(3, Math.min(14, Math.floor(360 / rows.length)));
  const plotW = width - PAD.left - PAD.right;
  const colW = plotW / columns.length;
  const height = PAD.top + rows.length * cell + PAD.bottom;
  const nodes = [];
  columns.forEach((c, ci) => {
    rows.forEach((f, ri) => {
      const psi = (c.psi || [])[f];
      nodes.push(svg('rect', { x: PAD.left + ci * colW, y: PAD.top + ri * cell, width: Math.max(1, colW - 0.5),
        height: Math.max(1, cell - 0.5), fill: psiColor(psi) },
        [title(`feature ${f}: PSI ${formatNumber(psi, 3)} at ${formatTime(c.ts)}`)]));
    });
  });
  const every = Math.max(1, Math.ceil(rows.length / 8));
  rows.forEach((f, ri) => {
    if (ri % every === 0) nodes.push(text(PAD.left - 6, PAD.top + ri * cell + cell - 1, `f${f}`, 'tick', 'end'));
  });
  nodes.push(text(PAD.left, height - 8, formatTime(columns[0].ts), 'tick', 'start'));
  if (columns.length > 1) nodes.push(text(width - PAD.right, height - 8, formatTime(columns[columns.length - 1].ts), 'tick', 'end'));
  return svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart heatmap', role: 'img', 'aria-label': label,
    'data-columns': columns.length, 'data-rows': rows.length,
    'data-last-window': columns[columns.length - 1].window_id, ...attrs }, nodes);
}
