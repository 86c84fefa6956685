// Building the page: h() makes an element, svg() an SVG element; small formatting helpers.
// Nothing here knows about the server.

const PROPS = new Set(['value', 'checked', 'selected', 'disabled', 'indeterminate']);

function fill(el, attrs, children) {
  const later = [];
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.setAttribute('class', v);
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (PROPS.has(k)) later.push([k, v]);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  for (const [k, v] of later) el[k] = v;
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs, ...children) {
  return fill(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, children);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

let uid = 0;
export function nextId(prefix = 'id') {
  uid += 1;
  return `${prefix}-${uid}`;
}

// A labelled control: <div class="field"><label for=..>text</label> control hint</div>
export function field(labelText, control, hint) {
  if (!control.id) control.id = nextId('f');
  const hintEl = hint ? h('small', { class: 'hint', id: `${control.id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute('aria-describedby', hintEl.id);
  return h('div', { class: 'field' }, h('label', { for: control.id }, labelText), control, hintEl);
}

export function fmtNumber(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(x)) return '–';
  if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString();
  return Number(x).toFixed(digits);
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '–';
  return `${(n / 2 ** 30).toFixed(2)} GiB`;
}

export function fmtTime(ts) {
  if (!ts) return '–';
  const d = new Date(typeof ts === 'number' && ts < 1e12 ? ts * 1000 : ts);
  return Number.isNaN(d.getTime()) ? String(ts) : d.toLocaleString();
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// A table from rows of objects; columns: [[key, header, render?]]
export function table(rows, columns, caption) {
  return h('table', {},
    caption ? h('caption', {}, caption) : null,
    h('thead', {}, h('tr', {}, columns.map(([, head]) => h('th', { scope: 'col' }, head)))),
    h('tbody', {}, rows.map((row) => h('tr', {}, columns.map(([key, , render]) => {
      const v = render ? render(row[key], row) : row[key];
      return h('td', {}, v instanceof Node ? v : (v === null || v === undefined ? '–' : String(v)));
    })))));
}

// A status line (role=status): kind is ok | error | info | warn
export function note(kind, ...children) {
  return h('p', { class: `note ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, ...children);
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false; // no clipboard permission (an insecure origin, a headless browser): the text is shown anyway
  }
}
