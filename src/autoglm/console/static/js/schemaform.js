// A form generated from a JSON schema (pydantic's model_json_schema), editing plain data in place.
// The data holds only what the person set: a blank control removes its key, so the YAML written
// from it stays as short as a hand-written file. Every control carries data-path="models[0].quantize"
// (the key path as the server's error messages spell it) so errors can be shown at the field.
// onChange({ structural, path, value }) says which key changed and to what (undefined: removed), so
// the caller can patch that key alone in the YAML text.

import { h, nextId } from './dom.js';
import { t } from './i18n.js';

// Fields shown before "More settings", per schema title; the others are folded away.
const PRIMARY = {
  ModelConfig: ['name', 'source', 'aliases', 'quantize', 'device', 'replicas', 'max_model_len', 'max_num_seqs', 'upstream'],
  ServerConfig: ['host', 'port', 'ui'],
  GatewayConfig: ['enabled', 'admin_key', 'keys', 'cache', 'capture'],
};
const OPEN_SECTIONS = new Set(['models', 'server']);

export function formatLoc(path) {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : (out ? `.${p}` : String(p));
  return out || '(top level)';
}

function plainText(s) {
  return (s || '').replace(/``([^`]*)``/g, '$1').replace(/:[a-z]+:`~?([^`]*)`/g, '$1').split('\n\n')[0];
}

export class SchemaForm {
  constructor(schema, { onChange, rootRef } = {}) {
    this.schema = schema;
    this.defs = schema.$defs || {};
    this.root = rootRef ? this.defs[rootRef] : schema;
    this.onChange = onChange || (() => {});
  }

  resolve(s) {
    let cur = s || {};
    while (cur.$ref) cur = this.defs[cur.$ref.split('/').pop()] || {};
    return cur;
  }

  unwrap(s) {
    if (s && Array.isArray(s.anyOf) && s.anyOf.length === 2 && s.anyOf.some((x) => x.type === 'null')) {
      const inner = s.anyOf.find((x) => x.type !== 'null');
      return { inner: { ...inner, default: s.default, title: s.title }, optional: true };
    }
    return { inner: s, optional: false };
  }

  // data: the object edited in place; returns the form's element
  render(data) {
    this.data = data;
    const node = { get: () => this.data, set: () => {} };
    const el = h('div', { class: 'schema-form' });
    this.objectFields(this.root, node, [], el, true);
    this.el = el;
    return el;
  }

  changed(structural = false, path = null, value = undefined) {
    this.onChange({ structural, path, value });
  }

  child(node, key, prune) {
    return {
      get: () => {
        const o = node.get();
        return o === null || o === undefined ? undefined : o[key];
      },
      set: (v) => {
        let o = node.get();
        if (o === null || o === undefined || typeof o !== 'object') {
          if (v === undefined) return;
          o = typeof key === 'number' ? [] : {};
          node.set(o);
          o = node.get();
        }
        if (v === undefined) {
          if (Array.isArray(o)) o.splice(key, 1);
          else delete o[key];
        } else o[key] = v;
        if (prune && !Array.isArray(o) && Object.keys(o).length === 0) node.set(undefined);
      },
    };
  }

  objectFields(schema, node, path, parent, top = false) {
    const s = this.resolve(schema);
    const props = Object.entries(s.properties || {});
    const required = new Set(s.required || []);
    const primary = PRIMARY[s.title];
    const main = primary ? props.filter(([k]) => primary.includes(k) || required.has(k)) : props;
    const rest = primary ? props.filter(([k]) => !main.some(([m]) => m === k)) : [];
    for (const [key, ps] of main) parent.append(this.property(key, ps, node, path, required.has(key), top));
    if (rest.length) {
      const more = h('details', { class: 'more' }, h('summary', {}, t('More settings')));
      for (const [key, ps] of rest) more.append(this.property(key, ps, node, path, required.has(key), top));
      parent.append(more);
    }
  }

  property(key, ps, parentNode, parentPath, required, top) {
    const path = [...parentPath, key];
    const { inner, optional } = this.unwrap(ps);
    const r = this.resolve(inner);
    const loc = formatLoc(path);
    if (r.type === 'object' && r.properties) {
      if (optional) return this.optionalSection(key, inner, parentNode, path);
      const node = this.child(parentNode, key, true);
      const sec = h('details', { class: 'section', 'data-path': loc, open: top ? OPEN_SECTIONS.has(key) : false },
        h('summary', {}, key), r.description ? h('p', { class: 'hint' }, plainText(r.description)) : null);
      this.objectFields(r, node, path, sec);
      return sec;
    }
    if (r.type === 'array' && r.items && (r.items.$ref || r.items.oneOf)) return this.objectList(key, r, parentNode, path);
    return this.scalarField(key, inner, r, this.child(parentNode, key, false), loc, required || (top && key === 'models'), path);
  }

  optionalSection(key, schema, parentNode, path) {
    const r = this.resolve(schema);
    const node = this.child(parentNode, key, false);
    const id = nextId('opt');
    const present = node.get() !== undefined && node.get() !== null;
    const box = h('input', { type: 'checkbox', id, checked: present, 'data-path': formatLoc(path),
      onchange: (e) => { node.set(e.target.checked ? {} : undefined); this.changed(true, path, node.get()); } });
    const sec = h('fieldset', { class: 'section optional' },
      h('legend', {}, box, h('label', { for: id }, ` ${key}`)),
      r.description ? h('p', { class: 'hint' }, plainText(r.description)) : null);
    if (present) this.objectFields(r, node, path, sec);
    return sec;
  }

  objectList(key, r, parentNode, path) {
    const node = this.child(parentNode, key, false);
    const items = node.get() || [];
    const sec = h('fieldset', { class: 'section list', 'data-path': formatLoc(path) }, h('legend', {}, key));
    const variants = r.items.oneOf ? r.items : null;
    items.forEach((item, i) => {
      const itemNode = this.child(node, i, false);
      let schema = r.items;
      if (variants) {
        const tag = variants.discriminator?.propertyName || 'type';
        const ref = variants.discriminator?.mapping?.[item?.[tag]];
        schema = ref ? { $ref: ref } : variants.oneOf[0];
      }
      const title = `${key}[${i}]${item && item.name ? ` ${item.name}` : ''}`;
      const box = h('fieldset', { class: 'item', 'data-path': formatLoc([...path, i]) },
        h('legend', {}, title,
          h('button', { type: 'button', class: 'small', 'aria-label': `${t('Remove')} ${title}`,
            onclick: () => { itemNode.set(undefined); if (!(node.get() || []).length) node.set(undefined); this.changed(true, [...path, i], undefined); } }, t('Remove'))));
      this.objectFields(schema, itemNode, [...path, i], box);
      sec.append(box);
    });
    let kind = null;
    if (variants) {
      const names = Object.keys(variants.discriminator?.mapping || {});
      kind = h('select', { 'aria-label': `${key}: ${t('type')}` }, names.map((n) => h('option', { value: n }, n)));
    }
    sec.append(h('div', { class: 'row' }, kind,
      h('button', { type: 'button', class: 'small', onclick: () => {
        const list = node.get() || [];
        const tag = variants?.discriminator?.propertyName || 'type';
        const fresh = variants ? { [tag]: kind.value } : (key === 'models' ? { name: `model-${list.length + 1}`, source: 'autoglm-demo' } : {});
        node.set([...list, fresh]);
        this.changed(true, path, node.get());
      } }, `${t('Add')} ${key}`)));
    return sec;
  }

  scalarField(key, schema, r, node, loc, required, path) {
    const value = node.get();
    const dflt = schema.default;
    const hintParts = [];
    const shownInOptions = Boolean(r.enum || r.const !== undefined || r.type === 'boolean');
    if (!shownInOptions && dflt !== undefined && dflt !== null && !(Array.isArray(dflt) && dflt.length === 0)) hintParts.push(`${t('default')}: ${JSON.stringify(dflt)}`);
    if (r.minimum !== undefined) hintParts.push(`≥ ${r.minimum}`);
    if (r.exclusiveMinimum !== undefined) hintParts.push(`> ${r.exclusiveMinimum}`);
    if (r.maximum !== undefined) hintParts.push(`≤ ${r.maximum}`);
    let control;
    const set = (v) => { node.set(v); this.changed(false, path, v); };
    const enumValues = r.enum || (r.const !== undefined ? [r.const] : null);
    if (enumValues) {
      control = h('select', { onchange: (e) => set(e.target.value === '' ? undefined : e.target.value) },
        required && r.const === undefined ? null : h('option', { value: '' }, dflt !== undefined && dflt !== null ? `(${t('default')}: ${dflt})` : `(${t('unset')})`),
        enumValues.map((v) => h('option', { value: v }, v)),
        value !== undefined && value !== null && !enumValues.includes(value) ? h('option', { value }, `${value} (${t('not allowed')})`) : null);
      control.value = value ?? (required && r.const !== undefined ? r.const : '');
    } else if (r.type === 'boolean') {
      control = h('select', { onchange: (e) => set(e.target.value === '' ? undefined : e.target.value === 'true') },
        h('option', { value: '' }, dflt === undefined || dflt === null ? `(${t('unset')})` : `(${t('default')}: ${dflt})`),
        h('option', { value: 'true' }, 'true'), h('option', { value: 'false' }, 'false'));
      control.value = value === undefined || value === null ? '' : String(value);
    } else if (r.type === 'integer' || r.type === 'number') {
      const min = r.minimum ?? (r.exclusiveMinimum !== undefined ? r.exclusiveMinimum + (r.type === 'integer' ? 1 : 0) : undefined);
      control = h('input', { type: 'number', inputmode: r.type === 'integer' ? 'numeric' : 'decimal', step: r.type === 'integer' ? '1' : 'any',
        min, max: r.maximum, placeholder: dflt ?? '', value: value ?? '',
        oninput: (e) => set(e.target.value === '' ? undefined : Number(e.target.value)) });
    } else if (r.type === 'string') {
      const secret = r.format === 'password' || r.writeOnly;
      control = h('input', { type: secret ? 'password' : 'text', autocomplete: secret ? 'new-password' : 'off',
        placeholder: typeof dflt === 'string' ? dflt : '', value: value ?? '',
        oninput: (e) => set(e.target.value === '' ? undefined : e.target.value) });
      if (secret) hintParts.push(t('a secret: prefer ${VAR} references'));
    } else if (r.type === 'array' && r.items && r.items.enum) {
      const chosen = new Set(Array.isArray(value) ? value : []);
      const boxes = r.items.enum.map((v) => {
        const id = nextId('c');
        return h('span', { class: 'check' }, h('input', { type: 'checkbox', id, value: v, checked: chosen.has(v),
          onchange: () => {
            const picked = boxes.map((b) => b.querySelector('input')).filter((b) => b.checked).map((b) => b.value);
            set(picked.length ? picked : undefined);
          } }), h('label', { for: id }, v));
      });
      return h('fieldset', { class: 'field checks', 'data-path': loc }, h('legend', {}, key), boxes,
        hintParts.length ? h('small', { class: 'hint' }, hintParts.join(' · ')) : null);
    } else if (r.type === 'array') {
      const numeric = r.items && (r.items.type === 'number' || r.items.type === 'integer');
      hintParts.unshift(t('comma-separated'));
      control = h('input', { type: 'text', value: Array.isArray(value) ? value.join(', ') : (value ?? ''),
        oninput: (e) => {
          const parts = e.target.value.split(',').map((x) => x.trim()).filter(Boolean);
          set(parts.length ? parts.map((x) => (numeric && !Number.isNaN(Number(x)) ? Number(x) : x)) : undefined);
        } });
    } else if (r.type === 'object' && r.additionalProperties) {
      const numeric = ['number', 'integer'].includes(r.additionalProperties.type);
      hintParts.unshift(t('one "key: value" per line'));
      control = h('textarea', { rows: 3, value: value && typeof value === 'object' ? Object.entries(value).map(([k, v]) => `${k}: ${v}`).join('\n') : '',
        oninput: (e) => {
          const out = {};
          for (const line of e.target.value.split('\n')) {
            const m = /^\s*([^:]+?)\s*:\s*(.*?)\s*$/.exec(line);
            if (m) out[m[1]] = numeric && m[2] !== '' && !Number.isNaN(Number(m[2])) ? Number(m[2]) : m[2];
          }
          set(Object.keys(out).length ? out : undefined);
        } });
    } else {
      hintParts.unshift(t('a YAML/JSON value'));
      control = h('input', { type: 'text', value: value === undefined ? '' : JSON.stringify(value),
        oninput: (e) => {
          const txt = e.target.value.trim();
          if (txt === '') return set(undefined);
          try { return set(JSON.parse(txt)); } catch { return set(txt); }
        } });
    }
    control.setAttribute('data-path', loc);
    control.setAttribute('name', loc);
    if (required) control.setAttribute('aria-required', 'true');
    control.id = nextId('f');
    const hint = hintParts.length ? h('small', { class: 'hint', id: `${control.id}-hint` }, hintParts.join(' · ')) : null;
    if (hint) control.setAttribute('aria-describedby', hint.id);
    return h('div', { class: 'field' }, h('label', { for: control.id }, key, required ? ' *' : ''), control, hint);
  }

  clearErrors() {
    if (!this.el) return;
    for (const e of this.el.querySelectorAll('.field-error')) e.remove();
    for (const e of this.el.querySelectorAll('[aria-invalid]')) e.removeAttribute('aria-invalid');
  }

  // Mark the control of `key` (or its nearest enclosing section) with `message`; returns the element.
  markError(key, message) {
    this.clearErrors();
    if (!this.el || !key) return null;
    let k = key;
    let target = null;
    while (k && !target) {
      target = this.el.querySelector(`[data-path="${CSS.escape(k)}"]`);
      if (!target) k = k.replace(/(\.[^.[\]]+|\[\d+\])$/, '') === k ? '' : k.replace(/(\.[^.[\]]+|\[\d+\])$/, '');
    }
    if (!target) return null;
    for (let p = target.parentElement; p; p = p.parentElement) if (p.tagName === 'DETAILS') p.open = true;
    target.setAttribute('aria-invalid', 'true');
    const err = h('p', { class: 'field-error', id: nextId('err') }, message);
    const host = target.closest('.field') || target;
    if (host.tagName === 'FIELDSET' || host.tagName === 'DETAILS') host.insertBefore(err, host.children[1] || null);
    else host.append(err);
    if (target.matches('input, select, textarea')) {
      target.setAttribute('aria-describedby', `${target.getAttribute('aria-describedby') || ''} ${err.id}`.trim());
    }
    return target;
  }
}
