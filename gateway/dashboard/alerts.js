// Alerts: the watchdog's alert history and the test alert.

import { ApiError, downNotice, get, h, post, showError, table } from './api.js';
import { alertRows } from './overview.js';

export async function mount(root) {
  const err = h('p', { class: 'err', role: 'alert', id: 'alert-test-error' });
  const ok = h('p', { class: 'small', role: 'status', id: 'alert-test-result' });
  const message = h('input', { id: 'alert-message', value: 'Test alert from the dashboard', maxlength: 4096 });
  const form = h('form', { id: 'alert-test-form', onsubmit: async (ev) => {
    ev.preventDefault();
    showError(err, null); ok.textContent = '';
    try {
      const reply = await post('/watchdog/api/v1/alerts/test', { message: message.value });
      const a = reply.alert || {};
      ok.textContent = `Sent: ${a.alertId} (${(a.deliveryState || '').replace('DELIVERY_STATE_', '').toLowerCase()}${a.deliveryError ? `: ${a.deliveryError}` : ''}).`;
      refresh();
    } catch (e) { showError(err, e); }
  } }, h('label', { for: 'alert-message', class: 'grow' }, 'Message', message), h('button', { type: 'submit' }, 'Send test alert'));

  const target = h('input', { id: 'alert-target', placeholder: 'all targets' });
  const list = h('div', { id: 'alert-history' });
  const listErr = h('p', { class: 'err', role: 'alert' });
  const filter = h('form', { onsubmit: (ev) => { ev.preventDefault(); refresh(); } },
    h('label', { for: 'alert-target' }, 'Target', target), h('button', { type: 'submit', class: 'secondary' }, 'Filter'));
  root.append(h('div', { class: 'card wide' }, h('h3', {}, 'Test alert'), form, err, ok),
    h('div', { class: 'card wide' }, h('h3', {}, 'History'), filter, listErr, list));

  async function refresh() {
    showError(listErr, null);
    try {
      const reply = await get('/watchdog/api/v1/alerts/history', { pageSize: 200, target: target.value.trim() });
      const alerts = reply.alerts || [];
      list.replaceChildren(alerts.length ? table(['When', 'Target', 'Kind', 'Severity', 'Message', 'Delivery'], alertRows(alerts)) : h('p', { class: 'muted' }, 'No alerts.'));
    } catch (e) {
      if (e instanceof ApiError && e.down) list.replaceChildren(downNotice('watchdog', e)); else showError(listErr, e);
    }
  }
  refresh();
  return undefined;
}
