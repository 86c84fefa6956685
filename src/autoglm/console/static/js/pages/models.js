// Models: what is served and its state (GET /v1/models, /health), deployments launched, stopped,
// swapped and scaled through /admin/deployments (scaling shows the planner's choice and reasons for the
// new replicas), models pulled into the store with a progress bar (POST /admin/pulls, then polling
// GET /admin/pulls/{id}), and the precision planner's table (GET /admin/plan).

import { h, clear, field, note, table, fmtBytes, fmtTime } from '../dom.js';
import { t } from '../i18n.js';
import { SchemaForm } from '../schemaform.js';
import { recordLaunch } from '../store.js';

const launchDraft = { name: 'demo-2', source: 'autoglm-demo' };

export function planTable(plan) {
  return h('div', { class: 'plan' },
    h('p', {}, h('strong', {}, plan.model || ''), ` ${t('on')} ${plan.device.description} · ${t('budget')} ${fmtBytes(plan.budget_bytes)} · max_model_len ${plan.max_model_len} · max_num_seqs ${plan.max_num_seqs}`),
    table(plan.rows, [
      ['precision', t('precision')],
      ['weights_bytes', t('weights'), fmtBytes],
      ['kv_bytes', 'KV', fmtBytes],
      ['overhead_bytes', t('overhead'), fmtBytes],
      ['total_bytes', t('total'), (v, r) => fmtBytes(Math.max(v, r.peak_bytes || 0))],
      ['fits', t('fits'), (v, r) => r.note || (v ? t('yes') : t('no'))],
      ['chosen', t('chosen'), (v) => (v ? '✔' : '')],
    ], t('Memory per precision')),
    h('p', {}, h('strong', {}, t('Choice')), `: --quantize ${plan.precision} --max-model-len ${plan.max_model_len} --max-num-seqs ${plan.max_num_seqs}`),
    h('ul', { class: 'reasons' }, [...(plan.notes || []), ...plan.reasons].map((r) => h('li', {}, r))));
}

export async function render(root, ctx) {
  const { api, session } = ctx;
  root.append(h('h1', { id: 'h-models' }, t('Models')));
  const served = h('section', { class: 'card', 'aria-labelledby': 'served-h' }, h('h2', { id: 'served-h' }, t('Served models')));
  const deployments = h('section', { class: 'card', 'aria-labelledby': 'dep-h' }, h('h2', { id: 'dep-h' }, t('Deployments')));
  const launch = h('section', { class: 'card', 'aria-labelledby': 'launch-h' }, h('h2', { id: 'launch-h' }, t('Launch a model')));
  const planner = h('section', { class: 'card', 'aria-labelledby': 'plan-h' }, h('h2', { id: 'plan-h' }, t('Precision planner')));
  const pull = h('section', { class: 'card', 'aria-labelledby': 'pull-h' }, h('h2', { id: 'pull-h' }, t('Pull a model')));
  const scaleOut = h('div', { id: 'scale-result', 'aria-live': 'polite' });
  root.append(served, deployments, pull, launch, planner);
  deployments.append(scaleOut);
  let timer = null;
  let alive = true;
  const pullTimers = [];
  const scaleDraft = {};

  async function drawServed() {
    const box = served.querySelector('.body') || served.appendChild(h('div', { class: 'body' }));
    try {
      const [models, health] = await Promise.all([api.get('/v1/models'), api.get('/health')]);
      const states = health.models || {};
      clear(box).append(table(models.data, [
        ['id', t('name')],
        ['root', t('source')],
        ['max_model_len', 'max_model_len'],
        ['id', t('status'), (id) => (session.auto_aliases.includes(id) && !states[id] ? h('span', { class: 'badge' }, t('routed by task'))
          : h('span', { class: `badge ${(states[id] || {}).status || 'unknown'}` }, (states[id] || {}).status || '–'))],
        ['id', t('running / waiting'), (id) => `${(states[id] || {}).num_running ?? '–'} / ${(states[id] || {}).num_waiting ?? '–'}`],
      ]), h('p', { class: 'muted' }, `${t('server')}: ${health.status}`));
    } catch (err) {
      clear(box).append(note('error', err.message));
    }
  }

  async function drawDeployments() {
    const box = deployments.querySelector('.body') || deployments.appendChild(h('div', { class: 'body' }));
    if (!session.features.deployments) {
      clear(box).append(note('info', t('Launching, stopping and swapping models need the /admin/deployments routes, which this server does not have: upgrade autoglm (pip install -U autoglm) and restart it. Until then, change the deploy file and restart `autoglm deploy`.')));
      return;
    }
    const need = ctx.needs('deploy');
    if (need) { clear(box).append(note('info', need)); return; }
    try {
      const list = await api.get('/admin/deployments');
      // what was typed survives the redraw every few seconds
      const scaleInput = (row) => h('input', { type: 'number', min: 1, max: 64, step: 1, value: scaleDraft[row.name] ?? row.replicas,
        class: 'tiny', 'aria-label': `${t('replicas of')} ${row.name}`, 'data-scale': row.name,
        oninput: (e) => { scaleDraft[row.name] = e.target.value; } });
      const scaleCell = (n, row) => {
        if (!session.features.scale || row.engine === 'remote') return String(n);
        const inp = scaleInput(row);
        return h('span', { class: 'row' }, inp, h('button', { type: 'button', class: 'small', 'aria-label': `${t('Scale')} ${row.name}`,
          onclick: () => scale(row.name, Number(inp.value)) }, t('Scale')));
      };
      const swapInput = (name) => h('input', { type: 'text', 'aria-label': `${t('new source for')} ${name}`, placeholder: t('new source'), class: 'narrow' });
      clear(box).append(list.data.length === 0 ? h('p', { class: 'muted' }, t('Nothing launched yet.')) : table(list.data, [
        ['name', t('name')], ['source', t('source')], ['version', t('version')],
        ['status', t('status'), (v) => h('span', { class: `badge ${v}` }, v)],
        ['replicas', t('replicas'), scaleCell],
        ['backends', t('replicas (requests served)'), (b) => (b && b.length ? b.map((x) => `${x.label} (${x.served})`).join(', ') : '–')],
        ['engine', 'engine'], ['quantize', 'quantize'],
        ['started_at', t('started'), fmtTime],
        ['name', t('actions'), (name) => {
          const inp = swapInput(name);
          const msg = h('span', { role: 'status', class: 'muted' });
          return h('span', { class: 'row' },
            h('button', { type: 'button', class: 'small danger', onclick: async () => {
              try { await api.del(`/admin/deployments/${encodeURIComponent(name)}`); msg.textContent = t('stopped'); } catch (err) { msg.textContent = err.message; }
              refresh();
            } }, t('Stop')),
            inp,
            h('button', { type: 'button', class: 'small', onclick: async () => {
              if (!inp.value.trim()) { msg.textContent = t('enter a source first'); return; }
              try { await api.post(`/admin/deployments/${encodeURIComponent(name)}/swap`, { source: inp.value.trim() }); msg.textContent = t('swapping…'); } catch (err) { msg.textContent = err.message; }
              refresh();
            } }, t('Swap')), msg);
        }],
      ]));
    } catch (err) {
      clear(box).append(note('error', err.message));
    }
  }

  async function scale(name, replicas) {
    clear(scaleOut).append(note('info', `${t('Scaling')} ${name} → ${replicas}…`));
    try {
      const out = await api.post(`/admin/deployments/${encodeURIComponent(name)}/scale`, { replicas });
      const plan = out.plan;
      clear(scaleOut).append(note('ok', t('{name}: {from} → {to} replicas; serving on {backends}', {
        name, from: out.from, to: out.to, backends: out.backends.map((b) => b.label).join(', ') })),
      plan ? h('div', { class: 'plan', id: 'scale-plan' },
        h('p', {}, h('strong', {}, t('Choice')), `: --quantize ${plan.precision}${plan.max_model_len ? ` --max-model-len ${plan.max_model_len} --max-num-seqs ${plan.max_num_seqs}` : ''}`,
          plan.needed_bytes ? ` · ${t('new replicas need')} ${fmtBytes(plan.needed_bytes)} / ${t('budget')} ${fmtBytes(plan.budget_bytes)}` : ''),
        h('ul', { class: 'reasons' }, plan.reasons.map((r) => h('li', {}, r)))) : null);
    } catch (err) {
      clear(scaleOut).append(note('error', `${name}: ${err.message}`));
    }
    delete scaleDraft[name];
    refresh();
  }

  function drawPull() {
    if (!session.features.pulls) { pull.append(note('info', t('Not available on this server: it has no {route} route (upgrade autoglm and restart it).', { route: '/admin/pulls' }))); return; }
    const need = ctx.needs('admin_api');
    if (need) { pull.append(note('info', need)); return; }
    const name = h('input', { type: 'text', id: 'pull-name', placeholder: 'zai-org/glm-4-9b-chat-hf', required: true, list: 'pull-models' });
    const source = h('select', { id: 'pull-source' }, ['auto', 'huggingface', 'modelscope'].map((x) => h('option', { value: x }, x)));
    const bar = h('progress', { id: 'pull-progress', max: 100, value: 0, 'aria-label': t('Pull progress') });
    const line = h('p', { id: 'pull-status', role: 'status', 'aria-live': 'polite', class: 'muted' });
    const stored = h('div', { id: 'pull-store' });
    const progressBox = h('div', { class: 'pull-box', hidden: true }, bar, line);
    let poll = null;
    async function drawStore() {
      try {
        const body = await api.get('/admin/pulls');
        clear(stored).append(h('h3', {}, t('In the local store')), body.store.length ? table(body.store, [
          ['repo_id', t('name')], ['source', t('source')], ['revision', t('revision')],
          ['size_bytes', t('size'), fmtBytes], ['complete', t('complete'), (v) => (v ? '✔' : t('partial'))]])
          : h('p', { class: 'muted' }, t('Nothing downloaded yet.')));
      } catch (err) { clear(stored).append(note('error', err.message)); }
    }
    function show(job) {
      progressBox.hidden = false;
      bar.value = job.percent || 0;
      const bytes = job.bytes_total ? `${fmtBytes(job.bytes_done)} / ${fmtBytes(job.bytes_total)}` : fmtBytes(job.bytes_done);
      const files = job.files_total ? ` · ${t('files')} ${job.files_done}/${job.files_total}` : '';
      line.className = job.state === 'error' ? 'note error' : job.state === 'done' ? 'note ok' : 'muted';
      line.setAttribute('role', job.state === 'error' ? 'alert' : 'status');
      line.textContent = job.state === 'error' ? `${t('Pull failed')}: ${job.error}`
        : job.state === 'done' ? `✔ ${job.name}: ${t('pulled into')} ${job.path}`
          : `${job.name}: ${job.percent.toFixed(1)} % · ${bytes}${files}${job.file ? ` · ${job.file}` : ''}`;
      line.dataset.state = job.state;
    }
    async function follow(id) {
      clearTimeout(poll);
      if (!alive) return;
      try {
        const job = await api.get(`/admin/pulls/${encodeURIComponent(id)}`);
        show(job);
        if (job.state === 'running') { poll = setTimeout(() => follow(id), 400); return; }
        if (job.state === 'done') drawStore();
      } catch (err) { line.className = 'note error'; line.textContent = err.message; }
    }
    pullTimers.push(() => clearTimeout(poll));
    pull.append(h('p', { class: 'hint' }, t('Downloads into the server\'s local store, as `autoglm pull NAME` does; then launch it by that name.')),
      h('form', { id: 'pull-form', class: 'grid-form', onsubmit: async (e) => {
        e.preventDefault();
        progressBox.hidden = false;
        bar.value = 0;
        line.className = 'muted';
        line.textContent = t('Starting…');
        try {
          const job = await api.post('/admin/pulls', { name: name.value.trim(), source: source.value });
          show(job);
          follow(job.id);
        } catch (err) {
          line.className = 'note error';
          line.setAttribute('role', 'alert');
          line.dataset.state = 'refused';
          line.textContent = `${t('Pull refused')}: ${err.message}`;
        }
      } },
      h('datalist', { id: 'pull-models' }, ['glm-4-9b-chat', 'glm-4.5-air'].map((r) => h('option', { value: r }))),
      field(t('Model'), name, t('alias or org/name repo id')), field(t('Source'), source),
      h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary', id: 'pull-btn' }, t('Pull')))),
      progressBox, stored);
    drawStore();
  }

  async function drawLaunch() {
    if (!session.features.deployments) {
      launch.append(note('info', t('Not available on this server (no /admin/deployments).')));
      return;
    }
    const need = ctx.needs('deploy');
    if (need) { launch.append(note('info', need)); return; }
    let schema;
    try { schema = await api.get('/admin/schema/deploy'); } catch (err) { launch.append(note('error', err.message)); return; }
    const result = h('div', { role: 'status', id: 'launch-result' });
    const planBox = h('div', { class: 'plan-box' });
    const form = new SchemaForm(schema, { rootRef: 'ModelConfig', onChange: ({ structural }) => { if (structural) redraw(); } });
    const holder = h('div', {});
    function redraw() { clear(holder).append(form.render(launchDraft)); }
    redraw();
    launch.append(h('p', { class: 'hint' }, t('The same fields as one entry of the deploy file\'s models list.')),
      h('form', { id: 'launch-form', onsubmit: async (e) => {
        e.preventDefault();
        clear(result).append(note('info', t('Launching…')));
        try {
          const out = await api.post('/admin/deployments', launchDraft);
          recordLaunch({ name: launchDraft.name, body: { ...launchDraft }, status: 'created', from: 'models' });
          clear(result).append(note('ok', `${t('Launched')} ${out.name || launchDraft.name}: ${out.status || ''}`));
        } catch (err) {
          recordLaunch({ name: launchDraft.name, body: { ...launchDraft }, status: `error: ${err.message}`, from: 'models' });
          clear(result).append(note('error', err.message));
        }
        refresh();
      } }, holder,
      h('div', { class: 'row' },
        h('button', { type: 'button', onclick: async () => {
          clear(planBox).append(h('p', { class: 'muted' }, t('Planning…')));
          try {
            const plan = await api.get('/admin/plan', { query: { model: launchDraft.source || launchDraft.name, device: launchDraft.device || 'auto', quantize: launchDraft.quantize || 'auto', max_model_len: launchDraft.max_model_len, max_num_seqs: launchDraft.max_num_seqs } });
            clear(planBox).append(planTable(plan), h('button', { type: 'button', class: 'small', onclick: () => {
              launchDraft.quantize = plan.precision;
              launchDraft.max_model_len = plan.max_model_len;
              launchDraft.max_num_seqs = plan.max_num_seqs;
              redraw();
            } }, t('Use the planner\'s choice')));
          } catch (err) { clear(planBox).append(note('error', err.message)); }
        } }, t('Plan it')),
        h('button', { type: 'submit', class: 'primary' }, t('Launch'))),
      planBox, result));
  }

  function drawPlanner() {
    if (!session.caller.admin) { planner.append(note('info', ctx.needs('admin'))); return; }
    const roots = [...new Set(session.models.map((m) => m.root))];
    const model = h('input', { type: 'text', value: roots[0] || 'autoglm-demo', list: 'plan-models' });
    const device = h('select', {}, ['auto', 'cpu', 'cuda', 'mps'].map((d) => h('option', { value: d }, d)));
    const quant = h('select', {}, ['auto', 'none', 'fp32', 'fp16', 'bf16', 'int8', 'int4'].map((d) => h('option', { value: d }, d)));
    const freeGb = h('input', { type: 'number', min: 0.1, step: 'any', placeholder: t('detected') });
    const mml = h('input', { type: 'number', min: 1, step: 1, placeholder: t('model default') });
    const seqs = h('input', { type: 'number', min: 1, step: 1, value: 16 });
    const out = h('div', { id: 'plan-out', 'aria-live': 'polite' });
    planner.append(h('form', { class: 'grid-form', onsubmit: async (e) => {
      e.preventDefault();
      clear(out).append(h('p', { class: 'muted' }, t('Planning…')));
      try {
        const plan = await api.get('/admin/plan', { query: { model: model.value, device: device.value, quantize: quant.value, free_gb: freeGb.value, max_model_len: mml.value, max_num_seqs: seqs.value } });
        clear(out).append(planTable(plan));
      } catch (err) { clear(out).append(note('error', err.message)); }
    } },
    h('datalist', { id: 'plan-models' }, [...roots, 'glm-4-9b-chat', 'glm-4.5-air'].map((r) => h('option', { value: r }))),
    field(t('Model'), model, t('alias, repo id or local directory')), field(t('Device'), device),
    field(t('Precision'), quant), field(t('Free memory (GiB)'), freeGb, t('describe a device that is not here')),
    field('max_model_len', mml), field('max_num_seqs', seqs),
    h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary' }, t('Plan')))), out);
  }

  async function refresh() {
    if (!alive) return;
    await Promise.all([drawServed(), drawDeployments()]);
  }

  await refresh();
  drawPull();
  drawPlanner();
  await drawLaunch();
  timer = setInterval(refresh, 3000);
  return () => { alive = false; clearInterval(timer); for (const stop of pullTimers) stop(); };
}
