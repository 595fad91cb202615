// Overview: every service's health live from the watchdog's WatchStatus stream, recent alerts,
// running training jobs, links to the API docs.

import { ago, apiKey, enumName, get, h, keepStreaming, setApiKey, showError, table } from './api.js';

export const TRAINERS = [
  { model: 'forecast', service: 'forecast', jobs: '/api/v1/forecast/training/jobs' },
  { model: 'pattern', service: 'pattern', jobs: '/api/v1/patterns/training/jobs' },
  { model: 'regime', service: 'regime', jobs: '/api/v1/regime/training/jobs' },
];

const ACTIVE = new Set(['JOB_STATE_RUNNING', 'JOB_STATE_QUEUED']);

export function statusBadge(status) {
  const name = (status || 'TARGET_STATUS_UNKNOWN').replace('TARGET_STATUS_', '');
  if (name === 'UNSPECIFIED') return h('span', { class: 'badge', 'data-status': name }, 'not applicable');
  const cls = name === 'SERVING' ? 'ok' : name === 'UNKNOWN' ? 'warn' : 'down';
  const text = name === 'SERVING' ? 'up' : name === 'UNKNOWN' ? 'unknown' : 'down';
  return h('span', { class: `badge ${cls}`, 'data-status': name }, `${text} · ${name.toLowerCase().replace('_', ' ')}`);
}

export function alertRows(alerts) {
  return alerts.map((a) => [
    ago(a.createTime), a.target, enumName(a.kind, 'ALERT_KIND_'), enumName(a.severity, 'ALERT_SEVERITY_'),
    h('td', { class: 'wrap' }, a.message), enumName(a.deliveryState, 'DELIVERY_STATE_'),
  ]);
}

export async function mount(root, { config }) {
  const targets = new Map();
  const services = config.services;
  const health = h('div', { id: 'health' });
  const streamState = h('p', { class: 'small muted', id: 'health-source', role: 'status' }, 'Connecting to the watchdog…');
  const alertsBox = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const jobsBox = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  let alerts = [];
  let fallback = null;

  const docs = h('ul', { class: 'plain' },
    h('li', {}, h('a', { href: '/docs' }, 'All services (API index)')),
    services.filter((s) => s.documented).map((s) =>
      h('li', {}, h('a', { href: `/${s.prefix}/docs` }, `${s.name} API docs`), ' · ',
        h('a', { href: `/${s.prefix}/openapi.json` }, 'openapi.json'))));

  const keyErr = h('p', { class: 'err', role: 'alert' });
  const keyInput = h('input', { id: 'api-key', type: 'password', autocomplete: 'off', value: apiKey() });
  const keyForm = h('form', { onsubmit: (ev) => { ev.preventDefault(); setApiKey(keyInput.value.trim()); showError(keyErr, null); keyErr.textContent = ''; } },
    h('label', { for: 'api-key' }, 'API key (only if this gateway requires one)', keyInput),
    h('button', { type: 'submit', class: 'secondary' }, 'Save key'));

  root.append(h('div', { class: 'grid' },
    h('div', { class: 'card wide' }, h('h3', {}, 'Services'), streamState, health),
    h('div', { class: 'card' }, h('h3', {}, 'Running training jobs'), jobsBox),
    h('div', { class: 'card' }, h('h3', {}, 'Recent alerts'), alertsBox, h('p', {}, h('a', { href: '#/alerts' }, 'All alerts'))),
    h('div', { class: 'card' }, h('h3', {}, 'API docs'), docs, keyForm, keyErr)));

  function renderHealth() {
    const rows = [];
    const named = new Set();
    for (const s of services) {
      named.add(s.name);
      const t = targets.get(s.name);
      rows.push(h('tr', { 'data-service': s.name, 'data-status': t ? t.status.replace('TARGET_STATUS_', '') : 'UNKNOWN' },
        h('th', { scope: 'row' }, s.name), h('td', {}, statusBadge(t && t.status)),
        h('td', {}, t && t.latencyMs ? `${t.latencyMs.toFixed(1)} ms` : '–'),
        h('td', {}, t ? ago(t.lastChangeTime) : '–'),
        h('td', { class: 'wrap small' }, t && t.status !== 'TARGET_STATUS_SERVING' ? t.lastError || t.detail : (t && t.detail) || s.title),
        h('td', {}, s.documented ? h('a', { href: `/${s.prefix}/docs` }, 'docs') : '–')));
    }
    for (const [name, t] of targets) {
      if (named.has(name)) continue;
      rows.push(h('tr', { 'data-service': name, 'data-status': t.status.replace('TARGET_STATUS_', '') },
        h('th', { scope: 'row' }, name), h('td', {}, statusBadge(t.status)),
        h('td', {}, t.latencyMs ? `${t.latencyMs.toFixed(1)} ms` : '–'), h('td', {}, ago(t.lastChangeTime)),
        h('td', { class: 'wrap small' }, t.status !== 'TARGET_STATUS_SERVING' ? t.lastError || t.detail : t.detail || enumName(t.kind, 'TARGET_KIND_')),
        h('td', {}, '–')));
    }
    health.replaceChildren(table(['Service', 'Status', 'Latency', 'Changed', 'Detail', 'API'], rows, { id: 'health-table' }));
  }

  function renderAlerts() {
    alertsBox.replaceChildren(alerts.length
      ? h('ul', { class: 'plain small', id: 'recent-alerts' }, alerts.slice(0, 8).map((a) => h('li', {},
        h('span', { class: `badge ${a.kind === 'ALERT_KIND_DOWN' ? 'down' : a.kind === 'ALERT_KIND_RECOVERED' ? 'ok' : ''}` }, enumName(a.kind, 'ALERT_KIND_')),
        ` ${a.target} · ${ago(a.createTime)} · ${a.message}`)))
      : h('p', { class: 'muted' }, 'No alerts yet.'));
  }

  // While the watchdog is down: the gateway's own health checks, polled.
  async function pollGateway() {
    for (const s of services) {
      let status = 'TARGET_STATUS_UNREACHABLE';
      try {
        const res = await fetch(`/${s.prefix}/health`, { cache: 'no-store' });
        status = res.ok ? 'TARGET_STATUS_SERVING' : 'TARGET_STATUS_NOT_SERVING';
      } catch { /* gateway down too */ }
      const old = targets.get(s.name) || {};
      const changed = old.status !== status;
      targets.set(s.name, { ...old, name: s.name, status, latencyMs: 0,
        lastChangeTime: changed ? new Date().toISOString() : old.lastChangeTime,
        lastError: status === 'TARGET_STATUS_SERVING' ? '' : 'gateway health check failed', detail: 'gateway health check' });
    }
    renderHealth();
  }

  function startFallback() {
    if (fallback) return;
    pollGateway();
    fallback = setInterval(pollGateway, 2000);
  }
  function stopFallback() { if (fallback) { clearInterval(fallback); fallback = null; } }

  renderHealth();
  const stopStream = keepStreaming('GET', '/watchdog/api/v1/status:watch', {
    onEvent: (m) => {
      if (m.snapshot) {
        targets.clear();
        for (const t of m.snapshot.targets || []) targets.set(t.name, t);
        // The watchdog does not check itself: its stream answering is its health.
        if (!targets.has('watchdog')) {
          targets.set('watchdog', { name: 'watchdog', status: 'TARGET_STATUS_SERVING', lastChangeTime: m.snapshot.checkTime, detail: 'answering this status stream' });
        }
        streamState.textContent = `Live from the watchdog (checks every ${m.snapshot.checkIntervalSeconds} s${m.snapshot.telegramEnabled ? ', Telegram on' : ''}).`;
        stopFallback();
      } else if (m.change && m.change.target) {
        targets.set(m.change.target.name, m.change.target);
      } else if (m.alert) {
        alerts.unshift(m.alert);
        renderAlerts();
      }
      renderHealth();
    },
    onState: (state, error) => {
      if (state === 'retrying') {
        streamState.textContent = `The watchdog stream is not available${error ? ` (${error.describe ? error.describe() : error})` : ''}: reconnecting; meanwhile the gateway's own health checks are shown.`;
        startFallback();
      }
    },
  });

  (async () => {
    try {
      alerts = (await get('/watchdog/api/v1/alerts/history', { pageSize: 8 })).alerts || [];
      renderAlerts();
    } catch (e) {
      alertsBox.replaceChildren(h('p', { class: 'notice down', role: 'status' }, `Alerts unavailable: ${e.describe ? e.describe() : e}`));
    }
  })();

  async function refreshJobs() {
    const rows = [];
    const problems = [];
    await Promise.all(TRAINERS.map(async (t) => {
      try {
        const reply = await get(t.jobs, { pageSize: 20 });
        for (const job of reply.jobs || []) {
          if (!ACTIVE.has(job.state)) continue;
          const progress = job.maxSteps ? Math.round((100 * job.step) / job.maxSteps) : 0;
          rows.push([t.model, h('span', { class: 'mono' }, job.jobId), enumName(job.state, 'JOB_STATE_'),
            job.currentSymbol || (job.symbols || []).map((s) => s.symbol).join(', ') || 'all',
            h('progress', { max: 100, value: progress, 'aria-label': `${t.model} job ${job.jobId} progress` }), `${progress}%`]);
        }
      } catch (e) {
        problems.push(h('p', { class: 'small notice down' }, `${t.model}: ${e.describe ? e.describe() : e}`));
      }
    }));
    jobsBox.replaceChildren(
      rows.length ? table(['Model', 'Job', 'State', 'Symbol', 'Progress', ''], rows) : h('p', { class: 'muted' }, 'No training running.'),
      ...problems, h('p', {}, h('a', { href: '#/training' }, 'Start or follow a training')));
  }
  refreshJobs();
  const jobsTimer = setInterval(refreshJobs, 4000);

  return () => { stopStream(); stopFallback(); clearInterval(jobsTimer); };
}
