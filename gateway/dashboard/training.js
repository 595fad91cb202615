// Training: start forecast / pattern / regime training (one symbol or all), live progress from the
// SSE watch streams, job history, forecast model versions with their metrics and rollback.

import { ApiError, downNotice, enumName, fmt, get, h, keepStreaming, post, showError, symbolSelect, table, when } from './api.js';
import { TRAINERS } from './overview.js';

const ACTIVE = new Set(['JOB_STATE_RUNNING', 'JOB_STATE_QUEUED']);
const BASE = { forecast: '/api/v1/forecast/training/jobs', pattern: '/api/v1/patterns/training/jobs', regime: '/api/v1/regime/training/jobs' };

function start(model, symbol, { force, maxSteps }) {
  const steps = maxSteps ? Number(maxSteps) : undefined;
  if (model === 'forecast') {
    return symbol
      ? post(`/api/v1/forecast/${encodeURIComponent(symbol)}/train`, undefined, { background: true, force, maxSteps: steps })
      : post('/api/v1/forecast/train-all', undefined, { background: true, force, maxSteps: steps });
  }
  if (model === 'pattern') return post('/api/v1/patterns/train', { symbols: symbol ? [symbol] : [], background: true, force, maxSteps: steps });
  return post('/api/v1/regime/train', { symbols: symbol ? [symbol] : [], background: true, force });
}

export async function mount(root) {
  const watches = new Map();
  const live = h('div', { id: 'live-jobs' });
  const formErr = h('p', { class: 'err', role: 'alert', id: 'train-error' });
  const modelSel = h('select', { id: 'train-model' }, TRAINERS.map((t) => h('option', { value: t.model }, t.model)));
  const symSel = await symbolSelect('train-symbol', { all: true, err: formErr });
  const steps = h('input', { id: 'train-steps', type: 'number', min: 0, placeholder: 'default', inputmode: 'numeric' });
  const force = h('input', { id: 'train-force', type: 'checkbox' });
  const button = h('button', { type: 'submit', id: 'train-start' }, 'Start training');
  const form = h('form', { id: 'train-form', onsubmit: async (ev) => {
    ev.preventDefault();
    showError(formErr, null);
    button.disabled = true;
    try {
      const reply = await start(modelSel.value, symSel.value, { force: force.checked, maxSteps: steps.value });
      if (reply.job) watch(modelSel.value, reply.job);
      refreshHistory();
    } catch (e) { showError(formErr, e); } finally { button.disabled = false; }
  } },
  h('label', { for: 'train-model' }, 'Model', modelSel),
  h('label', { for: 'train-symbol' }, 'Symbol', symSel),
  h('label', { for: 'train-steps' }, 'Max steps (pattern; forecast trains its configured steps)', steps),
  h('label', { class: 'check', for: 'train-force' }, force, 'Force (retrain even if up to date)'),
  button);

  const history = h('div', { id: 'job-history' });
  const versions = h('div', { id: 'versions' });
  const versionErr = h('p', { class: 'err', role: 'alert', id: 'version-error' });
  const vSym = await symbolSelect('version-symbol', { selected: 'EURUSD' });
  vSym.addEventListener('change', () => loadVersions());

  root.append(h('div', { class: 'card wide' }, h('h3', {}, 'Start a training'), form, formErr),
    h('div', { class: 'card wide' }, h('h3', {}, 'Live progress'), live),
    h('div', { class: 'grid' },
      h('div', { class: 'card wide' }, h('h3', {}, 'Job history'), history),
      h('div', { class: 'card wide' }, h('h3', {}, 'Forecast model versions'),
        h('div', { class: 'row' }, h('label', { for: 'version-symbol' }, 'Symbol', vSym)), versionErr, versions)));

  function watch(model, job) {
    if (watches.has(job.jobId)) return;
    const bar = h('progress', { max: 100, value: 0, 'aria-label': `${model} job ${job.jobId} progress`, 'data-job': job.jobId });
    const text = h('span', { class: 'small', 'data-progress-text': job.jobId });
    const card = h('div', { class: 'card', 'data-job-card': job.jobId },
      h('p', {}, h('strong', {}, model), ' job ', h('span', { class: 'mono' }, job.jobId)), bar, text);
    live.prepend(card);
    let state = job;
    let shown = 0;
    let lastStep = null;
    const render = (step) => {
      if (step) lastStep = step;
      const done = step ? step.jobStep : state.step;
      const max = step ? step.jobMaxSteps : state.maxSteps;
      const value = max ? Math.min(100, (100 * done) / max) : 0;
      // Snapshots and transitions can lag the step events: the bar never goes back while running.
      shown = state.state === 'JOB_STATE_SUCCEEDED' ? 100 : ACTIVE.has(state.state) ? Math.max(shown, value) : value;
      bar.value = shown;
      bar.dataset.value = String(bar.value);
      step = step || (ACTIVE.has(state.state) ? lastStep : null);
      const eta = step && step.etaSeconds ? `, ETA ${fmt(step.etaSeconds, 2)} s` : '';
      const loss = step && step.trainLoss ? `, loss ${fmt(step.trainLoss)}` : '';
      text.textContent = `${enumName(state.state, 'JOB_STATE_')} · ${step ? `${step.key || step.symbol} ` : ''}${done}/${max} steps${loss}${eta}${state.error ? ` · ${state.error}` : ''}`;
      card.dataset.state = state.state;
    };
    render(null);
    const stop = keepStreaming('GET', `${BASE[model]}/${encodeURIComponent(job.jobId)}:watch`, {
      onEvent: (m) => {
        const e = m.event || {};
        if (e.snapshot) state = e.snapshot;
        if (e.result) state = e.result;
        render(e.step || null);
        if (e.result || (e.snapshot && !ACTIVE.has(e.snapshot.state))) { stopWatch(); refreshHistory(); }
      },
      onState: (s, error) => { if (error) text.textContent = `stream: ${error.describe ? error.describe() : error}; reconnecting…`; },
    });
    const stopWatch = () => { stop(); watches.delete(job.jobId); };
    watches.set(job.jobId, stopWatch);
  }

  async function refreshHistory() {
    const parts = [];
    await Promise.all(TRAINERS.map(async (t) => {
      try {
        const reply = await get(BASE[t.model], { pageSize: 10 });
        const jobs = reply.jobs || [];
        for (const j of jobs) if (ACTIVE.has(j.state)) watch(t.model, j);
        parts.push([t.model, jobs.length
          ? table(['Job', 'State', 'Trigger', 'Symbols', 'Steps', 'Created', 'Ended', 'Error', ''], jobs.map((j) => [
            h('span', { class: 'mono' }, j.jobId), enumName(j.state, 'JOB_STATE_'), enumName(j.trigger, 'TRAINING_TRIGGER_'),
            h('td', { class: 'wrap' }, (j.symbols || []).map((s) => s.key || s.symbol).join(', ') || 'all'), `${j.step}/${j.maxSteps}`,
            when(j.createTime), when(j.endTime), h('td', { class: 'wrap small' }, j.error),
            ACTIVE.has(j.state) ? h('button', { type: 'button', class: 'danger', onclick: async () => {
              try { await post(`${BASE[t.model]}/${encodeURIComponent(j.jobId)}:cancel`, {}); refreshHistory(); } catch (e) { showError(formErr, e); }
            } }, 'Cancel') : '']))
          : h('p', { class: 'muted' }, 'No jobs yet.')]);
      } catch (e) {
        parts.push([t.model, e instanceof ApiError && e.down ? downNotice(t.service, e) : h('p', { class: 'err' }, e.describe ? e.describe() : String(e))]);
      }
    }));
    parts.sort((a, b) => TRAINERS.findIndex((t) => t.model === a[0]) - TRAINERS.findIndex((t) => t.model === b[0]));
    history.replaceChildren(...parts.flatMap(([model, el]) => [h('h4', {}, model), el]));
  }

  async function loadVersions() {
    showError(versionErr, null);
    const symbol = vSym.value;
    if (!symbol) return;
    try {
      const [reply, perf] = await Promise.all([
        get(`/api/v1/forecast/${encodeURIComponent(symbol)}/versions`, { pageSize: 20 }),
        get('/api/v1/forecast/performance', { symbol, pageSize: 50 }).catch(() => ({ performances: [] })),
      ]);
      const byVersion = new Map((perf.performances || []).map((p) => [`${p.timeframe}/${p.modelVersion}`, p]));
      const rows = (reply.versions || []).map((v) => {
        const p = byVersion.get(`${v.timeframe}/${v.version}`);
        const nhits = p && (p.metrics || []).find((m) => m.method === 'FORECAST_METHOD_NHITS');
        const naive = p && (p.metrics || []).find((m) => m.method === 'FORECAST_METHOD_NAIVE');
        return [v.version, v.active ? h('span', { class: 'badge ok' }, 'active') : '', enumName(v.timeframe, 'TIMEFRAME_').toUpperCase(), when(v.createTime),
          String(v.steps), fmt(v.valLoss), nhits ? fmt(nhits.mae) : '–', naive ? fmt(naive.mae) : '–',
          v.active ? '' : h('button', { type: 'button', class: 'secondary', 'data-rollback': v.version, onclick: async () => {
            showError(versionErr, null);
            try { await post(`/api/v1/forecast/${encodeURIComponent(symbol)}/versions:rollback`, { version: v.version, timeframe: v.timeframe }); loadVersions(); } catch (e) { showError(versionErr, e); }
          } }, `Roll back to ${v.version}`)];
      });
      versions.replaceChildren(rows.length
        ? table(['Version', '', 'Timeframe', 'Created', 'Steps', 'Val loss', 'NHITS MAE', 'Naive MAE', ''], rows)
        : h('p', { class: 'muted' }, `No forecast model for ${symbol} yet: start a training above.`));
    } catch (e) {
      versions.replaceChildren();
      if (e instanceof ApiError && e.down) versions.append(downNotice('forecast', e)); else showError(versionErr, e);
    }
  }

  refreshHistory();
  loadVersions();
  const timer = setInterval(refreshHistory, 10000);
  return () => { clearInterval(timer); for (const stop of [...watches.values()]) stop(); };
}
