// The Prometheus text format -> samples, and the sums and rates the metrics page draws.

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseProm(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const l of m[3].matchAll(LABEL)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    const value = m[4] === '+Inf' ? Infinity : m[4] === '-Inf' ? -Infinity : Number(m[4]);
    samples.push({ name: m[1], labels, value });
  }
  return samples;
}

export function has(samples, name) {
  return samples.some((s) => s.name === name);
}

export function sum(samples, name, where = () => true) {
  let total = 0;
  let found = false;
  for (const s of samples) {
    if (s.name === name && where(s.labels) && Number.isFinite(s.value)) {
      total += s.value;
      found = true;
    }
  }
  return found ? total : null;
}

export function groupBy(samples, name, label) {
  const out = {};
  for (const s of samples) if (s.name === name) out[s.labels[label] ?? ''] = (out[s.labels[label] ?? ''] || 0) + s.value;
  return out;
}

// Per-second rate of a counter between two scrapes (null on the first or after a restart).
export function rate(prev, cur, name, dt) {
  if (!prev || dt <= 0) return null;
  const a = sum(prev, name);
  const b = sum(cur, name);
  if (a === null || b === null || b < a) return b === null ? null : 0;
  return (b - a) / dt;
}

// Mean of a histogram's new observations between two scrapes (null when none were added).
export function meanSince(prev, cur, base) {
  const s1 = sum(cur, `${base}_sum`);
  const c1 = sum(cur, `${base}_count`);
  if (s1 === null || c1 === null) return null;
  const s0 = prev ? sum(prev, `${base}_sum`) || 0 : 0;
  const c0 = prev ? sum(prev, `${base}_count`) || 0 : 0;
  const dc = c1 - c0;
  return dc > 0 ? (s1 - s0) / dc : null;
}
