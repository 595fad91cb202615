// Training: start forecast / pattern / regime training (one symbol or all), live progress from the
// SSE watch streams, job history, and each model's stored versions with their metrics and rollback.

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

const active = (on) => (on ? h('span', { class: 'badge ok' }, 'active') : '');
const frame = (tf) => enumName(tf, 'TIMEFRAME_').toUpperCase();

/** Each trained model's stored versions: how to list them (as table rows) and roll back to one. */
const VERSIONS = {
  forecast: {
    perSymbol: true,
    columns: ['Version', '', 'Timeframe', 'Created', 'Steps', 'Val loss', 'NHITS MAE', 'Naive MAE'],
    async rows(symbol) {
      const [reply, perf] = await Promise.all([
        get(`/api/v1/forecast/${encodeURIComponent(symbol)}/versions`, { pageSize: 20 }),
        get('/api/v1/forecast/performance', { symbol, pageSize: 50 }).catch(() => ({ performances: [] })),
      ]);
      const byVersion = new Map((perf.performances || []).map((p) => [`${p.timeframe}/${p.modelVersion}`, p]));
      return (reply.versions || []).map((v) => {
        const p = byVersion.get(`${v.timeframe}/${v.version}`);
        const mae = (method) => { const m = p && (p.metrics || []).find((x) => x.method === method); return m ? fmt(m.mae) : '–'; };
        return { version: v.version, active: v.active,
          cells: [v.version, active(v.active), frame(v.timeframe), when(v.createTime), String(v.steps), fmt(v.valLoss),
            mae('FORECAST_METHOD_NHITS'), mae('FORECAST_METHOD_NAIVE')] };
      });
    },
    rollback: (symbol, version) => post(`/api/v1/forecast/${encodeURIComponent(symbol)}/versions:rollback`, { version }),
  },
  pattern: {
    perSymbol: false,
    columns: ['Version', '', 'Created', 'Trigger', 'Steps', 'Macro F1', 'Precision', 'Recall', 'Series'],
    async rows() {
      const reply = await get('/api/v1/patterns/model/versions', { pageSize: 20 });
      return (reply.models || []).map((m) => {
        const macro = m.macro || {};
        return { version: m.version, active: m.active,
          cells: [m.version, active(m.active), when(m.createTime), m.trigger || '', String(m.steps || 0), fmt(macro.f1, 3),
            fmt(macro.precision, 3), fmt(macro.recall, 3), h('td', { class: 'wrap' }, (m.series || []).map((x) => x.symbol).join(', '))] };
      });
    },
    rollback: (_symbol, version) => post('/api/v1/patterns/model:rollback', { version }),
  },
  regime: {
    perSymbol: true,
    columns: ['Version', '', 'Timeframe', 'Created', 'States', 'Bars', 'AUC', 'Brier', 'Base rate Brier', 'Edge'],
    async rows(symbol) {
      const reply = await get(`/api/v1/regime/${encodeURIComponent(symbol)}/model/versions`, { pageSize: 20 });
      return (reply.versions || []).map((v) => {
        const sc = v.scores || {};
        return { version: v.modelVersion, active: v.active,
          cells: [v.modelVersion, active(v.active), frame(v.timeframe), when(v.createTime), String(v.nStates || 0),
            String(v.trainingBars || 0), fmt(sc.auc, 3), fmt(sc.brier), fmt(sc.brierBase), v.edge ? 'yes' : 'no'] };
      });
    },
    rollback: (symbol, version) => post(`/api/v1/regime/${encodeURIComponent(symbol)}/model:rollback`, { version }),
  },
};

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
  const vModel = h('select', { id: 'version-model' }, Object.keys(VERSIONS).map((m) => h('option', { value: m }, m)));
  const vSym = await symbolSelect('version-symbol', { selected: 'EURUSD' });
  const vSymLabel = h('label', { for: 'version-symbol' }, 'Symbol', vSym);
  vModel.addEventListener('change', () => loadVersions());
  vSym.addEventListener('change', () => loadVersions());

  root.append(h('div', { class: 'card wide' }, h('h3', {}, 'Start a training'), form, formErr),
    h('div', { class: 'card wide' }, h('h3', {}, 'Live progress'), live),
    h('div', { class: 'grid' },
      h('div', { class: 'card wide' }, h('h3', {}, 'Job history'), history),
      h('div', { class: 'card wide' }, h('h3', {}, 'Model versions'),
        h('div', { class: 'row' }, h('label', { for: 'version-model' }, 'Model', vModel), vSymLabel), versionErr, versions)));

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
    const model = vModel.value;
    const spec = VERSIONS[model];
    vSymLabel.hidden = !spec.perSymbol;
    const symbol = spec.perSymbol ? vSym.value : '';
    if (spec.perSymbol && !symbol) return;
    try {
      const rows = await spec.rows(symbol);
      const what = spec.perSymbol ? `${model} model for ${symbol}` : `${model} model`;
      versions.replaceChildren(rows.length
        ? table([...spec.columns, ''], rows.map(({ cells, version, active }) => [...cells,
          active ? '' : h('button', { type: 'button', class: 'secondary', 'data-rollback': version, onclick: async () => {
            showError(versionErr, null);
            try { await spec.rollback(symbol, version); loadVersions(); } catch (e) { showError(versionErr, e); }
          } }, `Roll back to ${version}`)]))
        : h('p', { class: 'muted' }, `No ${what} yet: start a training above.`));
      versions.dataset.model = model;
    } catch (e) {
      versions.replaceChildren();
      if (e instanceof ApiError && e.down) versions.append(downNotice(model, e)); else showError(versionErr, e);
    }
  }

  refreshHistory();
  loadVersions();
  const timer = setInterval(refreshHistory, 10000);
  return () => { clearInterval(timer); for (const stop of [...watches.values()]) stop(); };
}
