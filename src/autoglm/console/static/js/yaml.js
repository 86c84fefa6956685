// Plain data -> YAML text, for the form's side of the configuration page, and patchYAML(): one form
// edit applied to the YAML text in place (only the lines of that key change), so comments, blank lines
// and the order of keys survive. The other direction (YAML -> data) is the server's: POST
// /admin/validate/deploy returns what it parsed.

const PLAIN = /^[A-Za-z_./][A-Za-z0-9_./@+-]*( [A-Za-z0-9_./@+()-]+)*$/;
const RESERVED = /^(true|false|yes|no|on|off|null|~|y|n)$/i;

export function scalar(v) {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') return Number.isFinite(v) ? String(v) : JSON.stringify(String(v));
  const s = String(v);
  if (PLAIN.test(s) && !RESERVED.test(s) && !/^[-+.]?\d/.test(s) && !s.includes(': ') && !s.includes(' #')) return s;
  return JSON.stringify(s); // a JSON string is a valid YAML double-quoted scalar
}

function isScalar(v) {
  return v === null || typeof v !== 'object';
}

function emit(v, indent, out) {
  const pad = ' '.repeat(indent);
  if (Array.isArray(v)) {
    for (const item of v) {
      if (isScalar(item)) out.push(`${pad}- ${scalar(item)}`);
      else if (Array.isArray(item)) {
        out.push(`${pad}-`);
        emit(item, indent + 2, out);
      } else {
        const sub = [];
        emit(item, indent + 2, sub);
        if (sub.length === 0) out.push(`${pad}- {}`);
        else out.push(`${pad}- ${sub[0].slice(indent + 2)}`, ...sub.slice(1));
      }
    }
    return;
  }
  for (const [k, val] of Object.entries(v)) {
    const key = scalar(k);
    if (isScalar(val)) out.push(`${pad}${key}: ${scalar(val)}`);
    else if (Array.isArray(val) && (val.length === 0 || val.every(isScalar))) {
      out.push(`${pad}${key}: [${val.map(scalar).join(', ')}]`);
    } else if (!Array.isArray(val) && Object.keys(val).length === 0) out.push(`${pad}${key}: {}`);
    else {
      out.push(`${pad}${key}:`);
      emit(val, indent + 2, out);
    }
  }
}

export function toYAML(data) {
  const out = [];
  emit(data || {}, 0, out);
  return `${out.join('\n')}\n`;
}

// -- editing YAML text in place -------------------------------------------------------------------
// A line scanner for block YAML (what deploy files are): maps, sequences, "- key: value" items,
// scalars and one-line flow values ([a, b], {k: v}) with trailing comments. Anything else it does
// not understand (a multi-line flow value, anchors, several documents) makes patchYAML return null,
// and the caller rewrites the file from the data instead.

const KEY = /^("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^\s#'"\-?:,[\]{}][^#]*?|-[^\s#][^#]*?)\s*:(?=\s|$)/;

function unquote(k) {
  if (k.startsWith('"')) { try { return JSON.parse(k); } catch { return k; } }
  if (k.startsWith("'")) return k.slice(1, -1).replace(/''/g, "'");
  return k;
}

// [value, comment]: the comment (with the spaces before it) starts at a # after a space, outside quotes.
export function splitComment(rest) {
  let q = null;
  for (let i = 0; i < rest.length; i++) {
    const c = rest[i];
    if (q) { if (c === q) q = (q === "'" && rest[i + 1] === "'") ? (i++, q) : null; else if (c === '\\' && q === '"') i++; continue; }
    if (c === '"' || c === "'") q = c;
    else if (c === '#' && (i === 0 || /\s/.test(rest[i - 1]))) {
      let j = i;
      while (j > 0 && /\s/.test(rest[j - 1])) j--;
      return [rest.slice(0, j), rest.slice(j)];
    }
  }
  return [rest.replace(/\s+$/, ''), rest.slice(rest.replace(/\s+$/, '').length)];
}

const pathKey = (path) => JSON.stringify(path);
const isContent = (line) => line.trim() !== '' && !line.trim().startsWith('#');
const indentOf = (line) => line.length - line.trimStart().length;

// { entries: Map(pathKey -> {path, line, col, valueCol, value, comment, end, item}), ok }
export function indexYAML(text) {
  const lines = text.split('\n');
  const entries = new Map();
  const stack = [{ col: -1, path: [], kind: 'map', next: 0 }]; // containers; col = column of their children
  let pending = null; // a "key:" with no value yet: a map or a sequence follows, more indented
  let ok = true;
  for (let i = 0; i < lines.length && ok; i++) {
    const line = lines[i];
    if (!isContent(line)) continue;
    if (/^(---|\.\.\.)\s*$/.test(line) || /^\s*[&*!%]/.test(line)) { ok = i === 0 && line.startsWith('---'); continue; }
    let col = indentOf(line);
    let rest = line.slice(col);
    while (stack.length > 1 && stack[stack.length - 1].col > col) stack.pop();
    let top = stack[stack.length - 1];
    const isItem = rest === '-' || rest.startsWith('- ');
    if (pending && (col > pending.col || (isItem && col === pending.col))) {
      top = { col, path: pending.path, kind: isItem ? 'seq' : 'map', next: 0 };
      stack.push(top);
    } else if (top.col !== col && !(top.col === -1 && stack.length === 1)) {
      if (!(top.kind === 'map' && stack.length === 1)) { ok = false; break; }
    }
    if (stack.length === 1 && top.col === -1) top.col = col;
    pending = null;
    let parent = top;
    let item = false;
    if (isItem) {
      if (parent.kind !== 'seq') { ok = false; break; }
      const path = [...parent.path, parent.next++];
      const after = rest === '-' ? '' : rest.slice(2);
      const inner = after.length - after.trimStart().length;
      entries.set(pathKey(path), { path, line: i, col, valueCol: col + 2 + inner, item: true, value: after, comment: '', end: i + 1 });
      if (!after.trim() || after.trim().startsWith('#')) { pending = { col, path }; continue; }
      const kcol = col + 2 + inner;
      if (!KEY.test(after.trimStart())) { // "- scalar"
        const [value, comment] = splitComment(after.trimStart());
        Object.assign(entries.get(pathKey(path)), { value, comment });
        continue;
      }
      const frame = { col: kcol, path, kind: 'map', next: 0 };
      stack.push(frame);
      parent = frame;
      col = kcol;
      rest = after.trimStart();
      item = true;
    }
    if (parent.kind !== 'map') { ok = false; break; }
    const m = KEY.exec(rest);
    if (!m) { ok = false; break; }
    const path = [...parent.path, unquote(m[1].trim())];
    const afterKey = rest.slice(m[0].length);
    const [value, comment] = splitComment(afterKey);
    const valueCol = col + m[0].length + (value.length - value.trimStart().length);
    const e = { path, line: i, col, valueCol, value: value.trim(), comment, end: i + 1, first: item };
    entries.set(pathKey(path), e);
    const v = value.trim();
    if (v === '') pending = { col, path };
    else if (/^[|>]/.test(v)) { // a block scalar: its lines are more indented than the key
      while (i + 1 < lines.length && (lines[i + 1].trim() === '' || indentOf(lines[i + 1]) > col)) i++;
    } else if (/^[[{]/.test(v) && !balanced(v)) ok = false;
  }
  if (!ok) return { entries, lines, ok };
  // each entry ends after the last content line of its subtree (comments and blank lines after it stay put)
  const list = [...entries.values()].sort((a, b) => a.line - b.line);
  for (const e of list) {
    let last = e.line;
    for (let j = e.line + 1; j < lines.length; j++) {
      if (!isContent(lines[j])) continue;
      const c = indentOf(lines[j]);
      const seqBelow = !e.item && c === e.col && lines[j].slice(c).match(/^-( |$)/) && e.value === '';
      if (c > e.col || seqBelow) last = j; else break;
    }
    e.end = last + 1;
  }
  return { entries, lines, ok };
}

function balanced(v) {
  let depth = 0;
  let q = null;
  for (const c of splitComment(v)[0]) {
    if (q) { if (c === q) q = null; continue; }
    if (c === '"' || c === "'") q = c;
    else if (c === '[' || c === '{') depth++;
    else if (c === ']' || c === '}') depth--;
  }
  return depth === 0;
}

// A value on one line: a scalar, [a, b] or {k: v} of scalars; null when it needs block lines.
function inline(v) {
  if (isScalar(v)) return scalar(v);
  if (Array.isArray(v)) return v.every(isScalar) ? `[${v.map(scalar).join(', ')}]` : null;
  const items = Object.entries(v);
  return items.every(([, x]) => isScalar(x)) ? `{${items.map(([k, x]) => `${scalar(k)}: ${scalar(x)}`).join(', ')}}` : null;
}

function block(v, indent) { // v as the lines of a block under a key, at `indent`
  const out = [];
  emit(v, indent, out);
  return out;
}

function children(entries, path) {
  const want = path.length + 1;
  const prefix = pathKey(path).slice(0, -1);
  return [...entries.values()].filter((e) => e.path.length === want && pathKey(e.path).startsWith(path.length ? `${prefix},` : '['));
}

// The YAML text with the key at `path` (["models", 0, "quantize"]) set to `value` (undefined: removed),
// every other line as it was; null when the text is not one this can edit in place.
export function patchYAML(text, path, value) {
  let { entries, lines, ok } = indexYAML(text);
  if (!ok || !path.length) return null;
  const e = entries.get(pathKey(path));
  if (value === undefined) {
    if (!e) return text;
    if (e.first) return null; // the first key of a "- key: value" item: its dash would go with it
    lines.splice(e.line, e.end - e.line);
    // a mapping left empty goes too (the form prunes it from the data the same way)
    for (let p = path.slice(0, -1); p.length && typeof p[p.length - 1] !== 'number'; p = p.slice(0, -1)) {
      ({ entries, ok } = indexYAML(lines.join('\n')));
      const parent = entries.get(pathKey(p));
      if (!ok || !parent || parent.value !== '' || children(entries, p).length || parent.first) break;
      lines.splice(parent.line, parent.end - parent.line);
    }
    return lines.join('\n');
  }
  if (e) {
    const kids = children(entries, path);
    if (Array.isArray(value) && kids.length && kids.every((k) => k.item) && value.length === kids.length + 1) {
      const lastKid = kids[kids.length - 1]; // one item added at the end of a block sequence
      const add = block([value[value.length - 1]], lastKid.col);
      lines.splice(e.end, 0, ...add);
      return lines.join('\n');
    }
    const one = inline(value);
    if (one === null) {
      if (e.value !== '' || kids.length) return null;
      lines.splice(e.line + 1, 0, ...block(value, (e.item ? e.valueCol : e.col) + 2));
      return lines.join('\n');
    }
    if (e.item && !KEY.test(e.value)) { // "- scalar"
      lines[e.line] = `${lines[e.line].slice(0, e.valueCol)}${one}${e.comment}`;
      return lines.join('\n');
    }
    if (e.item) return null;
    const head = lines[e.line].slice(0, e.valueCol).replace(/\s*$/, '');
    lines[e.line] = `${head} ${one}${e.comment}`;
    lines.splice(e.line + 1, e.end - e.line - 1); // a block value replaced by a one-line one
    return lines.join('\n');
  }
  // a new key: under the nearest parent that exists, at its children's column
  let depth = path.length - 1;
  while (depth > 0 && !entries.get(pathKey(path.slice(0, depth)))) depth--;
  if (path.slice(depth).some((p) => typeof p === 'number')) return null; // a new list item: not a key
  const parentPath = path.slice(0, depth);
  const wrap = (rest, v) => (rest.length === 1 ? { [rest[0]]: v } : { [rest[0]]: wrap(rest.slice(1), v) });
  const addition = wrap(path.slice(depth), value);
  if (!parentPath.length) {
    const top = children(entries, []);
    const col = top.length ? top[0].col : 0;
    const lastLine = top.length ? Math.max(...top.map((t) => t.end)) : lines.length;
    const at = top.length ? lastLine : lines.length - (lines[lines.length - 1] === '' ? 1 : 0);
    lines.splice(at, 0, ...block(addition, col));
    return lines.join('\n');
  }
  const parent = entries.get(pathKey(parentPath));
  const kids = children(entries, parentPath);
  if (kids.length) {
    if (kids.some((k) => k.item)) return null;
    lines.splice(parent.end, 0, ...block(addition, kids[0].col));
    return lines.join('\n');
  }
  if (!['', '{}', 'null', '~'].includes(parent.value) || parent.item) return null;
  const head = lines[parent.line].slice(0, parent.valueCol).replace(/\s*$/, '');
  lines[parent.line] = `${head}${parent.comment}`;
  lines.splice(parent.line + 1, 0, ...block(addition, parent.col + 2));
  return lines.join('\n');
}
