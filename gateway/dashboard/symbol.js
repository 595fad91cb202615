// Symbol: candles + volume (Data), forecast with 80/95% bands (forecast), regimes shaded (regime),
// patterns with their key points (pattern), a timeframe switch, new candles on Data events.

import { ApiError, downNotice, enumName, fmt, get, h, keepStreaming, pct, showError, symbols, table } from './api.js';

const REGIME_COLORS = {
  REGIME_BULL_TREND: 'rgba(38,166,91,0.13)',
  REGIME_BEAR_TREND: 'rgba(220,53,69,0.13)',
  REGIME_RANGE: 'rgba(120,130,150,0.12)',
  REGIME_HIGH_VOLATILITY: 'rgba(255,152,0,0.18)',
};
const BAR_LIMIT = 5000;

const ts = (iso) => Math.floor(Date.parse(iso) / 1000);

function candleData(candles) {
  return candles.map((c) => ({ time: ts(c.time), open: c.open, high: c.high, low: c.low, close: c.close }));
}
// The chart's first load reads the column form (about 3x less to transcode and parse than one object
// per bar, docs/benchmarks.md); rows keep the shape the rest of the page uses.
function rowsFromColumns(cols) {
  const times = (cols && cols.timesUnixMicros) || [];
  return times.map((us, i) => ({
    time: new Date(Number(us) / 1000).toISOString(),
    open: cols.opens[i], high: cols.highs[i], low: cols.lows[i], close: cols.closes[i], volume: cols.volumes[i],
  }));
}
function volumeData(candles) {
  return candles.map((c) => ({ time: ts(c.time), value: c.volume || 0, color: c.close >= c.open ? 'rgba(38,166,154,0.45)' : 'rgba(239,83,80,0.45)' }));
}

export async function mount(root, { args }) {
  const err = h('p', { class: 'err', role: 'alert', id: 'symbol-error' });
  let all = [];
  try { all = await symbols(); } catch (e) { root.append(downNotice('data', e)); return undefined; }
  if (!all.length) { root.append(h('p', { class: 'notice' }, 'No symbols yet: add one with POST /api/v1/symbols or `kitrading symbols add`.')); return undefined; }
  const asked = (args[0] || '').toUpperCase();
  const chosen = all.find((s) => s.symbol === asked) || all.find((s) => s.symbol === 'EURUSD') || all[0];
  if (asked && chosen.symbol !== asked) {
    // A symbol in the address that Data does not list: its own answer (404 naming it), then the default.
    get(`/api/v1/symbols/${encodeURIComponent(asked)}`)
      .then(() => {}, (e) => { showError(err, e); err.append(` Showing ${chosen.symbol} instead.`); });
  }
  const series = (chosen.series || []).filter((s) => Number(s.count) > 0);
  const timeframe = series.some((s) => s.timeframe === args[1]) ? args[1] : (series[0] || {}).timeframe;

  const symbolSel = h('select', { id: 'symbol-select' }, all.map((s) => h('option', { value: s.symbol, selected: s === chosen ? true : undefined }, `${s.symbol} · ${s.displayName || ''}`)));
  const tfSel = h('select', { id: 'timeframe-select' }, series.map((s) => h('option', { value: s.timeframe, selected: s.timeframe === timeframe ? true : undefined }, `${enumName(s.timeframe, 'TIMEFRAME_').toUpperCase()} (${s.count} bars)`)));
  const horizon = h('input', { id: 'horizon', type: 'number', min: 1, value: 24, inputmode: 'numeric' });
  const go = () => { location.hash = `#/symbol/${encodeURIComponent(symbolSel.value)}/${tfSel.value && symbolSel.value === chosen.symbol ? tfSel.value : ''}`; };
  symbolSel.addEventListener('change', go);
  tfSel.addEventListener('change', go);
  const forecastErr = h('p', { class: 'err', role: 'alert', id: 'forecast-error' });
  const controls = h('form', { onsubmit: (ev) => { ev.preventDefault(); loadForecast(); } },
    h('label', { for: 'symbol-select' }, 'Symbol', symbolSel),
    h('label', { for: 'timeframe-select' }, 'Timeframe', tfSel),
    h('label', { for: 'horizon' }, 'Forecast horizon (bars)', horizon),
    h('button', { type: 'submit' }, 'Update forecast'));

  const chartBox = h('div', { class: 'chart', id: 'chart', role: 'img', 'aria-label': `${chosen.symbol} candlestick chart with volume, forecast bands, regimes and patterns` });
  const legend = h('div', { class: 'legend' },
    h('span', {}, h('span', { class: 'sw', style: 'background:#1f5fbf' }), 'forecast'),
    h('span', {}, h('span', { class: 'sw', style: 'background:rgba(31,95,191,.55)' }), '80% band'),
    h('span', {}, h('span', { class: 'sw', style: 'background:rgba(31,95,191,.25)' }), '95% band'),
    Object.entries(REGIME_COLORS).map(([k, c]) => h('span', {}, h('span', { class: 'sw', style: `background:${c.replace(/0\.1\d\)/, '0.5)')}` }), enumName(k, 'REGIME_'))));
  const status = h('p', { class: 'small muted', id: 'symbol-status', role: 'status' });
  const forecastBox = h('div', { id: 'forecast-box' });
  const regimeBox = h('div', { id: 'regime-box' });
  const patternBox = h('div', { id: 'pattern-box' });
  root.append(controls, err, h('div', { class: 'card wide' }, chartBox, legend, status),
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h3', {}, 'Forecast'), forecastErr, forecastBox),
      h('div', { class: 'card' }, h('h3', {}, 'Regime'), regimeBox),
      h('div', { class: 'card wide' }, h('h3', {}, 'Patterns'), patternBox)));

  if (!timeframe) { status.textContent = `${chosen.symbol} has no candles yet.`; return undefined; }
  const LW = window.LightweightCharts;
  if (!LW) { chartBox.replaceChildren(h('p', { class: 'notice' }, 'The chart library (lightweight-charts) is not installed on this gateway; the tables below still work.')); }

  let chart = null; let candleSeries = null; let volumeSeries = null; let regimeSeries = null;
  let forecastLines = [];
  let candles = [];
  let regimeSegments = [];
  let markers = [];
  if (LW) {
    chart = LW.createChart(chartBox, {
      autoSize: true,
      layout: { background: { type: 'solid', color: '#ffffff' }, textColor: '#1d2430' },
      grid: { vertLines: { color: '#eef1f6' }, horzLines: { color: '#eef1f6' } },
      timeScale: { timeVisible: timeframe !== 'TIMEFRAME_D1' && timeframe !== 'TIMEFRAME_W1', rightOffset: 30 },
      rightPriceScale: { scaleMargins: { top: 0.08, bottom: 0.22 } },
      crosshair: { mode: 0 },
    });
    regimeSeries = chart.addHistogramSeries({ priceScaleId: 'regime', priceLineVisible: false, lastValueVisible: false, base: 0 });
    chart.priceScale('regime').applyOptions({ scaleMargins: { top: 0, bottom: 0 }, visible: false });
    volumeSeries = chart.addHistogramSeries({ priceScaleId: 'volume', priceFormat: { type: 'volume' }, priceLineVisible: false, lastValueVisible: false });
    chart.priceScale('volume').applyOptions({ scaleMargins: { top: 0.82, bottom: 0 }, visible: false });
    candleSeries = chart.addCandlestickSeries({ upColor: '#26a69a', downColor: '#ef5350', borderVisible: false, wickUpColor: '#26a69a', wickDownColor: '#ef5350' });
  }

  function paintRegimes() {
    if (!regimeSeries || !candles.length) return;
    const data = [];
    let i = 0;
    for (const c of candles) {
      const t = ts(c.time);
      while (i < regimeSegments.length && regimeSegments[i].end < t) i++;
      const seg = regimeSegments[i];
      if (seg && seg.start <= t) data.push({ time: t, value: 1, color: REGIME_COLORS[seg.regime] || 'rgba(0,0,0,0)' });
    }
    regimeSeries.setData(data);
  }

  async function loadCandles() {
    const reply = await get(`/api/v1/symbols/${encodeURIComponent(chosen.symbol)}/candles`, { timeframe, pageSize: BAR_LIMIT, descending: true, view: 'CANDLE_VIEW_COLUMNS' });
    candles = rowsFromColumns(reply.columns).reverse();
    if (candleSeries) {
      candleSeries.setData(candleData(candles));
      volumeSeries.setData(volumeData(candles));
      chart.timeScale().setVisibleLogicalRange({ from: Math.max(0, candles.length - 300), to: candles.length + 30 });
    }
    status.textContent = `${candles.length} ${enumName(timeframe, 'TIMEFRAME_').toUpperCase()} bars of ${chosen.symbol}, last ${candles.length ? candles[candles.length - 1].time : '–'}. Drag to pan, scroll to zoom.`;
  }

  async function loadForecast() {
    showError(forecastErr, null);
    forecastBox.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    try {
      const reply = await get(`/api/v1/forecast/${encodeURIComponent(chosen.symbol)}`, { horizon: horizon.value, timeframe });
      const f = reply.forecast;
      const points = f.points || [];
      const band = (p, level, side) => { const iv = (p.intervals || []).find((x) => x.level === level); return iv ? iv[side] : undefined; };
      if (chart) {
        for (const s of forecastLines) chart.removeSeries(s);
        forecastLines = [];
        const anchor = candles.length ? [{ time: ts(candles[candles.length - 1].time), value: candles[candles.length - 1].close }] : [];
        const line = (color, style, width, pick) => {
          const s = chart.addLineSeries({ color, lineStyle: style, lineWidth: width, priceLineVisible: false, lastValueVisible: false, crosshairMarkerVisible: false });
          const data = points.map((p) => ({ time: ts(p.time), value: pick(p) })).filter((d) => d.value !== undefined);
          s.setData([...anchor.filter((a) => !data.length || a.time < data[0].time), ...data]);
          forecastLines.push(s);
        };
        line('rgba(31,95,191,0.35)', 2, 1, (p) => band(p, 95, 'upper'));
        line('rgba(31,95,191,0.35)', 2, 1, (p) => band(p, 95, 'lower'));
        line('rgba(31,95,191,0.65)', 1, 1, (p) => band(p, 80, 'upper'));
        line('rgba(31,95,191,0.65)', 1, 1, (p) => band(p, 80, 'lower'));
        line('#1f5fbf', 0, 2, (p) => p.value);
      }
      const last = points[points.length - 1] || {};
      forecastBox.replaceChildren(
        h('p', {}, `${enumName(f.method, 'FORECAST_METHOD_').toUpperCase()} ${f.modelVersion || ''}, ${f.horizon} bars after ${f.lastCandleTime}.`),
        table(['', 'value', '80% band', '95% band'], [[`at ${last.time || '–'}`, fmt(last.value, 6),
          `${fmt(band(last, 80, 'lower'), 6)} – ${fmt(band(last, 80, 'upper'), 6)}`,
          `${fmt(band(last, 95, 'lower'), 6)} – ${fmt(band(last, 95, 'upper'), 6)}`]]));
    } catch (e) {
      forecastBox.replaceChildren();
      if (e instanceof ApiError && e.down) forecastBox.append(downNotice('forecast', e));
      else showError(forecastErr, e);
    }
  }

  async function loadRegime() {
    try {
      const reply = await get(`/api/v1/regime/${encodeURIComponent(chosen.symbol)}`, { timeframe, lookback: Math.min(candles.length || 1000, 5000) });
      const s = reply.state;
      regimeSegments = (s.history || []).map((seg) => ({ regime: seg.regime, start: ts(seg.startTime), end: ts(seg.endTime) }));
      paintRegimes();
      regimeBox.replaceChildren(
        h('p', {}, 'Now: ', h('strong', {}, enumName(s.regime, 'REGIME_')), ` (${pct(s.confidence)}) since ${s.sinceTime}.`),
        table(['Regime', 'Probability'], (s.probabilities || []).map((p) => [enumName(p.regime, 'REGIME_'), pct(p.probability)])),
        h('p', { class: 'small muted' }, `${regimeSegments.length} regime segments shaded behind the price.`));
    } catch (e) {
      regimeBox.replaceChildren(e instanceof ApiError && e.down ? downNotice('regime', e) : h('p', { class: 'err', role: 'alert' }, e.describe ? e.describe() : String(e)));
    }
  }

  async function loadPatterns() {
    try {
      const reply = await get(`/api/v1/patterns/${encodeURIComponent(chosen.symbol)}`, { timeframe });
      const patterns = (reply.detection && reply.detection.patterns) || [];
      const first = candles.length ? ts(candles[0].time) : 0;
      markers = [];
      // On the chart: the 20 most recent patterns (all of them in the table below).
      const shown = patterns.slice().sort((a, b) => ts(b.endTime) - ts(a.endTime)).slice(0, 20);
      for (const p of shown) {
        const bullish = p.direction === 'PATTERN_DIRECTION_BULLISH';
        const color = bullish ? '#1b7f3b' : p.direction === 'PATTERN_DIRECTION_BEARISH' ? '#b3261e' : '#6b4fbb';
        const points = p.keyPoints || [];
        points.forEach((k, i) => {
          const t = ts(k.time);
          if (t < first) return;
          const lastPoint = i === points.length - 1;
          markers.push({ time: t, position: bullish ? 'belowBar' : 'aboveBar', color, shape: lastPoint ? (bullish ? 'arrowUp' : 'arrowDown') : 'circle',
            size: lastPoint ? 1 : 0.5, text: lastPoint ? p.patternType.replace(/_/g, ' ') : '' });
        });
      }
      markers.sort((a, b) => a.time - b.time);
      if (candleSeries) candleSeries.setMarkers(markers);
      patternBox.replaceChildren(patterns.length
        ? table(['Pattern', 'Direction', 'Confidence', 'From', 'To', 'Engine', 'Key points', 'Follow-through hit rate (vs base)'],
          patterns.map((p) => [p.patternType.replace(/_/g, ' '), enumName(p.direction, 'PATTERN_DIRECTION_'), pct(p.confidence), p.startTime, p.endTime,
            enumName(p.engine, 'PATTERN_ENGINE_'), h('td', { class: 'wrap small' }, (p.keyPoints || []).map((k) => `${k.role} ${fmt(k.price, 6)}`).join(', ')),
            p.followThrough ? `${pct(p.followThrough.hitRate)} [${pct(p.followThrough.hitRateLow)}, ${pct(p.followThrough.hitRateHigh)}] n=${p.followThrough.samples} (base ${pct(p.followThrough.baseRate)})` : '–']))
        : h('p', { class: 'muted' }, 'No patterns detected in the recent bars.'));
    } catch (e) {
      patternBox.replaceChildren(e instanceof ApiError && e.down ? downNotice('pattern', e) : h('p', { class: 'err', role: 'alert' }, e.describe ? e.describe() : String(e)));
    }
  }

  try {
    await loadCandles();
  } catch (e) {
    if (e instanceof ApiError && e.down) chartBox.replaceChildren(downNotice('data', e)); else showError(err, e);
  }
  await Promise.all([loadForecast(), loadRegime(), loadPatterns()]);

  // New candles: the Data event stream says when bars were ingested for this symbol.
  let lastEvent = 0;
  const stop = keepStreaming('GET', '/api/v1/events:watch', {
    params: () => ({ symbols: chosen.symbol, types: 'EVENT_TYPE_CANDLES_INGESTED', afterEventId: lastEvent || undefined }),
    onEvent: async (m) => {
      const ev = m.event;
      if (!ev) return;
      lastEvent = Number(ev.eventId) || lastEvent;
      if (ev.timeframe !== timeframe || !candleSeries) return;
      const since = ev.candlesIngested && ev.candlesIngested.firstTime;
      try {
        const reply = await get(`/api/v1/symbols/${encodeURIComponent(chosen.symbol)}/candles`, { timeframe, startTime: since, pageSize: BAR_LIMIT });
        const lastTime = candles.length ? ts(candles[candles.length - 1].time) : 0;
        let added = 0;
        for (const c of reply.candles || []) {
          const t = ts(c.time);
          if (t < lastTime) continue;
          candleSeries.update(candleData([c])[0]);
          volumeSeries.update(volumeData([c])[0]);
          if (t > lastTime) { candles.push(c); added++; } else candles[candles.length - 1] = c;
        }
        status.textContent = `${candles.length} bars; ${added} new from the Data event stream at ${new Date().toISOString().slice(11, 19)}.`;
      } catch (e) { showError(err, e); }
    },
  });

  return () => { stop(); if (chart) chart.remove(); };
}
