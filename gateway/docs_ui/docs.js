// Starts Swagger UI on the gateway's docs pages (gateway/docs.py): `#swagger-ui[data-url]` is one
// service's OpenAPI document, `[data-urls]` (the index at /docs) every service's behind the dropdown.
// A file, not an inline script: the pages' CSP allows scripts from the gateway only.
'use strict';

(() => {
  const root = document.getElementById('swagger-ui');
  // The key the dashboard saved (Overview > API key, gateway/dashboard/api.js) authorises here too.
  const KEY_STORAGE = 'kitrading.apiKey';

  function savedKey() {
    try { return localStorage.getItem(KEY_STORAGE) || ''; } catch { return ''; }
  }

  function refreshHealth() {
    for (const badge of document.querySelectorAll('[data-health]')) {
      fetch(badge.dataset.health, { cache: 'no-store' }).then((res) => {
        badge.textContent = res.ok ? 'SERVING' : 'DOWN';
        badge.className = 'kt-health ' + (res.ok ? 'kt-ok' : 'kt-down');
      }, () => { badge.textContent = '?'; badge.className = 'kt-health'; });
    }
  }

  if (document.querySelector('[data-health]')) {
    refreshHealth();
    setInterval(refreshHealth, 5000);
  }

  if (typeof window.SwaggerUIBundle !== 'function') {
    const spec = root.dataset.url || '/docs';
    root.className = 'kt-missing';
    root.append('Swagger UI is not installed on this gateway (pip install the kitrading project: it pins ',
      Object.assign(document.createElement('code'), { textContent: 'swagger-ui-bundle' }),
      '). The OpenAPI document: ', Object.assign(document.createElement('a'), { href: spec, textContent: spec }));
    return;
  }

  const config = {
    domNode: root,
    deepLinking: true,
    validatorUrl: null, // no online validator: the docs work with no network beyond the gateway
    persistAuthorization: true,
    showExtensions: true, // x-grpc-method, x-streaming
    displayRequestDuration: true,
    docExpansion: 'list',
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: 'BaseLayout',
    onComplete: () => {
      const key = savedKey();
      const ui = window.ui;
      if (key && ui && !ui.authSelectors.authorized().get('apiKey')) ui.preauthorizeApiKey('apiKey', key);
    },
  };
  if (root.dataset.urls) {
    config.urls = JSON.parse(root.dataset.urls);
    const wanted = new URLSearchParams(window.location.search).get('urls.primaryName');
    if (wanted) config['urls.primaryName'] = wanted;
    config.presets.push(window.SwaggerUIStandalonePreset);
    config.layout = 'StandaloneLayout';
  } else {
    config.url = root.dataset.url;
  }
  window.ui = window.SwaggerUIBundle(config);
})();
