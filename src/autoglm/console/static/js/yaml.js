// Plain data -> YAML text, for the form's side of the configuration page. The other direction
// (YAML -> data) is the server's: POST /admin/validate/deploy returns what it parsed.

const PLAIN = /^[A-Za-z_./][A-Za-z0-9_./@+-]*( [A-Za-z0-9_./@+()-]+)*$/;
const RESERVED = /^(true|false|yes|no|on|off|null|~|y|n)$/i;

function scalar(v) {
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
