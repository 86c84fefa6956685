// The server, over HTTP only: JSON requests with the key from sessionStorage as a Bearer token,
// OpenAI error objects turned into ApiError, and the SSE stream of /v1/chat/completions.

const KEY = 'autoglm.console.key';

export function getKey() {
  return sessionStorage.getItem(KEY) || '';
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body, message) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function headers(extra = {}) {
  const out = { ...extra };
  const key = getKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

function messageOf(status, body, statusText) {
  if (body && typeof body === 'object' && body.error) {
    return typeof body.error === 'string' ? body.error : (body.error.message || JSON.stringify(body.error));
  }
  if (body && typeof body === 'object' && body.detail) return String(body.detail);
  return `${status} ${statusText || ''}`.trim();
}

export async function request(method, path, { json, text, query, signal } = {}) {
  let url = path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
    const s = q.toString();
    if (s) url += `?${s}`;
  }
  const init = { method, headers: headers(), signal };
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (text !== undefined) {
    init.headers['Content-Type'] = 'text/plain; charset=utf-8';
    init.body = text;
  }
  const res = await fetch(url, init);
  const type = res.headers.get('content-type') || '';
  let body = null;
  if (type.includes('json')) body = await res.json().catch(() => null);
  else body = await res.text();
  if (!res.ok) throw new ApiError(res.status, body, messageOf(res.status, body, res.statusText));
  return { status: res.status, body, headers: res.headers };
}

export const get = (path, opts) => request('GET', path, opts).then((r) => r.body);
export const post = (path, json, opts = {}) => request('POST', path, { ...opts, json }).then((r) => r.body);
export const del = (path, opts) => request('DELETE', path, opts).then((r) => r.body);

export function session() {
  return get('/ui/api/session');
}

// POST a streaming chat request; onOpen(headers) once, onChunk(obj) per SSE data event.
export async function streamChat(body, { signal, onOpen, onChunk }) {
  const res = await fetch('/v1/chat/completions', {
    method: 'POST',
    headers: headers({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!res.ok) {
    const b = await res.json().catch(() => null);
    throw new ApiError(res.status, b, messageOf(res.status, b, res.statusText));
  }
  if (onOpen) onOpen(res.headers);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, '');
      const data = event.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      if (!data) continue;
      if (data === '[DONE]') return;
      const obj = JSON.parse(data);
      if (obj.error) throw new ApiError(obj.error.code || 500, obj, obj.error.message || 'stream error');
      onChunk(obj);
    }
  }
}
