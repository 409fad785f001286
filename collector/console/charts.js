// Small SVG charts built with DOM calls: a sparkline per threat, the calendar heatmap of
// daily counts and the timeline by severity. Colours come from CSS classes (no inline style).

import { svg, fmtCount, fmtTime, toDate } from './dom.js';

const SEVERITIES = ['high', 'medium', 'low'];

/** A sparkline of counts (per hour bucket), 80x18. */
export function sparkline(values) {
  const w = 80;
  const h = 18;
  const vals = Array.isArray(values) ? values.map((v) => Number(v) || 0) : [];
  const s = svg('svg', { class: 'spark', viewBox: `0 0 ${w} ${h}`, width: w, height: h, 'aria-hidden': 'true' });
  if (vals.length === 0) return s;
  const max = Math.max(1, ...vals);
  const step = vals.length > 1 ? w / (vals.length - 1) : w;
  const pts = vals.map((v, i) => `${(i * step).toFixed(1)},${(h - 1 - (v / max) * (h - 3)).toFixed(1)}`);
  if (vals.length === 1) pts.push(`${w},${pts[0].split(',')[1]}`);
  s.append(svg('polyline', { points: pts.join(' '), class: 'spark-line' }));
  return s;
}

function level(count, max) {
  if (!count) return 0;
  const r = count / Math.max(1, max);
  if (r > 0.75) return 4;
  if (r > 0.5) return 3;
  if (r > 0.25) return 2;
  return 1;
}

/**
 * A calendar heatmap: one column per week, one row per weekday (Monday first), days from
 * `from` to `to` (Dates). `days` is the API's [{day: 'YYYY-MM-DD', count}]. `onPick(day)`
 * is called with the clicked day.
 */
export function heatmap(days, from, to, onPick) {
  const counts = new Map((days || []).map((d) => [d.day, Number(d.count) || 0]));
  const max = Math.max(0, ...counts.values());
  const cell = 11;
  const gap = 2;
  const start = new Date(Date.UTC(from.getUTCFullYear(), from.getUTCMonth(), from.getUTCDate()));
  start.setUTCDate(start.getUTCDate() - ((start.getUTCDay() + 6) % 7));
  const end = new Date(Date.UTC(to.getUTCFullYear(), to.getUTCMonth(), to.getUTCDate()));
  const weeks = Math.ceil(((end - start) / 86400000 + 1) / 7);
  const left = 26;
  const top = 14;
  const width = left + weeks * (cell + gap);
  const height = top + 7 * (cell + gap);
  const root = svg('svg', { class: 'heatmap', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': 'Daily threat events' });
  ['Mon', 'Wed', 'Fri'].forEach((name, i) => {
    root.append(svg('text', { x: 0, y: top + (i * 2) * (cell + gap) + cell - 2, class: 'axis' }, name));
  });
  let lastMonth = -1;
  for (let d = new Date(start); d <= end; d.setUTCDate(d.getUTCDate() + 1)) {
    const idx = Math.round((d - start) / 86400000);
    const col = Math.floor(idx / 7);
    const row = idx % 7;
    const key = d.toISOString().slice(0, 10);
    const count = counts.get(key) || 0;
    if (row === 0 && d.getUTCMonth() !== lastMonth) {
      lastMonth = d.getUTCMonth();
      const label = d.toLocaleString('en-US', { month: 'short', timeZone: 'UTC' });
      root.append(svg('text', { x: left + col * (cell + gap), y: 10, class: 'axis' }, label));
    }
    const rect = svg('rect', {
      x: left + col * (cell + gap),
      y: top + row * (cell + gap),
      width: cell,
      height: cell,
      rx: 2,
      class: `day l${level(count, max)}`,
      dataset: { day: key, count: String(count) },
    }, svg('title', null, `${key}: ${fmtCount(count)} events`));
    if (onPick) rect.addEventListener('click', () => onPick(key));
    root.append(rect);
  }
  return root;
}

/**
 * A stacked bar chart of events per bucket by severity. `data` is the API's
 * {bucket_s, start, series: {high: [..], medium: [..], low: [..]}}, drawn `width` pixels wide.
 */
export function timeline(data, width) {
  const w = Math.max(320, Math.round(width || 720));
  const h = 130;
  const padL = 34;
  const padB = 18;
  const series = (data && data.series) || {};
  const n = Math.max(0, ...SEVERITIES.map((s) => (series[s] || []).length));
  const root = svg('svg', { class: 'timeline', viewBox: `0 0 ${w} ${h}`, width: w, height: h, role: 'img', 'aria-label': 'Events over time by severity' });
  const totals = [];
  for (let i = 0; i < n; i += 1) {
    totals.push(SEVERITIES.reduce((a, s) => a + (Number((series[s] || [])[i]) || 0), 0));
  }
  const max = Math.max(1, ...totals);
  const plotW = w - padL;
  const plotH = h - padB - 4;
  root.append(svg('line', { x1: padL, y1: h - padB, x2: w, y2: h - padB, class: 'axis-line' }));
  root.append(svg('text', { x: padL - 4, y: 12, class: 'axis end' }, fmtCount(max)));
  root.append(svg('text', { x: padL - 4, y: h - padB, class: 'axis end' }, '0'));
  const bw = n ? plotW / n : plotW;
  const startDate = toDate(data && data.start);
  const bucket = Number(data && data.bucket_s) || 3600;
  for (let i = 0; i < n; i += 1) {
    let y = h - padB;
    const parts = [];
    for (const sev of ['low', 'medium', 'high']) {
      const v = Number((series[sev] || [])[i]) || 0;
      if (!v) continue;
      const bh = (v / max) * plotH;
      y -= bh;
      parts.push(`${sev} ${fmtCount(v)}`);
      root.append(svg('rect', { x: padL + i * bw + 0.5, y, width: Math.max(1, bw - 1), height: bh, class: `bar sev-${sev}` }));
    }
    if (parts.length && startDate) {
      const t = new Date(startDate.getTime() + i * bucket * 1000);
      root.append(svg('rect', { x: padL + i * bw, y: 0, width: bw, height: h - padB, class: 'bar-hit' },
        svg('title', null, `${fmtTime(t)}: ${parts.join(', ')}`)));
    }
  }
  if (startDate && n) {
    const endDate = new Date(startDate.getTime() + n * bucket * 1000);
    root.append(svg('text', { x: padL, y: h - 4, class: 'axis' }, fmtTime(startDate)));
    root.append(svg('text', { x: w, y: h - 4, class: 'axis end' }, fmtTime(endDate)));
  }
  return root;
}
