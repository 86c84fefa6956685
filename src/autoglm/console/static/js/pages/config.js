// Configuration: the deploy file as a form generated from its schema (GET /admin/schema/deploy) and as
// YAML side by side, validated live by POST /admin/validate/deploy (the loader `autoglm deploy` uses, so
// errors carry the same "file:line key"); a form edit patches only that key's lines of the YAML
// (patchYAML), so comments and the order of keys stay; saved in this browser, downloaded, copied as
// YAML / CLI / curl, and launched through /admin/deployments with a history of launches.

import { h, clear, note, debounce, copyText, fmtTime } from '../dom.js';
import { t } from '../i18n.js';
import { SchemaForm } from '../schemaform.js';
import { toYAML, patchYAML } from '../yaml.js';
import * as store from '../store.js';

export const FILE_NAME = 'autoglm-deploy.yaml';
const DELIM = 'AUTOGLM_YAML';
const EXAMPLES = {
  demo: '# One demo model (random weights: its replies are noise) on CPU.\nmodels:\n  - name: autoglm-demo\n    aliases: [demo]\n    max_num_seqs: 8\nserver:\n  host: 127.0.0.1\n  port: 8000\n',
  two: 'models:\n  - name: small\n    source: autoglm-demo\n    max_num_seqs: 4\n  - name: large\n    source: autoglm-demo\n    replicas: 2\n    fallback: small\nserver:\n  port: 8000\n',
  auto: 'models:\n  - name: coder\n    source: autoglm-demo\n    profile:\n      tasks: {code: 0.9, math: 0.85, chat: 0.4}\n  - name: general\n    source: autoglm-demo\n    profile:\n      tasks: {chat: 0.8, translation: 0.9, code: 0.3}\nrecommend:\n  aliases: [auto]\n  default: general\nserver:\n  port: 8000\n',
};

const shellQuote = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

export function cliText(yaml) {
  return `cat > ${FILE_NAME} <<'${DELIM}'\n${yaml.replace(/\n?$/, '\n')}${DELIM}\nautoglm deploy ${FILE_NAME} --dry-run\n# then serve it: autoglm deploy ${FILE_NAME}\n`;
}

export function curlText(yaml, data, session) {
  const auth = session.key_required ? ' -H "Authorization: Bearer $AUTOGLM_ADMIN_KEY"' : '';
  const base = location.origin;
  if (session.features.deployments && data && Array.isArray(data.models) && data.models.length) {
    return data.models.map((m) => `curl -sS -X POST ${base}/admin/deployments${auth} -H 'Content-Type: application/json' -d ${shellQuote(JSON.stringify(m))}`).join('\n') + '\n';
  }
  return `curl -sS -X POST '${base}/admin/validate/deploy?name=${FILE_NAME}'${auth} -H 'Content-Type: text/plain' --data-binary @- <<'${DELIM}'\n${yaml.replace(/\n?$/, '\n')}${DELIM}\n`;
}

export async function render(root, ctx) {
  const { api, session } = ctx;
  root.append(h('h1', { id: 'h-config' }, t('Configuration')));
  const need = ctx.needs('admin');
  if (need) { root.append(note('info', need)); return null; }
  let schema;
  try { schema = await api.get('/admin/schema/deploy'); } catch (err) { root.append(note('error', err.message)); return null; }

  let text = store.draft() || EXAMPLES.demo;
  let data = {};
  let lastResult = null;
  let seq = 0;

  const yaml = h('textarea', { id: 'yaml-editor', class: 'mono yaml', spellcheck: 'false', rows: 24, value: text, 'aria-describedby': 'validate-status' });
  const gutter = h('pre', { class: 'gutter mono', 'aria-hidden': 'true' });
  const status = h('div', { id: 'validate-status', role: 'status', 'aria-live': 'polite', class: 'validate' });
  const yamlNote = h('p', { id: 'yaml-note', class: 'hint', role: 'status' });
  const formHost = h('div', { class: 'form-host' });
  const copyOut = h('textarea', { id: 'copy-out', class: 'mono', rows: 6, readonly: true });
  const copyNote = h('span', { role: 'status', class: 'muted', id: 'copy-note' });
  const launchOut = h('div', { id: 'launch-out', role: 'status' });
  const history = h('div', { id: 'launch-history' });
  const savedSel = h('select', { id: 'saved-select' });
  const saveName = h('input', { type: 'text', id: 'save-name', value: 'my-deploy', class: 'narrow' });

  const form = new SchemaForm(schema, { onChange: ({ structural, path, value }) => {
    // only the changed key's lines: comments, blank lines and the order of keys stay as written
    const patched = path ? patchYAML(text, path, value) : null;
    yamlNote.textContent = patched === null ? t('This edit rewrote the YAML from the form: its comments are gone.') : '';
    text = patched ?? toYAML(data);
    yaml.value = text;
    drawGutter();
    if (structural) drawForm();
    changed();
  } });

  function drawForm() {
    clear(formHost).append(form.render(data));
    if (lastResult && !lastResult.valid && lastResult.error) form.markError(lastResult.error.key, lastResult.error.message);
  }

  function drawGutter(errorLine) {
    const n = yaml.value.split('\n').length;
    clear(gutter);
    for (let i = 1; i <= n; i++) gutter.append(i === errorLine ? h('span', { class: 'err-line' }, `${i}\n`) : `${i}\n`);
    gutter.scrollTop = yaml.scrollTop;
  }
  yaml.addEventListener('scroll', () => { gutter.scrollTop = yaml.scrollTop; });

  function goToLine(line) {
    const lines = yaml.value.split('\n');
    const start = lines.slice(0, line - 1).reduce((a, l) => a + l.length + 1, 0);
    yaml.focus();
    yaml.setSelectionRange(start, start + (lines[line - 1] || '').length);
  }

  async function validate(from) {
    const mine = ++seq;
    let result;
    try {
      result = await api.request('POST', '/admin/validate/deploy', { text, query: { name: FILE_NAME } }).then((r) => r.body);
    } catch (err) {
      if (mine === seq) clear(status).append(note('error', err.message));
      return;
    }
    if (mine !== seq) return;
    lastResult = result;
    if (from === 'yaml' && result.data) {
      data = result.data;
      drawForm();
    } else if (from === 'init') {
      data = result.data || {};
      drawForm();
    }
    clear(status);
    if (result.valid) {
      form.clearErrors();
      drawGutter();
      status.append(note('ok', `✔ ${t('{file} is valid', { file: FILE_NAME })}`),
        h('ul', { class: 'plan-lines' }, result.plan.map((l) => h('li', {}, l))));
    } else {
      const e = result.error;
      drawGutter(e.line);
      form.markError(e.key, e.message);
      status.append(h('div', { class: 'note error', role: 'alert' },
        h('strong', {}, t('Not valid')), ': ',
        e.line ? h('button', { type: 'button', class: 'link', id: 'error-where', onclick: () => goToLine(e.line) }, e.where) : e.where,
        ` ${e.message}`));
    }
    launchBtn.disabled = !result.valid || !session.features.deployments || !session.caller.deploy;
  }

  const validateSoon = debounce(validate, 250);
  function changed(from = 'form') {
    store.saveDraft(text);
    validateSoon(from);
  }
  yaml.addEventListener('input', () => {
    text = yaml.value;
    drawGutter();
    changed('yaml');
  });
  yaml.addEventListener('keydown', (e) => {
    if (e.key === 'Tab' && !e.shiftKey && !e.ctrlKey && !e.altKey) { // two spaces, as YAML wants; Esc then Tab leaves
      if (yaml.dataset.escaped === '1') { yaml.dataset.escaped = ''; return; }
      e.preventDefault();
      yaml.setRangeText('  ', yaml.selectionStart, yaml.selectionEnd, 'end');
      yaml.dispatchEvent(new Event('input'));
    } else yaml.dataset.escaped = e.key === 'Escape' ? '1' : '';
  });

  function setText(newText) {
    text = newText;
    yaml.value = text;
    drawGutter();
    store.saveDraft(text);
    validate('init');
  }

  function drawSaved() {
    const all = store.savedConfigs();
    clear(savedSel).append(h('option', { value: '' }, `(${t('saved in this browser')})`),
      ...Object.keys(all).sort().map((n) => h('option', { value: n }, n)));
  }

  async function copy(kind) {
    const out = kind === 'yaml' ? text : kind === 'cli' ? cliText(text) : curlText(text, data, session);
    copyOut.value = out;
    copyOut.dataset.kind = kind;
    const ok = await copyText(out);
    copyNote.textContent = ok ? t('Copied to the clipboard.') : t('Select the text below and copy it.');
  }

  function download() {
    const url = URL.createObjectURL(new Blob([text], { type: 'application/yaml' }));
    const a = h('a', { href: url, download: FILE_NAME });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  const fileInput = h('input', { type: 'file', id: 'open-file', accept: '.yaml,.yml,text/yaml', onchange: async (e) => {
    const f = e.target.files[0];
    if (f) setText(await f.text());
  } });

  const launchBtn = h('button', { type: 'button', class: 'primary', id: 'launch-btn', disabled: true, onclick: async () => {
    if (!lastResult || !lastResult.valid) return;
    clear(launchOut);
    for (const m of data.models || []) {
      try {
        const out = await api.post('/admin/deployments', m);
        store.recordLaunch({ name: m.name, body: m, text, status: out.status || 'created', from: 'configuration' });
        launchOut.append(note('ok', `${t('Launched')} ${m.name}: ${out.status || 'created'}`));
      } catch (err) {
        store.recordLaunch({ name: m.name, body: m, text, status: `error: ${err.message}`, from: 'configuration' });
        launchOut.append(note('error', `${m.name}: ${err.message}`));
      }
    }
    drawHistory();
  } }, t('Launch these models'));

  function drawHistory() {
    const list = store.launches();
    clear(history).append(list.length === 0 ? h('p', { class: 'muted' }, t('No launches from this browser yet.'))
      : h('ol', { class: 'history' }, list.map((l) => h('li', {},
        `${fmtTime(l.at)} · ${l.name} · ${l.status} `,
        h('button', { type: 'button', class: 'small', onclick: () => setText(l.text || toYAML({ models: [l.body] })) }, t('Load'))))));
  }

  root.append(
    h('div', { class: 'toolbar card', role: 'toolbar', 'aria-label': t('Deploy file') },
      h('label', { for: 'example-select' }, t('Start from')),
      h('select', { id: 'example-select', onchange: (e) => { if (e.target.value) setText(EXAMPLES[e.target.value]); e.target.value = ''; } },
        h('option', { value: '' }, `(${t('an example')})`), h('option', { value: 'demo' }, t('one demo model')),
        h('option', { value: 'two' }, t('two models with a fallback')), h('option', { value: 'auto' }, t('model "auto" routing'))),
      h('label', { for: 'saved-select' }, t('Saved')), savedSel,
      h('button', { type: 'button', onclick: () => { const c = store.savedConfigs()[savedSel.value]; if (c) setText(c.text); } }, t('Load')),
      h('button', { type: 'button', onclick: () => { if (savedSel.value) { store.deleteConfig(savedSel.value); drawSaved(); } } }, t('Delete')),
      h('label', { for: 'save-name' }, t('Name')), saveName,
      h('button', { type: 'button', id: 'save-btn', onclick: () => { store.saveConfig(saveName.value.trim() || 'deploy', text); drawSaved(); savedSel.value = saveName.value.trim() || 'deploy'; } }, t('Save')),
      h('button', { type: 'button', onclick: download }, t('Download')),
      h('label', { for: 'open-file' }, t('Open a file')), fileInput),
    status,
    h('div', { class: 'split' },
      h('section', { class: 'card', 'aria-labelledby': 'form-h' }, h('h2', { id: 'form-h' }, t('Form')), formHost),
      h('section', { class: 'card', 'aria-labelledby': 'yaml-h' }, h('h2', {}, h('label', { id: 'yaml-h', for: 'yaml-editor' }, `YAML (${FILE_NAME})`)),
        h('div', { class: 'editor' }, gutter, yaml), yamlNote)),
    h('section', { class: 'card', 'aria-labelledby': 'copy-h' }, h('h2', { id: 'copy-h' }, t('Copy')),
      h('div', { class: 'row' },
        h('button', { type: 'button', id: 'copy-yaml', onclick: () => copy('yaml') }, t('Copy as YAML')),
        h('button', { type: 'button', id: 'copy-cli', onclick: () => copy('cli') }, t('Copy as CLI')),
        h('button', { type: 'button', id: 'copy-curl', onclick: () => copy('curl') }, t('Copy as curl')), copyNote),
      h('label', { for: 'copy-out' }, t('Copied text')), copyOut),
    h('section', { class: 'card', 'aria-labelledby': 'launch2-h' }, h('h2', { id: 'launch2-h' }, t('Launch')),
      !session.features.deployments ? note('info', t('Launching from here needs the /admin/deployments routes, which this server does not have: copy the CLI and run `autoglm deploy` instead.'))
        : ctx.needs('deploy') ? note('info', ctx.needs('deploy'))
          : h('p', { class: 'hint' }, t('Adds each model of this file to the running server (POST /admin/deployments).')),
      launchBtn, launchOut, h('h3', {}, t('History of launches')), history));
  drawSaved();
  drawGutter();
  drawHistory();
  await validate('init');
  return null;
}
