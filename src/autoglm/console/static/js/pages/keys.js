// Keys and usage: /admin/keys (create: the key is shown once; revoke; limits) and /admin/usage.

import { h, clear, field, note, table, fmtTime, copyText } from '../dom.js';
import { t } from '../i18n.js';

export async function render(root, ctx) {
  const { api, session } = ctx;
  root.append(h('h1', { id: 'h-keys' }, t('Keys and usage')));
  if (!session.features.keys) {
    root.append(note('info', session.gateway ? t('This server has no key routes.')
      : t('This server runs without a gateway (--no-gateway), so there are no keys to manage: start it without --no-gateway.')));
    return null;
  }
  const need = ctx.needs('gateway_admin');
  if (need) { root.append(note('info', need)); return null; }

  const keysBox = h('div', { id: 'keys-list' });
  const usageBox = h('div', { id: 'usage-list' });
  const created = h('div', { id: 'key-created', 'aria-live': 'polite' });
  const name = h('input', { type: 'text', required: true, placeholder: 'ci-bot' }); // the server checks the name and says why
  const models = h('input', { type: 'text', placeholder: t('all models') });
  const rpm = h('input', { type: 'number', min: 1, step: 1, placeholder: t('unlimited') });
  const tpm = h('input', { type: 'number', min: 1, step: 1, placeholder: t('unlimited') });
  const expires = h('input', { type: 'datetime-local' });
  const per = h('select', { id: 'usage-per', onchange: drawUsage }, h('option', { value: 'day' }, t('per day')), h('option', { value: 'hour' }, t('per hour')));

  async function drawKeys() {
    try {
      const list = await api.get('/admin/keys');
      clear(keysBox).append(list.data.length === 0 ? h('p', { class: 'muted' }, t('No keys yet.')) : table(list.data, [
        ['name', t('name')], ['prefix', t('prefix')],
        ['models', t('models'), (v) => (v ? v.join(', ') : t('all'))],
        ['rpm', 'rpm', (v) => v ?? t('unlimited')], ['tpm', 'tpm', (v) => v ?? t('unlimited')],
        ['created_at', t('created'), fmtTime], ['expires_at', t('expires'), (v) => (v ? fmtTime(v) : t('never'))],
        ['revoked_at', t('state'), (v, k) => (v ? `${t('revoked')} ${fmtTime(v)}` : h('button', { type: 'button', class: 'small danger',
          'aria-label': `${t('Revoke')} ${k.name}`, onclick: async (e) => {
            const btn = e.currentTarget;
            if (btn.dataset.confirm !== '1') { btn.dataset.confirm = '1'; btn.textContent = t('Really revoke?'); return; }
            try { await api.del(`/admin/keys/${encodeURIComponent(k.name)}`); } catch (err) { keysBox.prepend(note('error', err.message)); }
            drawKeys();
          } }, t('Revoke')))],
      ]));
    } catch (err) { clear(keysBox).append(note('error', err.message)); }
  }

  async function drawUsage() {
    try {
      const list = await api.get('/admin/usage', { query: { per: per.value } });
      clear(usageBox).append(list.data.length === 0 ? h('p', { class: 'muted' }, t('No usage recorded yet.')) : table(list.data, [
        ['key', t('key')], ['model', t('model')], ['period_start', t('period')], ['requests', t('requests')],
        ['prompt_tokens', t('prompt tokens')], ['completion_tokens', t('completion tokens')], ['total_tokens', t('total')],
      ]));
    } catch (err) { clear(usageBox).append(note('error', err.message)); }
  }

  const form = h('form', { class: 'grid-form', id: 'key-form', onsubmit: async (e) => {
    e.preventDefault();
    const body = { name: name.value.trim() };
    const ms = models.value.split(',').map((x) => x.trim()).filter(Boolean);
    if (ms.length) body.models = ms;
    if (rpm.value) body.rpm = Number(rpm.value);
    if (tpm.value) body.tpm = Number(tpm.value);
    if (expires.value) body.expires_at = new Date(expires.value).getTime() / 1000;
    try {
      const out = await api.post('/admin/keys', body);
      const keyText = h('code', { id: 'new-key' }, out.key);
      clear(created).append(h('div', { class: 'note ok', role: 'alert' },
        h('p', {}, t('Key {name} created. Copy it now: it is shown only this once.', { name: out.name })), keyText, ' ',
        h('button', { type: 'button', class: 'small', onclick: () => copyText(out.key) }, t('Copy'))));
      form.reset();
      drawKeys();
    } catch (err) { clear(created).append(note('error', err.message)); }
  } },
  field(t('Name'), name), field(t('Models'), models, t('comma-separated; empty: every model')),
  field(t('Requests per minute'), rpm), field(t('Tokens per minute'), tpm), field(t('Expires'), expires),
  h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary' }, t('Create key'))));

  root.append(
    h('section', { class: 'card', 'aria-labelledby': 'newkey-h' }, h('h2', { id: 'newkey-h' }, t('Create a key')), form, created),
    h('section', { class: 'card', 'aria-labelledby': 'keys-h' }, h('h2', { id: 'keys-h' }, t('Keys')), keysBox),
    h('section', { class: 'card', 'aria-labelledby': 'usage-h' }, h('h2', { id: 'usage-h' }, t('Usage')),
      h('div', { class: 'row' }, h('label', { for: 'usage-per' }, t('Group')), per), usageBox));
  await Promise.all([drawKeys(), drawUsage()]);
  return null;
}
