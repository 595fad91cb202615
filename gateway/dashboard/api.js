// The gateway's public JSON/HTTP and SSE API, as any script could call it.

const KEY_STORAGE = 'kitrading.apiKey';

export function apiKey() {
  try { return localStorage.getItem(KEY_STORAGE) || ''; } catch { return ''; }
}

export function setApiKey(value) {
  try {
    if (value) localStorage.setItem(KEY_STORAGE, value); else localStorage.removeItem(KEY_STORAGE);
  } catch { /* storage blocked: keep no key */ }
}

/** An error answered by the gateway or a service: HTTP status, google.rpc code, message, fields. */
export class ApiError extends Error {
  constructor(status, body, path) {
    const message = (body && body.message) || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.code = body && typeof body.code === 'number' ? body.code : null;
    this.path = path;
    this.details = (body && body.details) || [];
    this.fields = [];
    this.reason = '';
    for (const d of this.details) {
      if (Array.isArray(d.fieldViolations)) {
        for (const v of d.fieldViolations) this.fields.push({ field: v.field, description: v.description });
      }
      if (d.reason && !this.reason) this.reason = d.reason;
    }
  }

  /** True when the service behind the route is down (503 / UNAVAILABLE). */
  get down() { return this.status === 503 || this.code === 14 || this.status === 0; }

  /** One readable line: status, the API's message, and each field it names. */
  describe() {
    const label = STATUS_TEXT[this.status] || (this.status ? `HTTP ${this.status}` : 'Network error');
    const fields = this.fields.map((f) => `${f.field}: ${f.description}`).join('; ');
    const message = fields && !this.message.includes(fields) ? `${this.message} (${fields})` : this.message;
    return `${label}: ${message}`;
  }
}

const STATUS_TEXT = {
  400: '400 Bad request', 401: '401 Unauthenticated', 403: '403 Forbidden', 404: '404 Not found',
  409: '409 Conflict', 412: '412 Failed precondition', 415: '415 Unsupported media type',
  429: '429 Too many requests', 500: '500 Internal error', 503: '503 Service unavailable',
  504: '504 Timeout',
};

function headers(extra, hasBody) {
  const h = { accept: 'application/json', ...extra };
  if (hasBody) h['content-type'] = 'application/json';
  const key = apiKey();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === '') continue;
    for (const v of Array.isArray(value) ? value : [value]) q.append(key, String(v));
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}

async function errorFrom(res, path) {
  let body = null;
  try { body = await res.json(); } catch { body = null; }
  return new ApiError(res.status, body, path);
}

/** One JSON call. `body` (an object) is sent as JSON with its content type. */
export async function call(method, path, { params, body, signal } = {}) {
  const url = path + query(params);
  let res;
  try {
    res = await fetch(url, {
      method,
      headers: headers({}, body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError(0, { message: `the gateway did not answer (${e})` }, url);
  }
  if (!res.ok) throw await errorFrom(res, url);
  const text = await res.text();
  return text ? JSON.parse(text) : {};
}

export const get = (path, params, signal) => call('GET', path, { params, signal });
export const post = (path, body, params) => call('POST', path, { body, params });
export const del = (path) => call('DELETE', path);

/**
 * A server stream over SSE (`data: <JSON>` events), read with fetch so POST bodies and API keys work.
 * Calls onEvent(message) per event; resolves when the stream ends, rejects with ApiError.
 */
export async function stream(method, path, { params, body, signal, onEvent, onOpen } = {}) {
  const url = path + query(params);
  let res;
  try {
    res = await fetch(url, {
      method,
      headers: headers({ accept: 'text/event-stream' }, body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError(0, { message: `the gateway did not answer (${e})` }, url);
  }
  if (!res.ok) throw await errorFrom(res, url);
  if (onOpen) onOpen(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const raw = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, '');
      const data = raw.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      if (!data) continue;
      let message;
      try { message = JSON.parse(data); } catch { continue; }
      // A gRPC error after the stream started arrives as a JSON status object.
      if (message && typeof message.code === 'number' && typeof message.message === 'string' && !message.event) {
        throw new ApiError(message.code === 14 ? 503 : 500, message, url);
      }
      onEvent(message);
    }
  }
}

/**
 * Keep a stream open: reconnect with backoff after it ends or fails (a gateway or service restart).
 * Returns a stop function. onState(state, error) gets 'open', 'retrying' or 'stopped'.
 */
export function keepStreaming(method, path, { params, body, onEvent, onState, minDelay = 1000, maxDelay = 5000 } = {}) {
  const controller = new AbortController();
  let delay = minDelay;
  let stopped = false;
  (async () => {
    while (!stopped) {
      try {
        await stream(method, path, {
          params: typeof params === 'function' ? params() : params,
          body,
          signal: controller.signal,
          onOpen: () => { delay = minDelay; if (onState) onState('open', null); },
          onEvent,
        });
        if (onState && !stopped) onState('retrying', null);
      } catch (e) {
        if (stopped || (e && e.name === 'AbortError')) break;
        if (onState) onState('retrying', e);
      }
      if (stopped) break;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(maxDelay, delay * 2);
    }
    if (onState) onState('stopped', null);
  })();
  return () => { stopped = true; controller.abort(); };
}

// ---- small DOM helpers shared by the panels ----

/** h('div', {class: 'x', onclick: f}, child, 'text') */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'text') el.textContent = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Show an error (ApiError or other) in `el` (an element with role=alert), or clear it with null. */
export function showError(el, error) {
  if (!el) return;
  if (!error) { el.textContent = ''; return; }
  el.textContent = error instanceof ApiError ? error.describe() : String(error.message || error);
}

/** A notice that a panel's service is down, instead of the panel's content. */
export function downNotice(service, error) {
  const text = error instanceof ApiError ? error.describe() : String(error);
  return h('p', { class: 'notice down', role: 'status', 'data-down': service },
    `The ${service} service is down or unreachable: ${text}. This part comes back when it does.`);
}

export function table(columns, rows, attrs) {
  return h('div', { class: 'scroll' }, h('table', attrs || {},
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows.map((r) => (r instanceof Node ? r : h('tr', {}, r.map((c) => (c instanceof Node && c.tagName === 'TD' ? c : h('td', {}, c)))))))));
}

export function fmt(value, digits = 4) {
  if (value === undefined || value === null || value === '') return '–';
  if (typeof value !== 'number') return String(value);
  if (!Number.isFinite(value)) return String(value);
  if (Math.abs(value) >= 1000) return value.toFixed(0);
  return Number(value.toPrecision(digits)).toString();
}

export function pct(value) {
  return value === undefined || value === null ? '–' : `${(value * 100).toFixed(1)}%`;
}

export function when(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toISOString().replace('T', ' ').slice(0, 19);
}

export function ago(iso) {
  if (!iso) return '–';
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}

export const enumName = (value, prefix) => (value || '').replace(prefix, '').toLowerCase().replace(/_/g, ' ');

/** The symbols of the Data service (cached for a few seconds). */
let symbolCache = null;
export async function symbols() {
  if (symbolCache && Date.now() - symbolCache.at < 5000) return symbolCache.value;
  const reply = await get('/api/v1/symbols', { pageSize: 500 });
  symbolCache = { at: Date.now(), value: reply.symbols || [] };
  return symbolCache.value;
}

/** A labelled <select> of the Data service's symbols (an error shown in `err` if Data is down). */
export async function symbolSelect(id, { selected, all = false, err } = {}) {
  const select = h('select', { id, name: 'symbol' });
  if (all) select.append(h('option', { value: '' }, 'All symbols'));
  try {
    for (const s of await symbols()) {
      select.append(h('option', { value: s.symbol, selected: s.symbol === selected ? true : undefined }, s.symbol));
    }
  } catch (e) {
    showError(err, e);
    if (selected) select.append(h('option', { value: selected }, selected));
  }
  return select;
}
