// Hand-written SVG charts: a line chart of one or more series, a gauge, horizontal bars.
// Each is a <figure> whose text says the current value, so it reads without the picture.

import { h, svg, fmtNumber } from './dom.js';

const W = 320;
const H = 120;
const PAD = { l: 40, r: 8, t: 8, b: 18 };

// series: [{name, values: [number|null]}]; every series has the same length (one value per scrape).
export function lineChart(title, series, { unit = '', digits = 1, max } = {}) {
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && Number.isFinite(v));
  const top = max ?? Math.max(1e-9, ...all) * 1.1;
  const n = Math.max(2, ...series.map((s) => s.values.length));
  const x = (i) => PAD.l + (i / (n - 1)) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - (v / top) * (H - PAD.t - PAD.b);
  const paths = series.map((s, k) => {
    let d = '';
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) { pen = false; return; }
      d += `${pen ? 'L' : 'M'}${x(i).toFixed(1)},${y(Math.min(v, top)).toFixed(1)}`;
      pen = true;
    });
    return svg('path', { d: d || 'M0,0', class: `series s${k}`, fill: 'none' });
  });
  const last = series.map((s) => {
    const vals = s.values.filter((v) => v !== null && Number.isFinite(v));
    return vals.length ? vals[vals.length - 1] : null;
  });
  const summary = series.map((s, k) => `${s.name}: ${fmtNumber(last[k], digits)}${unit ? ` ${unit}` : ''}`).join(', ');
  const picture = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title}: ${summary}`, class: 'chart' },
    svg('line', { x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b, class: 'axis' }),
    svg('line', { x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b, class: 'axis' }),
    svg('text', { x: PAD.l - 4, y: PAD.t + 8, 'text-anchor': 'end', class: 'tick' }, fmtNumber(top, digits)),
    svg('text', { x: PAD.l - 4, y: H - PAD.b, 'text-anchor': 'end', class: 'tick' }, '0'),
    ...paths);
  return h('figure', { class: 'card chart-card' },
    h('figcaption', {}, h('strong', {}, title), ' ',
      h('span', { class: 'legend' }, series.map((s, k) => h('span', { class: `key s${k}` },
        `${s.name} ${fmtNumber(last[k], digits)}${unit ? ` ${unit}` : ''}`)))),
    picture);
}

// value in [0, 1] (null: no data)
export function gauge(title, value, { digits = 1, suffix = '%', scale = 100, danger = 0.9 } = {}) {
  const v = value === null || value === undefined || !Number.isFinite(value) ? null : Math.max(0, Math.min(1, value));
  const text = v === null ? '–' : `${fmtNumber(value * scale, digits)}${suffix}`;
  const arc = (frac) => {
    const a = Math.PI * (1 - frac);
    return `${(60 + 50 * Math.cos(a)).toFixed(1)},${(60 - 50 * Math.sin(a)).toFixed(1)}`;
  };
  return h('figure', { class: 'card gauge-card' },
    h('figcaption', {}, h('strong', {}, title)),
    svg('svg', { viewBox: '0 0 120 70', role: 'img', 'aria-label': `${title}: ${text}`, class: 'gauge' },
      svg('path', { d: `M10,60 A50,50 0 0 1 110,60`, class: 'gauge-track', fill: 'none' }),
      v === null ? null : svg('path', { d: `M10,60 A50,50 0 0 1 ${arc(v)}`, class: `gauge-value${v >= danger ? ' danger' : ''}`, fill: 'none' }),
      svg('text', { x: 60, y: 58, 'text-anchor': 'middle', class: 'gauge-text' }, text)));
}

// counts: {label: number}
export function bars(title, counts, emptyText) {
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  const top = Math.max(1, ...entries.map(([, v]) => v));
  return h('figure', { class: 'card bars-card' },
    h('figcaption', {}, h('strong', {}, title)),
    entries.length === 0 ? h('p', { class: 'muted' }, emptyText)
      : h('ul', { class: 'bars' }, entries.map(([label, v]) => {
        const bar = h('span', { class: 'bar' });
        bar.style.width = `${Math.max(2, (v / top) * 100)}%`;
        return h('li', {}, h('span', { class: 'bar-label' }, label), bar, h('span', { class: 'bar-value' }, fmtNumber(v, 0)));
      })));
}
