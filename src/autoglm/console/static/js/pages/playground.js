// Playground: streaming chat over POST /v1/chat/completions (SSE) with the sampling parameters,
// JSON mode and tools; model "auto" shows its routing decision (x-autoglm-route); thumbs post to
// /v1/feedback; every answer shows its token counts and timings.

import { h, clear, field, note, fmtNumber } from '../dom.js';
import { t } from '../i18n.js';

// Kept across re-renders (a language switch, a visit to another page and back).
const chat = { messages: [], settings: null };
const EXAMPLE_TOOLS = JSON.stringify([{ type: 'function', function: { name: 'get_weather', description: 'Weather in a city',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }], null, 2);

function defaults(session) {
  const first = (session.models[0] || {}).id || '';
  return { model: first, system: '', temperature: 0.7, max_tokens: 64, stop: '', seed: '', json: false, tools: '', tool_choice: 'auto' };
}

function requestBody(s) {
  const body = { model: s.model, messages: [], max_tokens: Number(s.max_tokens) || 64, temperature: Number(s.temperature) };
  if (s.system.trim()) body.messages.push({ role: 'system', content: s.system });
  for (const m of chat.messages) {
    if (m.role === 'user') body.messages.push({ role: 'user', content: m.content });
    else if (m.role === 'assistant' && !m.error) {
      const msg = { role: 'assistant', content: m.content || '' };
      if (m.tool_calls && m.tool_calls.length) msg.tool_calls = m.tool_calls;
      body.messages.push(msg);
    }
  }
  const stops = s.stop.split(',').map((x) => x.trim()).filter(Boolean);
  if (stops.length) body.stop = stops;
  if (s.seed !== '' && s.seed !== null) body.seed = Number(s.seed);
  if (s.json) body.response_format = { type: 'json_object' };
  if (s.tools.trim()) {
    body.tools = JSON.parse(s.tools);
    body.tool_choice = s.tool_choice;
  }
  return body;
}

function parseRoute(header) {
  if (!header) return null;
  const out = {};
  for (const part of header.split(/[;,]\s*/)) {
    const [k, v] = part.split('=');
    if (k && v !== undefined) out[k.trim()] = v.trim();
  }
  return Object.keys(out).length ? out : { raw: header };
}

export async function render(root, ctx) {
  const session = ctx.session;
  if (!chat.settings || !session.models.some((m) => m.id === chat.settings.model) && !session.auto_aliases.includes(chat.settings.model)) {
    chat.settings = { ...defaults(session), ...(chat.settings || {}), model: defaults(session).model };
  }
  const s = chat.settings;
  let controller = null;

  root.append(h('h1', { id: 'h-playground' }, t('Playground')));
  const demo = session.models.filter((m) => m.demo).map((m) => m.id);
  if (demo.length) {
    root.append(note('warn', t('{models}: a demo model with random weights. Its text is random noise: use it to try the API and the console; serve a real model for real answers.', { models: demo.join(', ') })));
  }
  if (!session.models.length) {
    root.append(note('info', t('This key may use no model. Ask for a key that allows one.')));
    return null;
  }

  // -- settings
  const modelSel = h('select', { id: 'pg-model', onchange: (e) => { s.model = e.target.value; } },
    session.models.map((m) => h('option', { value: m.id }, m.id)),
    session.auto_aliases.map((a) => h('option', { value: a }, `${a} (${t('routed by task')})`)));
  modelSel.value = s.model;
  const num = (key, attrs) => h('input', { type: 'number', value: s[key], ...attrs, oninput: (e) => { s[key] = e.target.value; } });
  const temp = num('temperature', { min: 0, max: 2, step: 0.1 });
  const maxTok = num('max_tokens', { min: 1, max: 4096, step: 1 });
  const seed = num('seed', { min: 0, step: 1, placeholder: t('random') });
  const stop = h('input', { type: 'text', value: s.stop, placeholder: '###, END', oninput: (e) => { s.stop = e.target.value; } });
  const jsonBox = h('input', { type: 'checkbox', id: 'pg-json', checked: s.json, onchange: (e) => { s.json = e.target.checked; } });
  const system = h('textarea', { rows: 2, value: s.system, oninput: (e) => { s.system = e.target.value; } });
  const tools = h('textarea', { rows: 4, value: s.tools, class: 'mono', placeholder: '[{"type": "function", ...}]', oninput: (e) => { s.tools = e.target.value; } });
  const toolChoice = h('select', { onchange: (e) => { s.tool_choice = e.target.value; } },
    ['auto', 'none', 'required'].map((v) => h('option', { value: v }, v)));
  toolChoice.value = s.tool_choice;
  const settings = h('form', { class: 'card settings', 'aria-label': t('Parameters'), onsubmit: (e) => e.preventDefault() },
    h('h2', {}, t('Parameters')),
    field(t('Model'), modelSel, session.auto_aliases.length ? t('"{a}" picks a model by the task of each request', { a: session.auto_aliases[0] }) : null),
    field(t('Temperature'), temp),
    field(t('Max tokens'), maxTok),
    field(t('Stop sequences'), stop, t('comma-separated')),
    field(t('Seed'), seed, t('same seed, same answer')),
    h('div', { class: 'field inline' }, jsonBox, h('label', { for: 'pg-json' }, t('JSON mode (response_format json_object)'))),
    field(t('System prompt'), system),
    h('details', { open: Boolean(s.tools) }, h('summary', {}, t('Tools')),
      field(t('Tools (JSON array)'), tools),
      field(t('Tool choice'), toolChoice),
      h('button', { type: 'button', class: 'small', onclick: () => { s.tools = EXAMPLE_TOOLS; tools.value = EXAMPLE_TOOLS; } }, t('Insert an example tool'))));

  // -- conversation
  const log = h('div', { class: 'chat-log', role: 'log', 'aria-live': 'polite', 'aria-label': t('Conversation'), id: 'chat-log' });
  const input = h('textarea', { id: 'chat-input', rows: 3, placeholder: t('Ask something (Enter sends, Shift+Enter for a new line)') });
  const send = h('button', { type: 'submit', class: 'primary', id: 'chat-send' }, t('Send'));
  const stopBtn = h('button', { type: 'button', disabled: true, onclick: () => controller && controller.abort() }, t('Stop'));
  const clearBtn = h('button', { type: 'button', onclick: () => { chat.messages = []; drawLog(); } }, t('Clear'));
  const status = h('p', { class: 'muted', role: 'status', id: 'chat-status' });

  function feedbackButtons(m) {
    if (!m.id) return null;
    if (!session.features.feedback) return null;
    if (!session.features.capture) {
      return h('small', { class: 'muted' }, t('Thumbs need capture on: set gateway.capture.enabled: true in the deploy file.'));
    }
    const sent = m.feedback;
    const rate = async (thumbs) => {
      try {
        await ctx.api.post('/v1/feedback', { id: m.id, choice_index: 0, thumbs });
        m.feedback = thumbs;
        m.feedbackError = null;
      } catch (err) {
        m.feedbackError = err.message;
      }
      drawLog();
    };
    return h('span', { class: 'thumbs' },
      h('button', { type: 'button', class: `small${sent === 'up' ? ' on' : ''}`, 'aria-pressed': String(sent === 'up'), 'aria-label': t('Good answer'), onclick: () => rate('up') }, `▲ ${t('good')}`),
      h('button', { type: 'button', class: `small${sent === 'down' ? ' on' : ''}`, 'aria-pressed': String(sent === 'down'), 'aria-label': t('Bad answer'), onclick: () => rate('down') }, `▼ ${t('bad')}`),
      sent ? h('small', { class: 'ok-text' }, t('feedback stored')) : null,
      m.feedbackError ? h('small', { class: 'error-text' }, m.feedbackError) : null);
  }

  function metaLine(m) {
    const parts = [];
    if (m.model) parts.push(`${t('model')} ${m.model}`);
    if (m.usage) parts.push(`${t('tokens')} ${m.usage.prompt_tokens} + ${m.usage.completion_tokens}`);
    if (m.ttft !== undefined) parts.push(`${t('first token')} ${fmtNumber(m.ttft, 0)} ms`);
    if (m.total !== undefined) parts.push(`${t('total')} ${fmtNumber(m.total, 0)} ms`);
    if (m.usage && m.total && m.ttft !== undefined && m.usage.completion_tokens > 1) {
      parts.push(`${fmtNumber(((m.usage.completion_tokens - 1) * 1000) / Math.max(1, m.total - m.ttft), 1)} ${t('tokens/s')}`);
    }
    if (m.finish) parts.push(`${t('finish')}: ${m.finish}`);
    return parts.join(' · ');
  }

  function drawMessage(m) {
    const body = h('div', { class: 'msg-body' });
    if (m.content) body.append(h('p', { class: 'msg-text' }, m.content));
    for (const call of m.tool_calls || []) {
      body.append(h('pre', { class: 'tool-call' }, `${call.function.name}(${call.function.arguments})`));
    }
    if (m.error) body.append(note('error', m.error));
    const route = m.route ? h('p', { class: 'route' }, h('strong', {}, t('Routing decision')), ': ',
      Object.entries(m.route).map(([k, v]) => `${k}=${v}`).join(', ')) : null;
    return h('article', { class: `msg ${m.role}`, 'aria-label': m.role === 'user' ? t('You') : t('Assistant'), 'data-chunks': m.chunks },
      h('header', {}, h('strong', {}, m.role === 'user' ? t('You') : t('Assistant')),
        m.role === 'assistant' ? h('small', { class: 'meta' }, metaLine(m)) : null),
      body, route, m.role === 'assistant' && m.done ? feedbackButtons(m) : null);
  }

  function drawLog() {
    clear(log);
    if (!chat.messages.length) log.append(h('p', { class: 'muted' }, t('No messages yet.')));
    for (const m of chat.messages) log.append(drawMessage(m));
    log.scrollTop = log.scrollHeight;
  }

  async function ask(e) {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    let body;
    chat.messages.push({ role: 'user', content: text });
    try {
      body = requestBody(s);
    } catch (err) {
      chat.messages.pop();
      status.textContent = `${t('Tools are not valid JSON')}: ${err.message}`;
      return;
    }
    input.value = '';
    const m = { role: 'assistant', content: '', tool_calls: [], done: false };
    chat.messages.push(m);
    drawLog();
    const live = log.lastElementChild;
    const textEl = () => live.querySelector('.msg-text') || live.querySelector('.msg-body').appendChild(h('p', { class: 'msg-text' }));
    controller = new AbortController();
    send.disabled = true;
    stopBtn.disabled = false;
    status.textContent = t('Generating…');
    const t0 = performance.now();
    try {
      await ctx.api.streamChat(body, {
        signal: controller.signal,
        onOpen: (headers) => { m.route = parseRoute(headers.get('x-autoglm-route')); },
        onChunk: (chunk) => {
          m.chunks = (m.chunks || 0) + 1;
          if (chunk.id) m.id = chunk.id;
          if (chunk.model) m.model = chunk.model;
          if (chunk.usage) m.usage = chunk.usage;
          for (const c of chunk.choices || []) {
            const d = c.delta || {};
            if (d.content) {
              if (m.ttft === undefined) m.ttft = performance.now() - t0;
              m.content += d.content;
              textEl().textContent = m.content;
            }
            for (const tc of d.tool_calls || []) {
              if (m.ttft === undefined) m.ttft = performance.now() - t0;
              const cur = m.tool_calls[tc.index] || (m.tool_calls[tc.index] = { id: tc.id, type: 'function', function: { name: '', arguments: '' } });
              if (tc.id) cur.id = tc.id;
              if (tc.function?.name) cur.function.name += tc.function.name;
              if (tc.function?.arguments) cur.function.arguments += tc.function.arguments;
            }
            if (c.finish_reason) m.finish = c.finish_reason;
          }
        },
      });
    } catch (err) {
      m.error = err.name === 'AbortError' ? t('Stopped.') : err.message;
    } finally {
      m.total = performance.now() - t0;
      m.done = true;
      controller = null;
      send.disabled = false;
      stopBtn.disabled = true;
      status.textContent = m.error ? '' : t('Done.');
      drawLog();
    }
  }

  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) ask(e);
  });
  const composer = h('form', { class: 'composer', onsubmit: ask, 'aria-label': t('Message') },
    h('label', { for: 'chat-input', class: 'visually-hidden' }, t('Message')), input,
    h('div', { class: 'row' }, send, stopBtn, clearBtn), status);
  root.append(h('div', { class: 'playground' }, settings, h('div', { class: 'card chat' }, log, composer)));
  drawLog();
  return () => controller && controller.abort();
}
