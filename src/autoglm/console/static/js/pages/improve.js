// Pipelines, runs and studies, registered versions with promote and rollback, the loop's decisions:
// /admin/pipelines[/{name}], /admin/runs/{id}, /admin/studies[/{name}], /admin/models (+ promote,
// rollback) and /admin/loop; an interrupted or failed run is resumed with POST /admin/runs/{id}/resume
// (the same pipeline run again: finished stages are kept, a half-done one continues from its
// checkpoints) and followed until it ends. Shapes are read generically: lists of objects become tables, series of
// numbers become charts, so a field added on the server shows up without a change here.

import { h, clear, note, table, fmtTime } from '../dom.js';
import { t } from '../i18n.js';
import { lineChart, bars } from '../charts.js';

const enc = encodeURIComponent;
const isScalar = (v) => v === null || typeof v !== 'object';

function listOf(body) {
  if (Array.isArray(body)) return body;
  if (body && Array.isArray(body.data)) return body.data;
  return [];
}

// Series of numbers inside an object: [1, 2, 3] or [{step, value}] or {name: [..]} -> [{name, values}]
function seriesIn(obj, prefix = '') {
  const out = [];
  if (!obj || typeof obj !== 'object') return out;
  for (const [k, v] of Object.entries(obj)) {
    if (k === 'config') continue; // the resolved pipeline file: settings, not measurements
    const name = prefix ? `${prefix}.${k}` : k;
    if (Array.isArray(v) && v.length > 1 && v.every((x) => typeof x === 'number')) out.push({ name, values: v });
    else if (Array.isArray(v) && v.length > 1 && v.every((x) => x && typeof x === 'object' && typeof x.value === 'number')) {
      out.push({ name, values: v.map((x) => x.value) });
    } else if (v && typeof v === 'object' && !Array.isArray(v) && prefix.split('.').length < 3) out.push(...seriesIn(v, name));
  }
  return out;
}

function columnsOf(rows) {
  const keys = [];
  for (const r of rows.slice(0, 20)) for (const [k, v] of Object.entries(r || {})) if (isScalar(v) && !keys.includes(k)) keys.push(k);
  return keys.slice(0, 8).map((k) => [k, k, /(_at|time|created|started|finished)$/.test(k) ? fmtTime : undefined]);
}

// An object shown as: scalar fields in a definition list, lists of objects as tables, series as charts.
export function details(obj, { onRow } = {}) {
  const box = h('div', { class: 'details' });
  const scalars = Object.entries(obj || {}).filter(([, v]) => isScalar(v) && v !== null && v !== '');
  if (scalars.length) {
    box.append(h('dl', { class: 'kv' }, scalars.map(([k, v]) => [h('dt', {}, k), h('dd', {}, /(_at|time)$/.test(k) ? fmtTime(v) : String(v))])));
  }
  if (obj && obj.stages && typeof obj.stages === 'object' && !Array.isArray(obj.stages)) { // a run's stages, in order
    const rows = Object.entries(obj.stages).map(([stage, v]) => ({ stage, ...(v && typeof v === 'object' ? v : { status: v }) }));
    box.append(h('h4', {}, t('Stages')), table(rows, [['stage', t('stage')], ['status', t('status'), (v) => h('span', { class: `badge ${v}` }, v)],
      ['seconds', t('seconds')], ['key', 'key']]));
  }
  for (const s of seriesIn(obj)) box.append(lineChart(s.name, [{ name: s.name, values: s.values }], { digits: 3 }));
  for (const [k, v] of Object.entries(obj || {})) {
    if (Array.isArray(v) && v.length && v.every((x) => x && typeof x === 'object' && !Array.isArray(x))) {
      const cols = columnsOf(v);
      if (onRow && onRow[k]) cols.push(['', '', (_, row) => onRow[k](row)]);
      box.append(h('h4', {}, k), table(v, cols));
    } else if (v && typeof v === 'object' && !Array.isArray(v) && Object.values(v).length && Object.values(v).every((x) => typeof x === 'number')) {
      box.append(bars(k, v, ''));
    }
  }
  return box;
}

function section(id, title) {
  return h('section', { class: 'card', 'aria-labelledby': `${id}-h` }, h('h2', { id: `${id}-h` }, title),
    h('div', { class: 'body', id: `${id}-body`, 'aria-live': 'polite' }, h('p', { class: 'muted' }, t('Loading…'))));
}

const trainHint = () => t('Pipelines, studies and the registry need the train extra: pip install -e ".[train]" (MLflow, Optuna).');

export async function render(root, ctx) {
  const { api, session } = ctx;
  const f = session.features;
  root.append(h('h1', { id: 'h-improve' }, t('Pipelines and models')));
  const any = f.pipelines || f.studies || f.registry || f.loop;
  const need = any ? ctx.needs('admin_api') : null;
  if (need) { root.append(note('info', need)); return null; }
  if (!session.extras.mlflow || !session.extras.optuna) root.append(note('warn', trainHint()));
  const secs = {
    pipelines: section('pipelines', t('Pipelines and runs')),
    studies: section('studies', t('Tuning studies')),
    registry: section('registry', t('Registered models')),
    loop: section('loop', t('Improvement loop decisions')),
  };
  root.append(...Object.values(secs));
  const body = (k) => secs[k].querySelector('.body');
  const routes = { pipelines: '/admin/pipelines', studies: '/admin/studies', registry: '/admin/models', loop: '/admin/loop' };
  const missing = (k) => clear(body(k)).append(note('info', t('Not available on this server: it has no {route} route (upgrade autoglm and restart it).', { route: routes[k] })));
  const detail = h('div', {});
  let alive = true;
  let follow = null;
  const resumable = (run) => Boolean(f.resume && run && ['interrupted', 'failed'].includes(run.status));

  // watching: after a resume, until the run ends (its new process may not have said "running" yet)
  async function showRun(id, into, message, watching = false) {
    clearTimeout(follow);
    try {
      const run = await api.get(`/admin/runs/${enc(id)}`);
      if (!alive) return;
      clear(into).append(h('h3', {}, `${t('Run')} ${id} `, h('span', { class: `badge ${run.status}`, 'data-run-status': run.status }, run.status)),
        message || null,
        resumable(run) ? h('p', {}, h('button', { type: 'button', class: 'primary', id: 'resume-run', onclick: () => resume(id, into) }, t('Resume')),
          ' ', h('span', { class: 'hint' }, t('Runs the same pipeline again: finished stages are kept, a half-done one continues from its checkpoints.'))) : null,
        details(run));
      if (run.status === 'running' || (watching && run.status === 'interrupted')) {
        follow = setTimeout(() => showRun(id, into, message, watching), 1000);
      }
    } catch (err) { clear(into).append(note('error', err.message)); }
  }

  async function resume(id, into) {
    try {
      const handle = await api.post(`/admin/runs/${enc(id)}/resume`, {});
      await showRun(id, into, note('ok', t('Resumed run {id}: {status} (pid {pid}); its log: {log}', { id, status: handle.status, pid: handle.pid, log: handle.log })), true);
    } catch (err) {
      await showRun(id, into, note('error', `${t('Resume refused')}: ${err.message}`));
    }
  }

  async function pipelines() {
    if (!f.pipelines) return missing('pipelines');
    try {
      const rows = listOf(await api.get('/admin/pipelines'));
      const into = h('div', { class: 'detail', 'aria-live': 'polite' });
      const open = async (name) => {
        try {
          const d = await api.get(`/admin/pipelines/${enc(name)}`);
          clear(into).append(h('h3', {}, name), details(d, { onRow: { runs: (run) => (f.runs && (run.id || run.run_id)
            ? h('span', { class: 'row' }, h('button', { type: 'button', class: 'small', onclick: () => showRun(run.id || run.run_id, into) }, t('Open run')),
              resumable(run) ? h('button', { type: 'button', class: 'small', 'aria-label': `${t('Resume')} ${run.id}`, onclick: () => resume(run.id, into) }, t('Resume')) : null)
            : '') } }));
        } catch (err) { clear(into).append(note('error', err.message)); }
      };
      const cols = columnsOf(rows);
      cols.push(['', '', (_, r) => h('button', { type: 'button', class: 'small', onclick: () => open(r.name) }, t('Open'))]);
      clear(body('pipelines')).append(rows.length ? table(rows, cols) : h('p', { class: 'muted' }, t('No pipelines yet: run one with `autoglm pipeline run FILE`.')), into);
    } catch (err) { clear(body('pipelines')).append(note('error', err.message)); }
  }

  async function studies() {
    if (!f.studies) return missing('studies');
    try {
      const rows = listOf(await api.get('/admin/studies'));
      const into = h('div', { class: 'detail', 'aria-live': 'polite' });
      const open = async (name) => {
        try {
          const d = await api.get(`/admin/studies/${enc(name)}`);
          const trials = listOf(d.trials || []);
          const values = trials.map((tr) => (typeof tr.value === 'number' ? tr.value : (Array.isArray(tr.values) ? tr.values[0] : null)));
          let best = null;
          const bestSoFar = values.map((v) => { if (v !== null && (best === null || v > best)) best = v; return best; });
          clear(into).append(h('h3', {}, name),
            trials.length ? lineChart(t('History'), [{ name: t('value'), values }, { name: t('best so far'), values: bestSoFar }], { digits: 3 }) : null,
            d.importances && Object.keys(d.importances).length ? bars(t('Parameter importance'), d.importances, '') : null,
            details({ ...d, trials: undefined, importances: undefined }), trials.length ? table(trials, columnsOf(trials)) : null);
        } catch (err) { clear(into).append(note('error', err.message)); }
      };
      const cols = columnsOf(rows);
      cols.push(['', '', (_, r) => h('button', { type: 'button', class: 'small', onclick: () => open(r.name || r.study_name) }, t('Open'))]);
      clear(body('studies')).append(rows.length ? table(rows, cols) : h('p', { class: 'muted' }, t('No studies yet: start one with `autoglm tune`.')), into);
    } catch (err) { clear(body('studies')).append(note('error', err.message)); }
  }

  async function registry() {
    if (!f.registry) return missing('registry');
    try {
      const rows = listOf(await api.get('/admin/models'));
      const msg = h('p', { role: 'status', class: 'muted' });
      const act = (name, what, version) => async () => {
        try {
          await api.post(`/admin/models/${enc(name)}/${what}`, version ? { version: Number(version) } : {});
          msg.textContent = `${name}: ${what} ✔`;
        } catch (err) { msg.textContent = `${name}: ${err.message}`; }
        registry();
      };
      const cols = columnsOf(rows);
      cols.push(['aliases', t('aliases'), (v) => (v && typeof v === 'object' ? Object.entries(v).map(([a, n]) => `${a} → v${n}`).join(', ') : '–')]);
      cols.push(['', t('actions'), (_, r) => h('span', { class: 'row' },
        h('button', { type: 'button', class: 'small', 'aria-label': `${t('Promote')} ${r.name} v${r.latest_version}`,
          onclick: act(r.name, 'promote', r.latest_version || r.version) }, `${t('Promote')} v${r.latest_version ?? ''}`),
        h('button', { type: 'button', class: 'small danger', onclick: act(r.name, 'rollback') }, t('Roll back')))]);
      clear(body('registry')).append(rows.length ? table(rows, cols) : h('p', { class: 'muted' }, t('No registered models yet.')), msg);
    } catch (err) { clear(body('registry')).append(note('error', err.message)); }
  }

  async function loop() {
    if (!f.loop) return missing('loop');
    try {
      const loops = listOf(await api.get('/admin/loop'));
      clear(body('loop')).append(loops.length ? h('div', {}, loops.map((l) => h('div', {}, h('h3', {}, l.name || t('loop')), details(l))))
        : h('p', { class: 'muted' }, t('No loop has run yet: start one with `autoglm loop run FILE`.')));
    } catch (err) { clear(body('loop')).append(note('error', err.message)); }
  }

  root.append(detail);
  await Promise.all([pipelines(), studies(), registry(), loop()]);
  return () => { alive = false; clearTimeout(follow); };
}
