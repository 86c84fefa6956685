// The console's shell: asks the server who we are (GET /ui/api/session), asks for a key when the
// server needs one, draws the navigation of the pages this key may use, and routes #/page.

import { h, clear, note } from './dom.js';
import { t, getLang, setLang, LANGS } from './i18n.js';
import * as api from './api.js';

const PAGES = [
  { id: 'playground', title: 'Playground', load: () => import('./pages/playground.js') },
  { id: 'models', title: 'Models', load: () => import('./pages/models.js') },
  { id: 'config', title: 'Configuration', load: () => import('./pages/config.js') },
  { id: 'metrics', title: 'Metrics', load: () => import('./pages/metrics.js') },
  { id: 'keys', title: 'Keys and usage', load: () => import('./pages/keys.js') },
  { id: 'improve', title: 'Pipelines and models', load: () => import('./pages/improve.js') },
];

const state = { session: null, cleanup: null, renderId: 0 };
const main = document.getElementById('main');

function currentPage() {
  const id = (location.hash.match(/^#\/([\w-]+)/) || [])[1];
  return PAGES.find((p) => p.id === id) || PAGES[0];
}

function drawChrome() {
  document.documentElement.lang = getLang() === 'zh' ? 'zh-CN' : 'en';
  document.title = `${t('Open-AutoGLM console')}`;
  const nav = clear(document.getElementById('nav'));
  const s = state.session;
  const locked = !s || (s.key_required && !s.caller.valid);
  const list = h('ul', {});
  if (!locked) {
    const page = currentPage();
    for (const p of PAGES) {
      list.append(h('li', {}, h('a', { href: `#/${p.id}`, 'aria-current': p.id === page.id ? 'page' : null }, t(p.title))));
    }
  }
  nav.append(list);
  const langSel = document.getElementById('lang');
  clear(langSel);
  for (const [code, name] of Object.entries(LANGS)) langSel.append(h('option', { value: code }, name));
  langSel.value = getLang();
  document.getElementById('lang-label').textContent = t('Language');
  const keyBtn = document.getElementById('key-btn');
  keyBtn.textContent = api.getKey() ? t('Change key') : t('Enter key');
  keyBtn.hidden = !(s && (s.key_required || api.getKey()));
  document.getElementById('skip').textContent = t('Skip to content');
  const who = document.getElementById('who');
  who.textContent = !s ? '' : !s.caller.valid ? t('no key') : s.caller.gateway_admin ? t('admin key')
    : s.caller.name ? `${t('key')}: ${s.caller.name}` : t('open server');
}

function keyForm(message) {
  const input = h('input', { type: 'password', id: 'key-input', autocomplete: 'current-password', required: true });
  const form = h('form', { class: 'card key-form', 'aria-labelledby': 'key-title',
    onsubmit: async (e) => {
      e.preventDefault();
      api.setKey(input.value.trim());
      await start();
    } },
  h('h1', { id: 'key-title' }, t('This server needs an API key')),
  h('p', {}, t('Enter a key made with `autoglm keys create`, the admin key (AUTOGLM_ADMIN_KEY) or the key given to `autoglm serve --api-key`. It is kept in this tab only (sessionStorage) and sent as a Bearer token.')),
  message ? note('error', message) : null,
  h('div', { class: 'field' }, h('label', { for: 'key-input' }, t('API key')), input),
  h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary' }, t('Use this key')),
    api.getKey() ? h('button', { type: 'button', onclick: async () => { api.setKey(''); await start(); } }, t('Forget the key')) : null));
  return form;
}

export const ctx = {
  get session() { return state.session; },
  api,
  refresh: () => start(),
  needs(what) {
    // A page's requirement that this key or server lacks: a sentence saying what to do.
    const s = state.session;
    if (what === 'admin' && !s.caller.admin) {
      return s.gateway && !s.admin_key_configured
        ? t('This needs the admin key, and the server has none: start it with AUTOGLM_ADMIN_KEY set, then enter that key here.')
        : t('This needs the admin key: enter it with the key button at the top.');
    }
    if (what === 'deploy' && !s.caller.deploy) {
      if (s.gateway && !s.admin_key_configured) return t('Launching, stopping and swapping need the admin key, and the server has none: restart it with AUTOGLM_ADMIN_KEY=... set, then enter that key here.');
      return s.gateway ? t('Launching, stopping and swapping need the admin key: enter it with the key button at the top.')
        : t('Launching, stopping and swapping need the server\'s --api-key, or a browser on the server\'s own machine.');
    }
    if (what === 'admin_api' && !s.caller.admin_api) {
      if (s.gateway && !s.admin_key_configured) return t('This page needs the admin key, and the server has none: restart it with AUTOGLM_ADMIN_KEY=... set, then enter that key here.');
      return s.gateway ? t('This needs the admin key: enter it with the key button at the top.')
        : t('This page needs the server\'s --api-key, or a browser on the server\'s own machine.');
    }
    if (what === 'gateway_admin' && !s.caller.gateway_admin) {
      if (!s.gateway) return t('This server runs without a gateway (--no-gateway), so there are no keys to manage: start it without --no-gateway.');
      if (!s.admin_key_configured) return t('Managing keys needs the admin key, and the server has none: restart it with AUTOGLM_ADMIN_KEY=... set, then enter that key here.');
      return t('Managing keys needs the admin key: enter it with the key button at the top.');
    }
    return null;
  },
};

async function route() {
  const id = ++state.renderId;
  if (state.cleanup) {
    try { state.cleanup(); } catch { /* a page's cleanup must not break navigation */ }
    state.cleanup = null;
  }
  drawChrome();
  const s = state.session;
  clear(main);
  if (s.key_required && !s.caller.valid) {
    main.append(keyForm(api.getKey() ? s.caller.error || t('That key was refused.') : null));
    document.getElementById('key-input').focus();
    return;
  }
  const page = currentPage();
  const section = h('section', { class: 'page', 'aria-labelledby': `h-${page.id}` });
  main.append(section);
  try {
    const mod = await page.load();
    if (id !== state.renderId) return;
    const cleanup = await mod.render(section, ctx);
    if (id !== state.renderId) { if (cleanup) cleanup(); return; }
    state.cleanup = cleanup || null;
    if (!performance.getEntriesByName('autoglm:ready').length) performance.mark('autoglm:ready'); // first page drawn
  } catch (err) {
    section.append(note('error', `${t('This page failed to load')}: ${err.message}`));
  }
}

async function start() {
  try {
    state.session = await api.session();
  } catch (err) {
    clear(main).append(note('error', `${t('Cannot reach the server')}: ${err.message}`));
    return;
  }
  await route();
}

document.getElementById('lang').addEventListener('change', (e) => { setLang(e.target.value); route(); });
document.getElementById('key-btn').addEventListener('click', () => {
  state.session = { ...state.session, key_required: true, caller: { ...state.session.caller, valid: false, error: null } };
  route();
});
window.addEventListener('hashchange', () => { if (state.session) route(); });
start();
