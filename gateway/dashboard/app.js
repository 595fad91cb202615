// The dashboard shell: hash routes (#/overview, #/symbol/EURUSD, ...) mount one panel at a time.

import { h } from './api.js';
import * as overview from './overview.js';
import * as symbol from './symbol.js';
import * as training from './training.js';
import * as analyst from './analyst.js';
import * as knowledge from './knowledge.js';
import * as models from './models.js';
import * as alerts from './alerts.js';

const PANELS = { overview, symbol, training, analyst, knowledge, models, alerts };
const TITLES = {
  overview: 'Overview', symbol: 'Symbol', training: 'Training', analyst: 'Analyst',
  knowledge: 'Knowledge base', models: 'Models', alerts: 'Alerts',
};

const config = JSON.parse(document.getElementById('mesh-config').textContent);
const main = document.getElementById('main');
let current = null;

function route() {
  const parts = (location.hash || '#/overview').replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const name = PANELS[parts[0]] ? parts[0] : 'overview';
  return { name, args: parts.slice(1) };
}

async function show() {
  const { name, args } = route();
  if (current && current.cleanup) {
    try { current.cleanup(); } catch (e) { console.warn('cleanup', e); }
  }
  for (const link of document.querySelectorAll('#nav a[data-panel]')) {
    if (link.dataset.panel === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `${TITLES[name]} · KI Trading Mesh`;
  const root = h('section', { 'aria-labelledby': `title-${name}`, 'data-panel': name });
  root.append(h('h2', { id: `title-${name}` }, TITLES[name]));
  main.replaceChildren(root);
  const token = {};
  current = token;
  try {
    const cleanup = await PANELS[name].mount(root, { config, args });
    if (current === token) token.cleanup = cleanup; else if (cleanup) cleanup();
  } catch (e) {
    root.append(h('p', { class: 'notice down', role: 'alert' }, `This panel failed to load: ${e.message || e}`));
    console.warn(e);
  }
  root.dataset.ready = '1';
}

window.addEventListener('hashchange', () => { show(); main.focus({ preventScroll: true }); });
show();
