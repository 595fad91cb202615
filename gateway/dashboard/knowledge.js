// Knowledge base: add a document (pasted or from a file), search it, list and delete (RAG service).

import { ApiError, del, downNotice, fmt, get, h, post, showError, table, when } from './api.js';

export async function mount(root) {
  const statusLine = h('p', { class: 'small muted', id: 'rag-status', role: 'status' });
  const addErr = h('p', { class: 'err', role: 'alert', id: 'rag-add-error' });
  const addOk = h('p', { class: 'small', role: 'status', id: 'rag-add-result' });
  const title = h('input', { id: 'doc-title', maxlength: 512 });
  const source = h('input', { id: 'doc-source', placeholder: 'e.g. https://… or notes' });
  const tags = h('input', { id: 'doc-tags', placeholder: 'comma separated' });
  const symbol = h('input', { id: 'doc-symbol', placeholder: 'optional, e.g. EURUSD' });
  const text = h('textarea', { id: 'doc-text', rows: 6 });
  const file = h('input', { id: 'doc-file', type: 'file', accept: '.txt,.md,.csv,.json,text/*' });
  file.addEventListener('change', async () => {
    const f = file.files && file.files[0];
    if (!f) return;
    text.value = await f.text();
    if (!title.value) title.value = f.name;
    if (!source.value) source.value = `file:${f.name}`;
  });
  const addForm = h('form', { id: 'doc-form', onsubmit: async (ev) => {
    ev.preventDefault();
    showError(addErr, null); addOk.textContent = '';
    const body = { title: title.value, text: text.value, source: source.value,
      tags: tags.value.split(',').map((t) => t.trim()).filter(Boolean) };
    if (symbol.value.trim()) body.symbol = symbol.value.trim().toUpperCase();
    try {
      const reply = await post('/api/v1/rag/document', body);
      const d = reply.document || {};
      addOk.textContent = `${reply.created ? 'Added' : 'Already there'}: ${d.title || d.documentId} (${d.chunkCount} chunks).`;
      text.value = ''; refresh();
    } catch (e) { showError(addErr, e); }
  } },
  h('label', { for: 'doc-title' }, 'Title', title), h('label', { for: 'doc-source' }, 'Source', source),
  h('label', { for: 'doc-tags' }, 'Tags', tags), h('label', { for: 'doc-symbol' }, 'Symbol', symbol),
  h('label', { for: 'doc-file' }, 'Or read a text file', file),
  h('label', { for: 'doc-text', class: 'grow' }, 'Text', text), h('button', { type: 'submit' }, 'Add document'));

  const qErr = h('p', { class: 'err', role: 'alert', id: 'rag-query-error' });
  const q = h('input', { id: 'rag-query', type: 'search' });
  const topK = h('input', { id: 'rag-topk', type: 'number', min: 1, max: 50, value: 5, inputmode: 'numeric' });
  const results = h('div', { id: 'rag-results' });
  const qForm = h('form', { id: 'rag-query-form', onsubmit: async (ev) => {
    ev.preventDefault();
    showError(qErr, null);
    try {
      const reply = await get('/api/v1/rag/query', { query: q.value, topK: topK.value });
      const passages = reply.passages || [];
      results.replaceChildren(passages.length ? h('div', {}, passages.map((p) => h('div', { class: 'passage' },
        h('strong', {}, p.title || p.documentId), h('span', { class: 'muted' }, ` · ${p.source} · score ${fmt(p.score, 3)}`),
        h('div', {}, p.text)))) : h('p', { class: 'muted' }, 'Nothing found.'));
    } catch (e) { results.replaceChildren(); showError(qErr, e); }
  } },
  h('label', { for: 'rag-query', class: 'grow' }, 'Search', q), h('label', { for: 'rag-topk' }, 'Results', topK),
  h('button', { type: 'submit' }, 'Search'));

  const list = h('div', { id: 'rag-documents' });
  const listErr = h('p', { class: 'err', role: 'alert' });
  root.append(statusLine, h('div', { class: 'grid' },
    h('div', { class: 'card' }, h('h3', {}, 'Add a document'), addForm, addErr, addOk),
    h('div', { class: 'card' }, h('h3', {}, 'Search'), qForm, qErr, results),
    h('div', { class: 'card wide' }, h('h3', {}, 'Documents'), listErr, list)));

  async function refresh() {
    try {
      const s = await get('/api/v1/rag/status');
      statusLine.textContent = `${s.documents} documents, ${s.chunks} chunks, ${s.embeddingModel} (${s.dimension} dimensions), ${s.indexDescription || ''}`;
      const reply = await get('/api/v1/rag/documents', { pageSize: 100 });
      list.replaceChildren(table(['Title', 'Source', 'Tags', 'Symbol', 'Chunks', 'Added', ''], (reply.documents || []).map((d) => [
        h('td', { class: 'wrap' }, d.title || d.documentId), h('td', { class: 'wrap small' }, d.source), (d.tags || []).join(', '), d.symbol || '–',
        String(d.chunkCount), when(d.createTime),
        h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${d.title || d.documentId}`, onclick: async () => {
          showError(listErr, null);
          try { await del(`/api/v1/rag/documents/${encodeURIComponent(d.documentId)}`); refresh(); } catch (e) { showError(listErr, e); }
        } }, 'Delete')])), h('p', { class: 'small muted' }, `${reply.totalSize} in all.`));
    } catch (e) {
      if (e instanceof ApiError && e.down) list.replaceChildren(downNotice('rag', e)); else showError(listErr, e);
    }
  }
  refresh();
  return undefined;
}
