// The Fuse dashboard: a hash-routed page per resource, every figure from the REST API
// under /v1 (authenticated by the session cookie set at /ui/login, or open when the
// server requires no token). docs/dashboard.md describes each page.
'use strict';

const $ = (sel, root = document) => root.querySelector(sel);

// Creates an element: h('button', {class: 'x', onclick: f}, 'text', child...).
function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) { continue; }
    if (k.startsWith('on')) { e.addEventListener(k.slice(2), v); } else if (k === 'class') { e.className = v; } else { e.setAttribute(k, v === true ? '' : v); }
  }
  for (const k of kids.flat()) { if (k !== null && k !== undefined) { e.append(k instanceof Node ? k : String(k)); } }
  return e;
}

const enc = encodeURIComponent;
let me = null; // {caller, key_id, auth_required}
let cleanups = []; // what the current page must stop when left

function onLeave(f) { cleanups.push(f); }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const opts = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    if (body instanceof Blob) { opts.body = body; opts.headers['content-type'] = 'application/octet-stream'; } else { opts.body = JSON.stringify(body); opts.headers['content-type'] = 'application/json'; }
  }
  const r = await fetch(path, opts);
  if (r.status === 401) { showLogin(); }
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!r.ok) {
    throw new ApiError(r.status, (json && json.error && json.error.message) || text || r.statusText);
  }
  return json;
}

function stateBadge(s) { return h('span', { class: 'state state-' + s, 'data-state': s }, s); }
function fmtTime(s) { if (!s) { return ''; } const d = new Date(s); return Number.isNaN(d.getTime()) ? s : d.toLocaleString(); }
function fmtBytes(n) { const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let i = 0; while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return `${n.toFixed(i ? 1 : 0)} ${u[i]}`; }
function errorBox() { return h('p', { class: 'error', role: 'alert' }); }
function showError(box, e) { box.textContent = e ? (e.message || String(e)) : ''; }

// Follows an SSE stream with reconnects (1 s doubling to 30 s); `handlers` maps event
// names ('message' for unnamed frames) to functions of the parsed data.
function follow(url, handlers, onState) {
  let es = null; let delay = 1000; let timer = null; let stopped = false;
  const open = () => {
    es = new EventSource(url, { withCredentials: true });
    es.onopen = () => { delay = 1000; if (onState) { onState('live'); } };
    for (const [name, f] of Object.entries(handlers)) {
      es.addEventListener(name, (ev) => { let d = null; try { d = JSON.parse(ev.data); } catch (_) { d = null; } f(d, es); });
    }
    es.onerror = () => {
      if (stopped) { return; }
      es.close();
      if (onState) { onState('reconnecting'); }
      // A 401 shows the login form: check once before retrying.
      api('GET', '/ui/session').then(() => { timer = setTimeout(open, delay); delay = Math.min(delay * 2, 30000); }).catch(() => {});
    };
  };
  open();
  const stop = () => { stopped = true; clearTimeout(timer); if (es) { es.close(); } };
  onLeave(stop);
  return stop;
}

// Every item of a paged list (`field` of each page, following `next_cursor`, at most 50 pages).
async function listAll(path, field) {
  const all = []; let cursor = '';
  for (let page = 0; page < 50; page++) {
    const sep = path.includes('?') ? '&' : '?';
    const r = await api('GET', `${path}${sep}limit=200${cursor ? '&cursor=' + enc(cursor) : ''}`);
    all.push(...(r[field] || []));
    if (!r.next_cursor) { break; }
    cursor = r.next_cursor;
  }
  return all;
}

function every(ms, f) { f(); const t = setInterval(f, ms); onLeave(() => clearInterval(t)); }

// ---- login ----

function showLogin() {
  $('#login').hidden = false; $('#view').hidden = true; $('#nav').hidden = true; $('#logout').hidden = true; $('#who').textContent = '';
  for (const f of cleanups) { f(); }
  cleanups = [];
  $('#token').focus();
}

async function boot() {
  try {
    me = await api('GET', '/ui/session');
  } catch (e) { if (e.status !== 401) { $('#login-error').textContent = e.message; } return; }
  $('#login').hidden = true; $('#view').hidden = false; $('#nav').hidden = false;
  $('#logout').hidden = !me.auth_required;
  $('#who').textContent = !me.auth_required ? 'open server (no token required)' : me.caller === 'master' ? 'master token' : `API key ${me.key_id}`;
  route();
}

$('#login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const err = $('#login-error');
  err.textContent = '';
  try {
    const r = await fetch('/ui/login', { method: 'POST', credentials: 'same-origin', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: $('#token').value }) });
    if (!r.ok) { let m = r.statusText; try { m = (await r.json()).error.message; } catch (_) { /* keep status */ } err.textContent = `Login refused: ${m}`; return; }
    $('#token').value = '';
    boot();
  } catch (e) { err.textContent = `Login failed: ${e.message}`; }
});

$('#logout').addEventListener('click', async () => {
  await fetch('/ui/logout', { method: 'POST', credentials: 'same-origin' });
  me = null; showLogin();
});

// ---- routing ----

const pages = {};

function route() {
  if (!me) { return; }
  for (const f of cleanups) { f(); }
  cleanups = [];
  const [, name, arg] = (location.hash || '#/fleet').split('/');
  for (const a of document.querySelectorAll('nav a')) { a.classList.toggle('active', a.getAttribute('href') === `#/${name}` || (name === 'env' && a.getAttribute('href') === '#/envs')); }
  const view = $('#view');
  view.replaceChildren();
  (pages[name] || pages.fleet)(view, arg ? decodeURIComponent(arg) : undefined);
}
window.addEventListener('hashchange', route);

// ---- fleet ----

function bar(label, used, total, fmt) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  const fill = h('div', { class: 'fill' + (pct > 85 ? ' high' : '') });
  fill.style.width = pct.toFixed(1) + '%';
  const f = fmt || ((v) => v);
  return h('div', { class: 'bar', role: 'meter', 'aria-label': label, 'aria-valuenow': used, 'aria-valuemin': 0, 'aria-valuemax': total },
    h('div', { class: 'label' }, h('span', {}, label), h('span', {}, `${f(used)} / ${f(total)}`)),
    h('div', { class: 'track' }, fill));
}

pages.fleet = (view) => {
  const err = errorBox();
  const cards = h('div', { class: 'cards', id: 'hosts' });
  view.append(h('h1', {}, 'Fleet'), err, cards);
  const load = async () => {
    try {
      const hosts = await listAll('/v1/hosts', 'hosts');
      showError(err, null);
      cards.replaceChildren(...(hosts.length ? hosts.map(hostCard) : [h('p', { class: 'note' }, 'No hosts registered (POST /v1/hosts, docs/hosts.md).')]));
    } catch (e) { showError(err, e); }
  };
  const hostCard = (host) => {
    const c = host.capacity || {}; const a = host.allocated || {};
    const act = async (action) => { try { await api('POST', `/v1/hosts/${enc(host.id)}?action=${action}`); load(); } catch (e) { showError(err, e); } };
    const cordoned = host.state === 'cordoned';
    return h('div', { class: 'card host', 'data-host': host.id },
      h('h3', {}, h('span', {}, host.id), stateBadge(host.state)),
      h('div', { class: 'note' }, `${host.backend || 'backend ?'} · ${host.region || 'no region'} · ${c.arch || ''}`),
      host.state_reason ? h('div', { class: 'note' }, host.state_reason) : null,
      bar('CPUs', a.cpus || 0, c.cpus || 0),
      bar('RAM', a.ram_mb || 0, c.ram_mb || 0, (v) => `${(v / 1024).toFixed(1)} GiB`),
      bar('Storage', a.storage_gb || 0, c.storage_gb || 0, (v) => `${v} GB`),
      bar('VMs', a.vm_count || 0, c.vm_count || 0),
      (host.warnings || []).map((w) => h('div', { class: 'note' }, '⚠ ' + w)),
      h('div', { class: 'row' },
        h('button', { type: 'button', class: 'secondary', onclick: () => act(cordoned ? 'uncordon' : 'cordon') }, cordoned ? 'Uncordon' : 'Cordon'),
        h('span', { class: 'note' }, `last seen ${fmtTime(host.last_seen) || 'never'}`)));
  };
  every(5000, load);
};

// ---- environments ----

pages.envs = (view) => {
  const err = errorBox();
  const status = h('span', { class: 'note', id: 'stream-status' }, 'connecting…');
  const tbody = h('tbody', { id: 'env-rows' });
  const rows = new Map();
  const form = h('form', { class: 'inline', id: 'create-form' },
    h('div', {}, h('label', { for: 'c-task' }, 'Task id'), h('input', { id: 'c-task', name: 'task_id', required: true, pattern: '[a-z0-9]([a-z0-9-]*[a-z0-9])?', maxlength: 63, placeholder: 'task-1' })),
    h('div', {}, h('label', { for: 'c-cpus' }, 'CPUs'), h('input', { id: 'c-cpus', type: 'number', min: 1, value: 1 })),
    h('div', {}, h('label', { for: 'c-ram' }, 'RAM (MB)'), h('input', { id: 'c-ram', type: 'number', min: 128, step: 128, value: 512 })),
    h('div', {}, h('label', { for: 'c-disk' }, 'Disk (GB)'), h('input', { id: 'c-disk', type: 'number', min: 1, value: 1 })),
    h('div', {}, h('label', { for: 'c-template' }, 'Template'), h('select', { id: 'c-template' }, h('option', { value: '' }, '(none)'))),
    h('div', {}, h('label', { for: 'c-script' }, 'Startup script'), h('input', { id: 'c-script', placeholder: 'optional' })),
    h('button', { type: 'submit', id: 'create-button' }, 'Create'));
  view.append(h('h1', {}, 'Environments'), form, err,
    h('div', { class: 'row' }, h('span', { class: 'note' }, 'Live: '), status),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Id'), h('th', {}, 'State'), h('th', { class: 'wide' }, 'Host'), h('th', { class: 'wide' }, 'Size'), h('th', { class: 'wide' }, 'Created'), h('th', {}, ''))),
      tbody)));

  api('GET', '/v1/templates').then(({ templates }) => {
    for (const t of templates) { $('#c-template').append(h('option', { value: t.name }, t.name)); }
  }).catch(() => {});

  const rowOf = (env) => {
    const destroy = h('button', { type: 'button', class: 'danger', 'data-destroy': env.id, onclick: async () => {
      if (!confirm(`Destroy ${env.id}?`)) { return; }
      try { destroy.disabled = true; await api('DELETE', `/v1/environments/${enc(env.id)}`); } catch (e) { destroy.disabled = false; showError(err, e); }
    } }, 'Destroy');
    const s = env.spec || {};
    return h('tr', { 'data-env': env.id },
      h('td', {}, h('a', { href: `#/env/${enc(env.id)}` }, env.id), env.error ? h('div', { class: 'error' }, env.error) : null),
      h('td', { class: 'st' }, stateBadge(env.state)),
      h('td', { class: 'wide' }, env.host_id || ''),
      h('td', { class: 'wide' }, s.cpus ? `${s.cpus} CPU · ${s.ram_mb} MB` : ''),
      h('td', { class: 'wide' }, fmtTime(env.created_at)),
      h('td', {}, ['destroying', 'destroyed', 'failed'].includes(env.state) ? null : destroy));
  };
  const put = (env) => {
    if (env.state === 'destroyed') { const r = rows.get(env.id); if (r) { r.remove(); rows.delete(env.id); } return; }
    const tr = rowOf(env);
    const old = rows.get(env.id);
    if (old) { old.replaceWith(tr); } else { tbody.append(tr); }
    rows.set(env.id, tr);
  };
  const known = new Map();
  const list = async () => {
    try {
      const all = await listAll('/v1/environments', 'environments');
      tbody.replaceChildren(); rows.clear(); known.clear();
      for (const env of all) { known.set(env.id, env); put(env); }
    } catch (e) { showError(err, e); }
  };
  follow('/v1/events', {
    subscribed: () => list(),
    resync: () => list(),
    message: async (ev) => {
      if (!ev || !ev.vm_id) { return; }
      let env = known.get(ev.vm_id);
      if (!env) {
        try { env = await api('GET', `/v1/environments/${enc(ev.vm_id)}`); } catch (_) { env = { id: ev.vm_id, spec: {} }; }
      }
      env = Object.assign({}, env, { state: ev.state, error: ev.error || '' });
      if (ev.event === 'health') { env.state = ev.state; }
      known.set(env.id, env);
      put(env);
    },
  }, (s) => { status.textContent = s; status.dataset.state = s; });

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    showError(err, null);
    const body = { task_id: $('#c-task').value.trim(), spec: { cpus: Number($('#c-cpus').value), ram_mb: Number($('#c-ram').value), storage_gb: Number($('#c-disk').value) } };
    if ($('#c-template').value) { body.template = $('#c-template').value; }
    if ($('#c-script').value) { body.startup_script = $('#c-script').value; }
    try {
      $('#create-button').disabled = true;
      const env = await api('POST', '/v1/environments?wait=false', body);
      known.set(env.id, env); put(env);
      $('#c-task').value = '';
    } catch (e) { showError(err, e); } finally { $('#create-button').disabled = false; }
  });
};

// ---- one environment ----

pages.env = (view, id) => {
  const err = errorBox();
  const head = h('div', {});
  const timeline = h('ul', { class: 'timeline', id: 'timeline' });
  view.append(h('h1', {}, h('a', { href: '#/envs' }, 'Environments'), ' / ', id), err, head,
    h('h2', {}, 'Events'), timeline);
  let env = null;
  const render = () => {
    if (!env) { return; }
    const s = env.spec || {};
    const snap = h('button', { type: 'button', class: 'secondary', onclick: async () => {
      try { snap.disabled = true; const r = await api('POST', `/v1/environments/${enc(id)}/snapshots`, { comment: 'from the dashboard' }); showError(err, null); snapNote.textContent = `snapshot ${r.id} (${r.state})`; } catch (e) { showError(err, e); } finally { snap.disabled = false; }
    } }, 'Snapshot');
    const snapNote = h('span', { class: 'note' });
    const destroy = h('button', { type: 'button', class: 'danger', onclick: async () => {
      if (!confirm(`Destroy ${id}?`)) { return; }
      try { await api('DELETE', `/v1/environments/${enc(id)}`); } catch (e) { showError(err, e); }
    } }, 'Destroy');
    head.replaceChildren(
      h('dl', { class: 'kv' },
        h('dt', {}, 'State'), h('dd', { id: 'env-state' }, stateBadge(env.state)),
        h('dt', {}, 'Host'), h('dd', {}, env.host_id || '—'),
        h('dt', {}, 'Agent URL'), h('dd', {}, env.url || '—'),
        h('dt', {}, 'Size'), h('dd', {}, `${s.cpus || '?'} CPU · ${s.ram_mb || '?'} MB RAM · ${s.storage_gb || '?'} GB disk`),
        h('dt', {}, 'Created'), h('dd', {}, fmtTime(env.created_at)),
        env.error ? h('dt', {}, 'Error') : null, env.error ? h('dd', { class: 'error' }, env.error) : null),
      h('div', { class: 'row' }, snap, destroy, snapNote));
  };
  const load = async () => { try { env = await api('GET', `/v1/environments/${enc(id)}`); render(); ports(); } catch (e) { showError(err, e); } };
  load();
  const stop = follow(`/v1/environments/${enc(id)}/events`, {
    message: (ev) => {
      if (!ev) { return; }
      timeline.prepend(h('li', {}, `${fmtTime(ev.updated_at)} — `, ev.event === 'health' ? `health ${ev.health && ev.health.status}` : stateBadge(ev.state), ev.error ? ` ${ev.error}` : ''));
      if (env) { env.state = ev.state; env.error = ev.error || env.error; if (ev.url) { env.url = ev.url; } render(); }
      if (ev.state === 'destroyed' || ev.state === 'failed') { stop(); }
      if (ev.state === 'running') { load(); }
    },
  });

  // Terminal.
  const termBox = h('div', { class: 'term', id: 'term' });
  const termNote = h('span', { class: 'note', id: 'term-status' }, 'not connected');
  const connect = h('button', { type: 'button', id: 'term-connect' }, 'Connect');
  view.append(h('h2', {}, 'Terminal'), h('div', { class: 'row' }, connect, termNote), termBox);
  let term = null; let ws = null;
  const closeWs = () => { if (ws) { ws.close(); ws = null; } };
  onLeave(closeWs);
  connect.addEventListener('click', () => {
    if (me.caller !== 'master') { termNote.textContent = 'The terminal needs the master token; an API key cannot open one. Log in with the master token.'; return; }
    closeWs();
    termBox.replaceChildren();
    const size = () => {
      const probe = h('span', {}, 'M'.repeat(10));
      termBox.append(probe);
      const cw = probe.getBoundingClientRect().width / 10 || 8; const ch = probe.getBoundingClientRect().height || 16;
      probe.remove();
      return [Math.floor((termBox.clientWidth - 8) / cw), Math.floor((termBox.clientHeight - 8) / ch)];
    };
    const [cols, rows] = size();
    term = new FuseTerm(termBox, cols, rows);
    window.fuseTerm = term;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    ws = new WebSocket(`${proto}//${location.host}/v1/environments/${enc(id)}/attach?cols=${term.cols}&rows=${term.rows}`);
    ws.binaryType = 'arraybuffer';
    const te = new TextEncoder();
    term.onData = (s) => { if (ws && ws.readyState === 1) { ws.send(te.encode(s)); } };
    ws.onopen = () => { termNote.textContent = 'connected'; termNote.dataset.state = 'connected'; term.focus(); };
    ws.onmessage = (m) => {
      if (typeof m.data === 'string') {
        try { const c = JSON.parse(m.data); if (c.type === 'exit') { termNote.textContent = `exited with code ${c.exit_code}`; } } catch (_) { /* not control */ }
        return;
      }
      term.write(new Uint8Array(m.data));
    };
    ws.onclose = (e) => { if (termNote.dataset.state === 'connected' && !termNote.textContent.startsWith('exited')) { termNote.textContent = `closed${e.reason ? ': ' + e.reason : ''}`; } termNote.dataset.state = 'closed'; };
    ws.onerror = () => { termNote.textContent = 'could not connect (is the environment running, and is this the master token?)'; };
    const onResize = () => {
      if (!term || !ws || ws.readyState !== 1) { return; }
      const [c, r] = size();
      if (c !== term.cols || r !== term.rows) { term.resize(c, r); term.render(); ws.send(JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows })); }
    };
    window.addEventListener('resize', onResize);
    onLeave(() => window.removeEventListener('resize', onResize));
  });

  // Logs.
  const logPre = h('pre', { class: 'log', id: 'log' });
  const source = h('select', { id: 'log-source', 'aria-label': 'log source' }, ['agent', 'startup', 'console'].map((s) => h('option', { value: s }, s)));
  const followBox = h('input', { type: 'checkbox', id: 'log-follow', checked: true });
  const logBtn = h('button', { type: 'button', class: 'secondary' }, 'Show');
  view.append(h('h2', {}, 'Logs'), h('div', { class: 'row' }, source, h('label', { for: 'log-follow' }, followBox, ' follow'), logBtn), logPre);
  let logAbort = null;
  const stopLog = () => { if (logAbort) { logAbort.abort(); logAbort = null; } };
  onLeave(stopLog);
  logBtn.addEventListener('click', async () => {
    stopLog();
    logPre.textContent = '';
    logAbort = new AbortController();
    try {
      const r = await fetch(`/v1/environments/${enc(id)}/logs?source=${source.value}&tail=500&follow=${followBox.checked}`, { credentials: 'same-origin', signal: logAbort.signal });
      if (!r.ok) { let m = r.statusText; try { m = (await r.json()).error.message; } catch (_) { /* status */ } logPre.textContent = `(${m})`; return; }
      const reader = r.body.getReader(); const dec = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) { break; }
        logPre.append(dec.decode(value, { stream: true }));
        if (logPre.textContent.length > 500000) { logPre.textContent = logPre.textContent.slice(-250000); }
        logPre.scrollTop = logPre.scrollHeight;
      }
    } catch (e) { if (e.name !== 'AbortError') { logPre.append(`\n(${e.message})`); } }
  });

  // Files.
  const dirInput = h('input', { id: 'files-path', value: '/tmp', 'aria-label': 'directory' });
  const filesErr = errorBox();
  const filesBody = h('tbody', { id: 'files' });
  const upload = h('input', { type: 'file', id: 'files-upload', 'aria-label': 'upload a file' });
  const listFiles = async () => {
    showError(filesErr, null);
    try {
      const r = await api('GET', `/v1/environments/${enc(id)}/files?list=true&path=${enc(dirInput.value)}`);
      filesBody.replaceChildren(...r.entries.map((f) => h('tr', {},
        h('td', {}, f.type === 'dir' ? h('a', { href: '#', onclick: (e) => { e.preventDefault(); dirInput.value = f.path; listFiles(); } }, f.name + '/') : f.type === 'file' ? h('a', { href: `/v1/environments/${enc(id)}/files?path=${enc(f.path)}`, download: f.name }, f.name) : f.name),
        h('td', {}, f.type === 'file' ? fmtBytes(f.size) : f.type), h('td', { class: 'wide' }, f.mode), h('td', { class: 'wide' }, fmtTime(f.modified_at)))));
    } catch (e) { showError(filesErr, e); }
  };
  upload.addEventListener('change', async () => {
    const f = upload.files[0];
    if (!f) { return; }
    const path = `${dirInput.value.replace(/\/+$/, '')}/${f.name}`;
    try { await api('PUT', `/v1/environments/${enc(id)}/files?path=${enc(path)}`, f); listFiles(); } catch (e) { showError(filesErr, e); }
    upload.value = '';
  });
  view.append(h('h2', {}, 'Files'),
    h('div', { class: 'row' }, dirInput, h('button', { type: 'button', class: 'secondary', id: 'files-list', onclick: listFiles }, 'List'), h('label', { for: 'files-upload' }, 'Upload into this directory: '), upload),
    filesErr, h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Size'), h('th', { class: 'wide' }, 'Mode'), h('th', { class: 'wide' }, 'Modified'))), filesBody)));

  // Ports.
  const portsBody = h('tbody', {});
  const portErr = errorBox();
  const portIn = h('input', { type: 'number', min: 1, max: 65535, id: 'expose-port', 'aria-label': 'guest port' });
  const ports = () => {
    const eps = (env && env.endpoints) || [];
    portsBody.replaceChildren(...(eps.length ? eps.map((p) => h('tr', {},
      h('td', {}, String(p.port)), h('td', {}, p.as || ''), h('td', {}, p.protocol || 'tcp'),
      h('td', {}, [p.url, p.public_url, p.host_url].filter(Boolean).map((u) => h('div', {}, /^https?:/.test(u) ? h('a', { href: u, target: '_blank', rel: 'noopener' }, u) : u))))) : [h('tr', {}, h('td', { colspan: 4, class: 'note' }, 'No published ports.'))]));
  };
  view.append(h('h2', {}, 'Ports'),
    h('form', { class: 'inline', onsubmit: async (e) => { e.preventDefault(); try { env = await api('POST', `/v1/environments/${enc(id)}?action=expose`, { port: Number(portIn.value) }); showError(portErr, null); ports(); } catch (x) { showError(portErr, x); } } },
      portIn, h('button', { type: 'submit', class: 'secondary' }, 'Publish port')),
    portErr, h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Port'), h('th', {}, 'Name'), h('th', {}, 'Protocol'), h('th', {}, 'URLs'))), portsBody)));
};

// ---- snapshots and templates ----

pages.snapshots = (view) => {
  const err = errorBox();
  const tbody = h('tbody', {});
  view.append(h('h1', {}, 'Snapshots'), err, h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, h('th', {}, 'Id'), h('th', {}, 'Environment'), h('th', {}, 'State'), h('th', { class: 'wide' }, 'Kind'), h('th', { class: 'wide' }, 'Size'), h('th', { class: 'wide' }, 'Created'), h('th', {}, ''))), tbody)));
  const load = async () => {
    try {
      const snapshots = await listAll('/v1/snapshots', 'snapshots');
      tbody.replaceChildren(...snapshots.map((s) => h('tr', {},
        h('td', {}, s.id, s.comment ? h('div', { class: 'note' }, s.comment) : null, s.last_error ? h('div', { class: 'error' }, s.last_error) : null),
        h('td', {}, s.vm_id), h('td', {}, stateBadge(s.state)), h('td', { class: 'wide' }, s.kind), h('td', { class: 'wide' }, fmtBytes(s.size_bytes || 0)), h('td', { class: 'wide' }, fmtTime(s.created_at)),
        h('td', {}, h('button', { type: 'button', class: 'danger', onclick: async () => { if (!confirm(`Delete ${s.id}?`)) { return; } try { await api('DELETE', `/v1/snapshots/${enc(s.id)}`); load(); } catch (e) { showError(err, e); } } }, 'Delete')))));
    } catch (e) { showError(err, e); }
  };
  every(10000, load);
};

pages.templates = (view) => {
  const err = errorBox();
  const tbody = h('tbody', {});
  const name = h('input', { id: 't-name', required: true, pattern: '[a-z0-9][a-z0-9._-]{0,62}' });
  const from = h('input', { id: 't-from', required: true, placeholder: 'a running environment' });
  const per = h('input', { id: 't-pool', type: 'number', min: 0, value: 0 });
  const form = h('form', { class: 'inline' },
    h('div', {}, h('label', { for: 't-name' }, 'Name'), name), h('div', {}, h('label', { for: 't-from' }, 'From environment'), from),
    h('div', {}, h('label', { for: 't-pool' }, 'Warm per host'), per), h('button', { type: 'submit' }, 'Create template'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try { await api('POST', '/v1/templates', { name: name.value, from_environment: from.value, pool: { per_host: Number(per.value) } }); showError(err, null); load(); } catch (x) { showError(err, x); }
  });
  view.append(h('h1', {}, 'Templates'), form, err, h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'State'), h('th', { class: 'wide' }, 'Snapshot'), h('th', {}, 'Pool (ready / warming / per host)'), h('th', {}, ''))), tbody)));
  const load = async () => {
    try {
      const { templates } = await api('GET', '/v1/templates');
      tbody.replaceChildren(...templates.map((t) => h('tr', {},
        h('td', {}, t.name), h('td', {}, stateBadge(t.state)), h('td', { class: 'wide' }, t.snapshot_id),
        h('td', {}, `${t.pool.ready} / ${t.pool.warming} / ${t.pool.per_host}`),
        h('td', {}, h('button', { type: 'button', class: 'danger', onclick: async () => { if (!confirm(`Delete template ${t.name}?`)) { return; } try { await api('DELETE', `/v1/templates/${enc(t.name)}`); load(); } catch (x) { showError(err, x); } } }, 'Delete')))));
    } catch (x) { showError(err, x); }
  };
  every(10000, load);
};

// ---- background loops ----

pages.background = (view) => {
  const err = errorBox();
  const loops = h('tbody', { id: 'loops' }); const dead = h('tbody', {}); const replica = h('p', { class: 'note' });
  view.append(h('h1', {}, 'Background'), err, replica,
    h('h2', {}, 'Loops'), h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Loop'), h('th', {}, 'Last outcome'), h('th', {}, 'Passes'), h('th', { class: 'wide' }, 'Panics'), h('th', { class: 'wide' }, 'Last run'), h('th', { class: 'wide' }, 'Took'))), loops)),
    h('h2', {}, 'Dead letters'), h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Kind'), h('th', {}, 'Entity'), h('th', {}, 'Attempts'), h('th', {}, 'Last error'))), dead)));
  every(5000, async () => {
    try {
      const b = await api('GET', '/v1/debug/background');
      replica.textContent = `replica ${b.replica_id || ''}`;
      loops.replaceChildren(...(b.loops || []).map((l) => h('tr', {},
        h('td', {}, l.name, h('div', { class: 'note' }, `every ${l.period_seconds} s${l.leader_only ? ', leader only' : ''}${l.running ? ', running now' : ''}`)),
        h('td', {}, l.last_outcome ? stateBadge(l.last_outcome) : '—', l.last_error ? h('div', { class: 'error' }, l.last_error) : null),
        h('td', {}, String(l.passes)), h('td', { class: 'wide' }, String(l.panics)), h('td', { class: 'wide' }, fmtTime(l.last_started_at)), h('td', { class: 'wide' }, l.last_duration_ms === null || l.last_duration_ms === undefined ? '' : `${l.last_duration_ms} ms`))));
      const dl = b.dead_letters || [];
      dead.replaceChildren(...(dl.length ? dl.map((d) => h('tr', {}, h('td', {}, d.kind), h('td', {}, d.entity_id), h('td', {}, String(d.attempts)), h('td', { class: 'error' }, d.last_error || ''))) : [h('tr', {}, h('td', { colspan: 4, class: 'note' }, 'None.'))]));
    } catch (e) { showError(err, e); }
  });
};

// ---- charts ----

const samples = []; // kept across visits of the page, sampled only while it is open
pages.charts = (view) => {
  const err = errorBox();
  const rate = FuseCharts && document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  const lat = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  rate.setAttribute('class', 'chart'); rate.setAttribute('id', 'chart-rate'); rate.setAttribute('role', 'img'); rate.setAttribute('aria-label', 'creates per second');
  lat.setAttribute('class', 'chart'); lat.setAttribute('id', 'chart-latency'); lat.setAttribute('role', 'img'); lat.setAttribute('aria-label', 'create latency');
  const figures = h('p', { class: 'note', id: 'chart-figures' });
  view.append(h('h1', {}, 'Charts'),
    h('p', { class: 'note' }, 'Sampled every 5 s from this server\'s /metrics (orchestrator_provision_duration_seconds, every outcome) while this page is open; rates and latencies are computed from the differences between samples.'),
    err, figures,
    h('h2', {}, 'Creates per second'), rate, h('div', { class: 'legend' }, h('span', { class: 'k0' }, 'creates/s')),
    h('h2', {}, 'Create latency (seconds)'), lat, h('div', { class: 'legend' }, h('span', { class: 'k0' }, 'mean'), h('span', { class: 'k1' }, 'p50'), h('span', { class: 'k2' }, 'p95')));
  every(5000, async () => {
    try {
      const r = await fetch('/metrics', { credentials: 'same-origin' });
      if (!r.ok) { throw new Error(`/metrics answered ${r.status}`); }
      samples.push(FuseCharts.parseProvision(await r.text(), Date.now()));
      while (samples.length > 180) { samples.shift(); }
      const s = FuseCharts.provisionSeries(samples);
      FuseCharts.lineChart(rate, [{ name: 'creates/s', points: s.rate }], 'creates/s');
      FuseCharts.lineChart(lat, [{ name: 'mean', points: s.mean }, { name: 'p50', points: s.p50 }, { name: 'p95', points: s.p95 }], 'seconds');
      const last = samples[samples.length - 1];
      figures.textContent = `${last.count} provisions since start (${Object.entries(last.byOutcome).map(([k, v]) => `${k || '?'}: ${v}`).join(', ') || 'none yet'}); mean ${last.count ? (last.sum / last.count).toFixed(2) : '—'} s.`;
      showError(err, null);
    } catch (e) { showError(err, e); }
  });
};

boot();
