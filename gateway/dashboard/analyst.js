// Analyst: ask about a symbol; the answer streams token by token from POST /api/v1/analyze:stream,
// the grounding it used is shown beside it, and Stop aborts the request.

import { ApiError, downNotice, enumName, fmt, h, pct, showError, stream, symbolSelect, table } from './api.js';

function grounding(ctx) {
  const parts = [];
  const f = ctx.forecast;
  if (f && f.points && f.points.length) {
    const last = f.points[f.points.length - 1];
    const iv = (level) => (last.intervals || []).find((x) => x.level === level);
    parts.push(h('h4', {}, 'Forecast'), h('p', { class: 'small' },
      `${enumName(f.method, 'FORECAST_METHOD_').toUpperCase()} ${f.modelVersion}: ${fmt(last.value, 6)} at ${last.time}`,
      iv(80) ? ` (80% ${fmt(iv(80).lower, 6)}–${fmt(iv(80).upper, 6)})` : ''));
  }
  if (ctx.regime && ctx.regime.regime) {
    parts.push(h('h4', {}, 'Regime'), h('p', { class: 'small' }, `${enumName(ctx.regime.regime, 'REGIME_')} (${pct(ctx.regime.confidence)}) since ${ctx.regime.sinceTime}`));
  }
  const patterns = (ctx.patternDetection && ctx.patternDetection.patterns) || [];
  if (patterns.length) {
    parts.push(h('h4', {}, 'Patterns'), h('ul', { class: 'plain small' }, patterns.slice(0, 6).map((p) =>
      h('li', {}, `${p.patternType.replace(/_/g, ' ')} · ${enumName(p.direction, 'PATTERN_DIRECTION_')} · ${pct(p.confidence)} · ${p.endTime}`))));
  }
  if ((ctx.signalScores || []).length) {
    parts.push(h('h4', {}, 'Signal scores'), table(['Side', 'Score', 'Regime'], ctx.signalScores.map((s) => [enumName(s.side, 'SIGNAL_SIDE_'), fmt(s.score, 3), enumName(s.regime, 'REGIME_')])));
  }
  const passages = ctx.passages || [];
  parts.push(h('h4', {}, `Knowledge base (${passages.length} passages)`),
    ...passages.map((p) => h('div', { class: 'passage', 'data-passage': p.documentId },
      h('strong', {}, p.title || p.documentId), h('span', { class: 'muted' }, ` · ${p.source} · score ${fmt(p.score, 3)}`),
      h('div', {}, p.text.length > 280 ? `${p.text.slice(0, 280)}…` : p.text))));
  for (const u of ctx.unavailable || []) {
    parts.push(h('p', { class: 'notice small' }, `${enumName(u.source, 'CONTEXT_SOURCE_')} unavailable: ${u.code} ${u.reason}`));
  }
  return parts;
}

export async function mount(root, { args }) {
  const err = h('p', { class: 'err', role: 'alert', id: 'analyst-error' });
  const sym = await symbolSelect('analyst-symbol', { selected: args[0] || 'EURUSD', err });
  const question = h('textarea', { id: 'analyst-question', rows: 3 }, 'Should I buy or sell? Give the main risks.');
  const maxTokens = h('input', { id: 'analyst-max-tokens', type: 'number', min: 1, value: 160, inputmode: 'numeric' });
  const ask = h('button', { type: 'submit', id: 'analyst-ask' }, 'Ask');
  const stop = h('button', { type: 'button', class: 'danger', id: 'analyst-stop', disabled: true }, 'Stop');
  const answer = h('div', { class: 'answer', id: 'analyst-answer', 'aria-live': 'polite', 'aria-label': 'Answer' });
  const meta = h('p', { class: 'small muted', id: 'analyst-meta', role: 'status' });
  const sources = h('div', { id: 'analyst-grounding' }, h('p', { class: 'muted' }, 'The forecast, regime, patterns and knowledge-base passages the answer uses appear here.'));
  let controller = null;

  stop.addEventListener('click', () => { if (controller) controller.abort(); });
  const form = h('form', { id: 'analyst-form', onsubmit: async (ev) => {
    ev.preventDefault();
    showError(err, null);
    answer.textContent = '';
    meta.textContent = 'Gathering the context…';
    answer.dataset.state = 'running';
    controller = new AbortController();
    ask.disabled = true; stop.disabled = false;
    let tokens = 0;
    try {
      await stream('POST', '/api/v1/analyze:stream', {
        body: { symbol: sym.value, question: question.value, maxTokens: Number(maxTokens.value) || undefined },
        signal: controller.signal,
        onEvent: (m) => {
          if (m.context) { sources.replaceChildren(...grounding(m.context)); meta.textContent = `Context gathered in ${fmt(m.context.gatherMs, 3)} ms; answering…`; }
          if (m.token) { answer.append(m.token.text); tokens++; answer.dataset.tokens = String(tokens); }
          if (m.completion) {
            const c = m.completion;
            meta.textContent = `${enumName(c.finishReason, 'FINISH_REASON_')} · ${c.completionTokens} tokens at ${fmt(c.tokensPerSecond, 3)} tokens/s · first token after ${fmt(c.timeToFirstTokenMs, 3)} ms · ${c.model}`;
            answer.dataset.state = 'done';
          }
        },
      });
      if (answer.dataset.state !== 'done') { answer.dataset.state = 'ended'; meta.textContent = `The stream ended after ${tokens} tokens without a completion (the service may have restarted).`; }
    } catch (e) {
      if (e && e.name === 'AbortError') { meta.textContent = `Stopped after ${tokens} tokens.`; answer.dataset.state = 'stopped'; }
      else if (e instanceof ApiError && e.down) { answer.dataset.state = 'error'; meta.textContent = ''; err.replaceChildren(downNotice('llm', e)); }
      else { answer.dataset.state = 'error'; meta.textContent = ''; showError(err, e); }
    } finally { ask.disabled = false; stop.disabled = true; controller = null; }
  } },
  h('label', { for: 'analyst-symbol' }, 'Symbol', sym),
  h('label', { for: 'analyst-question', class: 'grow' }, 'Question', question),
  h('label', { for: 'analyst-max-tokens' }, 'Max tokens', maxTokens), ask, stop);

  root.append(h('div', { class: 'card wide' }, form, err),
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h3', {}, 'Answer'), answer, meta),
      h('div', { class: 'card' }, h('h3', {}, 'Grounding'), sources)));
  return () => { if (controller) controller.abort(); };
}
