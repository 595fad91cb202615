// Models: each model's table against its baseline (forecast, regime signal scoring, patterns).

import { ApiError, downNotice, enumName, fmt, get, h, pct, table } from './api.js';

const problem = (service, e) => (e instanceof ApiError && e.down ? downNotice(service, e) : h('p', { class: 'err', role: 'alert' }, e.describe ? e.describe() : String(e)));

async function forecastCard(box) {
  try {
    const reply = await get('/api/v1/forecast/performance', { pageSize: 100 });
    const perfs = reply.performances || [];
    if (!perfs.length) { box.append(h('p', { class: 'muted' }, 'No forecast model evaluated yet: train one in the Training panel.')); return; }
    for (const p of perfs) {
      box.append(h('h4', {}, `${p.symbol} ${enumName(p.timeframe, 'TIMEFRAME_').toUpperCase()} ${p.modelVersion} · horizon ${p.horizon} · ${p.samples} test points ${p.testStartTime} – ${p.testEndTime}`),
        table(['Method', 'MAE', 'RMSE', 'MASE', 'Direction', '80% coverage', '95% coverage', 'DM p vs NHITS'], (p.metrics || []).map((m) => {
          const cov = (level) => (m.intervalCoverage || []).find((c) => c.level === level);
          return [enumName(m.method, 'FORECAST_METHOD_'), fmt(m.mae), fmt(m.rmse), fmt(m.mase, 3), pct(m.directionalAccuracy),
            cov(80) ? pct(cov(80).coverage) : '–', cov(95) ? pct(cov(95).coverage) : '–', m.dmPValueVsNhits === undefined ? '–' : fmt(m.dmPValueVsNhits, 3)];
        })));
    }
  } catch (e) { box.append(problem('forecast', e)); }
}

async function regimeCard(box) {
  try {
    const status = await get('/api/v1/regime/status');
    const rows = [];
    await Promise.all((status.models || []).map(async (m) => {
      try {
        const r = await get(`/api/v1/regime/${encodeURIComponent(m.symbol)}/model`, { timeframe: m.timeframe });
        const ev = (r.scorer && r.scorer.evaluation && r.scorer.evaluation.calibrated) || {};
        rows.push([m.symbol, enumName(m.timeframe, 'TIMEFRAME_').toUpperCase(), m.modelVersion, String(ev.samples ?? '–'), fmt(ev.auc, 3),
          `${fmt(ev.brier, 4)} vs ${fmt(ev.brierBase, 4)}`, fmt(ev.brierSkill, 3), `${fmt(ev.logLoss, 4)} vs ${fmt(ev.logLossBase, 4)}`, m.edge ? 'yes' : 'no']);
      } catch (e) { rows.push([m.symbol, '', '', h('td', { class: 'wrap' }, e.describe ? e.describe() : String(e))]); }
    }));
    rows.sort((a, b) => String(a[0]).localeCompare(String(b[0])));
    box.append(h('p', { class: 'small muted' }, 'LightGBM signal scorer on held-out bars, calibrated, against the base rate (skill > 0 beats it).'),
      rows.length ? table(['Symbol', 'Timeframe', 'Version', 'Samples', 'AUC', 'Brier vs base', 'Brier skill', 'Log loss vs base', 'Edge'], rows) : h('p', { class: 'muted' }, 'No regime model yet.'));
  } catch (e) { box.append(problem('regime', e)); }
}

async function patternCard(box) {
  try {
    const reply = await get('/api/v1/patterns/model');
    if (!reply.model) { box.append(h('p', { class: 'muted' }, reply.statusMessage || 'No TCN model yet.')); return; }
    const m = reply.model;
    const ft = (f) => (f ? `${pct(f.hitRate)} n=${f.samples} (base ${pct(f.baseRate)})` : '–');
    box.append(h('p', { class: 'small muted' }, `TCN ${m.version}, ${m.steps} steps on ${m.device}, window ${m.windowBars} bars. Follow-through: share of detections the price moved the pattern's way within the horizon, against the base rate.`),
      table(['Pattern', 'Support', 'Precision', 'Recall', 'F1', 'PR-AUC', 'TCN follow-through', 'Rules follow-through'], (m.classes || []).map((c) => [
        c.patternType.replace(/_/g, ' '), String(c.support), fmt(c.precision, 3), fmt(c.recall, 3), fmt(c.f1, 3), fmt(c.prAuc, 3), ft(c.tcnFollowThrough), ft(c.rulesFollowThrough)])));
  } catch (e) { box.append(problem('pattern', e)); }
}

export async function mount(root) {
  const f = h('div', { id: 'models-forecast' });
  const r = h('div', { id: 'models-regime' });
  const p = h('div', { id: 'models-pattern' });
  root.append(h('div', { class: 'card wide' }, h('h3', {}, 'Forecast (NHITS against its baselines)'), f),
    h('div', { class: 'card wide' }, h('h3', {}, 'Regime signal scoring'), r),
    h('div', { class: 'card wide' }, h('h3', {}, 'Patterns'), p));
  await Promise.all([forecastCard(f), regimeCard(r), patternCard(p)]);
  return undefined;
}
