// Metrics: GET /metrics every few seconds, drawn as live charts: throughput, TTFT and time per output
// token, running and waiting requests, KV-cache use, response-cache hit rate, errors by status, and
// the drift and quality gauges when the server reports them.

import { h, clear, note } from '../dom.js';
import { t } from '../i18n.js';
import { parseProm, sum, has, rate, meanSince, groupBy } from '../prom.js';
import { lineChart, gauge, bars } from '../charts.js';

const P = 'autoglm:';
const KEEP = 60;
const history = { samples: null, at: 0, rows: [] };

function point(prev, cur, dt) {
  return {
    gen: rate(prev, cur, `${P}generation_tokens_total`, dt),
    prompt: rate(prev, cur, `${P}prompt_tokens_total`, dt),
    reqs: rate(prev, cur, `${P}request_success_total`, dt),
    ttft: (v => (v === null ? null : v * 1000))(meanSince(prev, cur, `${P}time_to_first_token_seconds`)),
    tpot: (v => (v === null ? null : v * 1000))(meanSince(prev, cur, `${P}inter_token_latency_seconds`)),
    running: sum(cur, `${P}num_requests_running`),
    waiting: sum(cur, `${P}num_requests_waiting`),
  };
}

export async function render(root, ctx) {
  const { session, api } = ctx;
  root.append(h('h1', { id: 'h-metrics' }, t('Metrics')));
  if (!session.metrics.on) {
    root.append(note('info', t('Metrics are off on this server: install prometheus_client (pip install prometheus_client) and restart it.')));
    return null;
  }
  if (!session.metrics.readable) {
    root.append(note('info', t('/metrics needs the admin key or the --api-key here (or start the server with --metrics-public): enter it with the key button at the top.')));
    return null;
  }
  let interval = 2000;
  let paused = false;
  let timer = null;
  const grid = h('div', { class: 'grid', id: 'metrics-grid' });
  const stamp = h('p', { class: 'muted', role: 'status', id: 'metrics-stamp' });
  const pause = h('button', { type: 'button', 'aria-pressed': 'false', onclick: () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    pause.textContent = paused ? t('Resume') : t('Pause');
  } }, t('Pause'));
  const every = h('select', { id: 'metrics-every', onchange: (e) => { interval = Number(e.target.value); schedule(); } },
    [1000, 2000, 5000, 10000].map((ms) => h('option', { value: ms }, `${ms / 1000} s`)));
  every.value = String(interval);
  root.append(h('div', { class: 'row toolbar' }, pause, h('label', { for: 'metrics-every' }, t('Refresh every')), every, stamp), grid);

  function draw(cur) {
    const rows = history.rows;
    const col = (k) => rows.map((r) => r[k]);
    const kv = groupBy(cur, `${P}kv_cache_usage_perc`, 'model_name');
    const hits = sum(cur, `${P}cache_hits_total`) || 0;
    const misses = sum(cur, `${P}cache_misses_total`) || 0;
    const errors = {};
    for (const s of cur) {
      if (s.name === `${P}http_requests_total` && Number(s.labels.status) >= 400) {
        errors[s.labels.status] = (errors[s.labels.status] || 0) + s.value;
      }
    }
    const drift = cur.filter((s) => s.name === `${P}prediction_drift_rate`);
    const auc = cur.filter((s) => s.name === `${P}model_auc`);
    const label = (s) => Object.values(s.labels).join(' ') || '';
    clear(grid).append(
      lineChart(t('Throughput'), [{ name: t('output tok/s'), values: col('gen') }, { name: t('prompt tok/s'), values: col('prompt') }], { digits: 1 }),
      lineChart(t('Requests finished'), [{ name: t('req/s'), values: col('reqs') }], { digits: 2 }),
      lineChart(t('Time to first token'), [{ name: 'TTFT', values: col('ttft') }], { unit: 'ms', digits: 0 }),
      lineChart(t('Time per output token'), [{ name: 'TPOT', values: col('tpot') }], { unit: 'ms', digits: 1 }),
      lineChart(t('Running and waiting'), [{ name: t('running'), values: col('running') }, { name: t('waiting'), values: col('waiting') }], { digits: 0 }),
      ...Object.entries(kv).map(([model, v]) => gauge(`${t('KV cache')} ${model}`, v)),
      gauge(t('Response-cache hit rate'), hits + misses > 0 ? hits / (hits + misses) : null, { danger: 2 }),
      bars(t('Errors by status'), errors, t('No error responses.')),
      ...(drift.length ? drift.map((s) => gauge(`${t('Drift')} ${label(s)}`, s.value, { danger: 0.2 })) : []),
      ...(auc.length ? auc.map((s) => gauge(`${t('Quality (AUC)')} ${label(s)}`, s.value, { danger: 2 })) : []),
    );
    if (!drift.length && !auc.length) {
      grid.append(h('div', { class: 'card' }, h('strong', {}, t('Drift and quality')),
        h('p', { class: 'muted' }, t('This server reports no autoglm:prediction_drift_rate or autoglm:model_auc yet: they appear when drift and quality monitoring is on for the served model.'))));
    }
    if (!has(cur, `${P}generation_tokens_total`)) {
      grid.append(h('p', { class: 'muted' }, t('No request served yet: send one from the Playground and watch the charts move.')));
    }
  }

  async function tick() {
    if (paused) return;
    try {
      const text = await api.request('GET', '/metrics').then((r) => r.body);
      const now = performance.now();
      const cur = parseProm(text);
      const dt = (now - history.at) / 1000;
      history.rows.push(point(history.samples, cur, history.samples ? dt : 0));
      if (history.rows.length > KEEP) history.rows.shift();
      history.samples = cur;
      history.at = now;
      draw(cur);
      stamp.textContent = `${t('updated')} ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      stamp.textContent = err.message;
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = setInterval(tick, interval);
  }
  await tick();
  schedule();
  return () => clearInterval(timer);
}
