// The chunkd demo page: uploads through the real Resumable.js 1.1.0 or Flow.js 2.14.1 (served
// from static/node_modules), with per-file progress, speed, time left, pause, resume, cancel, a
// count of the chunks the server already had, and the finished files with their download links
// and, for images, their thumbnails.
//
// Settings come from the form, remembered in localStorage. Query parameters override them, which
// the browser tests use: ?lib=resumable|flow, method=multipart|octet, chunkSize=<bytes>,
// simultaneous=<n>, and, with no form control, retryInterval=<ms>, maxRetries=<n>, target=<url>.
'use strict';

(function () {
  const byId = (id) => document.getElementById(id);
  const query = new URLSearchParams(location.search);

  // ---------------------------------------------------------------- options

  function intParam(name, fallback, min, max) {
    const v = Number.parseInt(query.get(name) ?? '', 10);
    return Number.isFinite(v) && v >= min && v <= max ? v : fallback;
  }

  const target = query.get('target') || '/upload';
  const targetPath = new URL(target, location.href).pathname;
  // How the libraries retry a chunk that did not get an answer (server restarting, network down)
  // or got a 503: every retryInterval ms, up to maxRetries times, about a minute by default.
  const retryInterval = intParam('retryInterval', 1000, 0, 600000);
  const maxRetries = intParam('maxRetries', 60, 0, 100000);
  // Statuses after which a retry cannot help: chunkd's 400 (bad parameters, a conflict), 401
  // and 403 (no token, or the wrong one: the person must paste one first), 404, 413 (larger
  // than any legal chunk), 415, 500, 501. Both libraries would retry a 401 or a 403, Flow.js
  // alone a 400, and Resumable.js alone a 413.
  const permanentErrors = [400, 401, 403, 404, 413, 415, 500, 501];

  const libraries = {
    resumable: { label: 'Resumable.js', ok: typeof window.Resumable === 'function' },
    flow: { label: 'Flow.js', ok: typeof window.Flow === 'function' },
  };

  const form = byId('settings');
  const STORE = 'chunkd-demo-settings';

  function setRadio(name, value) {
    const el = form.querySelector(`input[name="${name}"][value="${CSS.escape(value)}"]`);
    if (el && !el.disabled) el.checked = true;
  }

  function setChunkSize(bytes) {
    const select = byId('chunk-size');
    if (!Number.isSafeInteger(bytes) || bytes < 1) return;
    if (![...select.options].some((o) => Number(o.value) === bytes)) {
      const o = new Option(formatBytes(bytes), String(bytes));
      select.add(o);
    }
    select.value = String(bytes);
  }

  function loadSettings() {
    let saved = {};
    try {
      saved = JSON.parse(localStorage.getItem(STORE) || '{}') || {};
    } catch {
      saved = {};
    }
    for (const [name, ok] of Object.entries(libraries)) {
      if (!ok.ok) {
        const input = byId(`lib-${name}`);
        input.disabled = true;
        input.nextElementSibling.title = `${ok.label} is not installed`;
      }
    }
    const lib = query.get('lib') || saved.lib;
    if (lib) setRadio('lib', lib);
    if (!form.querySelector('input[name="lib"]:checked:not(:disabled)')) {
      const first = form.querySelector('input[name="lib"]:not(:disabled)');
      if (first) first.checked = true;
    }
    const method = query.get('method') || saved.method;
    if (method) setRadio('method', method);
    setChunkSize(intParam('chunkSize', Number(saved.chunkSize) || 1048576, 1, 2 ** 40));
    byId('simultaneous').value = String(intParam('simultaneous', Number(saved.simultaneous) || 3, 1, 16));
  }

  function settings() {
    const data = new FormData(form);
    const simultaneous = Math.min(Math.max(Number.parseInt(data.get('simultaneous'), 10) || 3, 1), 16);
    return {
      lib: data.get('lib') || 'resumable',
      method: data.get('method') === 'octet' ? 'octet' : 'multipart',
      chunkSize: Number(data.get('chunkSize')) || 1048576,
      simultaneous,
    };
  }

  form.addEventListener('change', () => {
    try {
      localStorage.setItem(STORE, JSON.stringify(settings()));
    } catch {
      // Storage may be disabled; the settings then last as long as the page.
    }
  });

  // The bearer token of a server run with --require-auth. It is a credential: it stays in this
  // tab (sessionStorage, which a reload keeps), never in localStorage with the other settings.
  // Every request reads it when it is sent, so a token pasted after a refusal serves the Retry.
  const TOKEN_STORE = 'chunkd-demo-token';
  const tokenInput = byId('token');
  try {
    tokenInput.value = sessionStorage.getItem(TOKEN_STORE) || '';
  } catch {
    // Storage may be disabled: the token is typed again after a reload.
  }
  tokenInput.addEventListener('input', () => {
    try {
      if (tokenInput.value) sessionStorage.setItem(TOKEN_STORE, tokenInput.value.trim());
      else sessionStorage.removeItem(TOKEN_STORE);
    } catch {
      // as above
    }
  });

  function authHeaders() {
    const token = tokenInput.value.trim();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }
  form.addEventListener('submit', (e) => e.preventDefault());

  // ---------------------------------------------------------------- formatting

  function formatBytes(n) {
    if (!Number.isFinite(n)) return '';
    const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    if (i === 0) return `${n} ${n === 1 ? 'byte' : 'bytes'}`;
    return `${n >= 100 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
  }

  function formatDuration(secs) {
    if (!Number.isFinite(secs)) return '';
    if (secs < 1) return 'under a second';
    secs = Math.round(secs);
    if (secs < 60) return `${secs} s`;
    const m = Math.floor(secs / 60);
    if (m < 60) return `${m} min ${String(secs % 60).padStart(2, '0')} s`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
  }

  function plural(n, one, many) {
    return `${n} ${n === 1 ? one : many}`;
  }

  function extension(name) {
    const m = /\.([0-9a-z]{1,4})$/i.exec(name);
    return m ? m[1].toUpperCase() : 'FILE';
  }

  // ---------------------------------------------------------------- identifiers

  // A stable identifier that changes when the file does: size, last modification time, chunk
  // size (chunkd binds an identifier to one chunk size) and path, plus a hash of the exact path,
  // because the libraries keep only [0-9A-Za-z_-] and two names could otherwise collide.
  function fnv1a(text) {
    let h = 0x811c9dc5;
    for (const ch of text) {
      h ^= ch.codePointAt(0);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    return h.toString(36);
  }

  function relativePath(file) {
    return file.relativePath || file.webkitRelativePath || file.name;
  }

  function identify(file, chunkSize) {
    const path = relativePath(file);
    const clean = path.replace(/[^0-9A-Za-z_-]/g, '').slice(-120);
    return `${file.size}-${file.lastModified || 0}-${chunkSize}-${fnv1a(path)}-${clean}`;
  }

  // ---------------------------------------------------------------- errors

  // chunkd's errors are JSON, {"error": code, "message": sentence}: show the sentence, and for
  // a missing or refused token, what to do about it.
  function explain(message) {
    if (message) {
      try {
        const body = JSON.parse(message);
        if (body && (body.error === 'unauthorized' || body.error === 'forbidden')) {
          const what = tokenInput.value.trim()
            ? 'This server refused the token under Settings'
            : 'This server needs a token: paste one under Settings';
          return `${what}, then press Retry. (${body.message || body.error})`;
        }
        if (body && typeof body.message === 'string' && body.message) {
          const sentence = body.message.charAt(0).toUpperCase() + body.message.slice(1);
          return `The server refused this upload: ${sentence.replace(/\.?$/, '.')}`;
        }
      } catch {
        // not JSON: fall through
      }
      return 'The server gave an answer this page does not understand. Its log may say more.';
    }
    return 'chunkd could not be reached, even after retrying. Check that it is running, then press Retry: the chunks it already has will not be sent again.';
  }

  // ---------------------------------------------------------------- request observer

  // The libraries do not say whether a chunk was skipped. Watch their requests to the chunk
  // endpoint: a test GET that answers 200 is a chunk the server already had.
  const stats = { active: 0, finished: 0, sent: 0, skipped: 0 };
  const rowsByIdentifier = new Map();

  function isUploadUrl(url) {
    try {
      return new URL(url, location.href).pathname === targetPath;
    } catch {
      return false;
    }
  }

  const realOpen = XMLHttpRequest.prototype.open;
  const realSend = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    this.chunkdRequest = isUploadUrl(url) ? { method: String(method).toUpperCase(), url: String(url) } : null;
    return realOpen.call(this, method, url, ...rest);
  };
  XMLHttpRequest.prototype.send = function (body) {
    const req = this.chunkdRequest;
    if (req) {
      this.addEventListener('load', () => observed(req, this.status));
      this.addEventListener('loadend', () => answered(this.status));
    }
    return realSend.call(this, body);
  };

  // Any answer from the server ends the "retrying" note of every row.
  function answered(status) {
    if (!status) return;
    for (const row of rows.values()) {
      if (row.retrying) {
        row.retrying = false;
        renderRow(row);
      }
    }
  }

  function observed(req, status) {
    if (status !== 200 && status !== 201) return;
    const params = new URL(req.url, location.href).searchParams;
    if (req.method === 'GET') {
      stats.skipped++;
      const id = params.get('resumableIdentifier') || params.get('flowIdentifier');
      const row = id && rowsByIdentifier.get(id);
      if (row) {
        row.skipped++;
        row.skippedBytes += Number(params.get('resumableCurrentChunkSize') || params.get('flowCurrentChunkSize')) || 0;
        renderRow(row);
      }
    } else {
      stats.sent++;
    }
    renderStats();
  }

  // ---------------------------------------------------------------- uploaders

  // One library instance per combination of settings: changing the settings never disturbs the
  // uploads already running.
  const uploaders = new Map();

  function uploader() {
    const s = settings();
    const key = `${s.lib}|${s.method}|${s.chunkSize}|${s.simultaneous}`;
    if (!uploaders.has(key)) uploaders.set(key, s.lib === 'flow' ? flowUploader(s) : resumableUploader(s));
    return uploaders.get(key);
  }

  function commonOptions(s) {
    return {
      target,
      chunkSize: s.chunkSize,
      simultaneousUploads: s.simultaneous,
      method: s.method,
      testChunks: true,
      maxChunkRetries: maxRetries,
      chunkRetryInterval: retryInterval,
      permanentErrors,
      generateUniqueIdentifier: (file) => identify(file, s.chunkSize),
      headers: () => authHeaders(),
    };
  }

  function resumableUploader(s) {
    const r = new window.Resumable({
      ...commonOptions(s),
      throttleProgressCallbacks: 0.25,
      minFileSizeErrorCallback: (file) => notify(`“${file.name}” is empty: there is nothing to upload.`),
    });
    const uploadingChunks = () =>
      r.files.reduce((n, f) => n + f.chunks.filter((c) => c.status() === 'uploading').length, 0);
    // Fill every free slot; Resumable.upload() does nothing while any chunk is in flight.
    const kick = () => {
      for (let free = s.simultaneous - uploadingChunks(); free > 0; free--) {
        if (!r.uploadNextChunk()) break;
      }
    };
    const api = {
      settings: s,
      add: (files) => r.addFiles(files),
      drop: (event) => r.handleDropEvent(event),
      control: (f) => ({
        // Not f.progress(), which says 1 as soon as one chunk has failed.
        progress: () => f.chunks.reduce((p, c) => p + (c.status() === 'error' ? 0 : c.progress(true)), 0),
        pause() {
          f.pause(true);
          f.abort();
          kick();
        },
        resume() {
          f.pause(false);
          kick();
        },
        cancel: () => f.cancel(),
        retry() {
          f.retry();
        },
        forget: () => r.removeFile(f),
      }),
    };
    r.on('fileAdded', (f) => addRow(api, f, f.file, f.uniqueIdentifier));
    r.on('filesAdded', () => kick());
    r.on('fileProgress', (f) => progressed(f));
    r.on('fileRetry', (f) => retrying(f));
    r.on('fileSuccess', (f, message) => succeeded(f, message));
    r.on('fileError', (f, message) => failed(f, message));
    return api;
  }

  function flowUploader(s) {
    const flow = new window.Flow({
      ...commonOptions(s),
      progressCallbacksInterval: 250,
      // Flow.js sends an octet chunk with the file's own type; say what it is.
      headers: (file, chunk, isTest) => ({
        ...authHeaders(),
        ...(s.method === 'octet' && !isTest ? { 'Content-Type': 'application/octet-stream' } : {}),
      }),
    });
    const api = {
      settings: s,
      add: (files) => flow.addFiles(files),
      drop: (event) => flow.onDrop(event),
      control: (f) => ({
        progress: () =>
          f.size ? f.chunks.reduce((p, c) => p + (c.status() === 'error' ? 0 : c.progress() * (c.endByte - c.startByte)), 0) / f.size : 0,
        pause: () => f.pause(),
        resume: () => f.resume(),
        cancel: () => f.cancel(),
        retry: () => f.retry(),
        forget: () => flow.removeFile(f),
      }),
    };
    flow.on('fileAdded', (f) => {
      addRow(api, f, f.file, f.uniqueIdentifier);
    });
    flow.on('filesSubmitted', () => flow.upload());
    flow.on('fileProgress', (f) => progressed(f));
    flow.on('fileRetry', (f) => retrying(f));
    flow.on('fileSuccess', (f, message) => succeeded(f, message));
    flow.on('fileError', (f, message) => failed(f, message));
    return api;
  }

  // ---------------------------------------------------------------- rows

  const rows = new Map(); // library file object -> row
  const queue = byId('queue');
  const done = byId('done');

  function addRow(api, libFile, file, identifier) {
    const li = byId('file-row').content.firstElementChild.cloneNode(true);
    const path = relativePath(file);
    const row = {
      api,
      libFile,
      ctl: api.control(libFile),
      li,
      identifier,
      name: path,
      size: file.size,
      state: 'queued',
      skipped: 0,
      skippedBytes: 0,
      started: performance.now(),
      sample: null,
      speed: null,
      retrying: false,
      lastProgress: 0,
    };
    li.querySelector('.file-icon').textContent = extension(file.name);
    li.querySelector('.file-name').textContent = path;
    li.querySelector('.file-name').title = path;
    li.querySelector('.file-size').textContent = formatBytes(file.size);
    li.querySelector('.bar').setAttribute('aria-label', `Progress of ${path}`);
    li.dataset.identifier = identifier;
    for (const [cls, verb] of [['.act-pause', 'Pause'], ['.act-resume', 'Resume'], ['.act-retry', 'Retry'], ['.act-cancel', 'Cancel']]) {
      li.querySelector(cls).setAttribute('aria-label', `${verb} ${path}`);
    }
    // Each action hides its own button: focus moves to the one that undoes it, so a keyboard
    // user is never dropped back at the top of the page.
    const act = (cls, action, next) =>
      li.querySelector(cls).addEventListener('click', () => {
        action(row);
        if (next) refocus(li.querySelector(next));
      });
    act('.act-pause', pauseRow, '.act-resume');
    act('.act-resume', resumeRow, '.act-pause');
    act('.act-retry', retryRow, '.act-pause');
    li.querySelector('.act-cancel').addEventListener('click', () => {
      const next = neighbourButton(li);
      cancelRow(row);
      refocus(next);
    });
    rows.set(libFile, row);
    rowsByIdentifier.set(identifier, row);
    queue.append(li);
    setState(row, 'uploading');
  }

  // Moves the focus to `el` if the element that had it is gone (hidden, disabled or removed).
  function refocus(el) {
    const lost = !document.activeElement || document.activeElement === document.body ||
      document.activeElement.hidden || document.activeElement.disabled || !document.activeElement.isConnected;
    if (lost && el && !el.hidden && !el.disabled) el.focus();
  }

  // Where the focus goes when a row of the queue goes away: the next row, the previous one, or
  // the file picker.
  function neighbourButton(li) {
    const other = li.nextElementSibling || li.previousElementSibling;
    return (other && other.querySelector('.file-actions button:not([hidden])')) || byId('pick-files-button');
  }

  function setState(row, state) {
    row.state = state;
    row.li.dataset.state = state;
    const li = row.li;
    li.querySelector('.act-pause').hidden = state !== 'uploading';
    li.querySelector('.act-resume').hidden = state !== 'paused';
    li.querySelector('.act-retry').hidden = state !== 'error';
    li.querySelector('.act-cancel').hidden = state === 'done';
    if (state !== 'uploading') {
      row.speed = null;
      row.sample = null;
    }
    renderRow(row);
    renderStats();
  }

  // Never backwards: a paused chunk loses its partial progress, a failed file its chunks.
  function progressOf(row) {
    if (row.state === 'done' || row.state === 'finishing') return 1;
    if (row.state !== 'error') row.lastProgress = Math.max(row.lastProgress, Math.min(1, row.ctl.progress()));
    return row.lastProgress;
  }

  function renderRow(row) {
    const li = row.li;
    const progress = progressOf(row);
    const pct = Math.floor(progress * 100);
    li.querySelector('.bar-fill').style.width = `${(progress * 100).toFixed(1)}%`;
    const bar = li.querySelector('.bar');
    bar.setAttribute('aria-valuenow', String(pct));
    let status;
    switch (row.state) {
      case 'uploading':
        if (row.retrying) {
          status = `${pct}% · no answer from the server, retrying…`;
        } else {
          const parts = [`${pct}%`];
          if (row.speed !== null && row.speed > 0) {
            parts.push(`${formatBytes(row.speed)}/s`);
            const left = (row.size * (1 - progress)) / row.speed;
            parts.push(left < 1 ? 'almost done' : `${formatDuration(left)} left`);
          } else {
            parts.push(progress > 0 ? 'measuring speed…' : 'starting…');
          }
          status = parts.join(' · ');
        }
        break;
      case 'paused':
        status = `Paused at ${pct}%`;
        break;
      case 'finishing':
        status = 'Finishing…';
        break;
      case 'error':
        status = `Stopped at ${pct}%`;
        break;
      default:
        status = 'Waiting';
    }
    li.querySelector('.file-status').textContent = status;
    bar.setAttribute('aria-valuetext', status);
    const skipped = li.querySelector('.file-skipped');
    skipped.hidden = row.skipped === 0;
    skipped.textContent = `${plural(row.skipped, 'chunk', 'chunks')} already on the server`;
  }

  function renderStats() {
    stats.active = [...rows.values()].filter((r) => r.state !== 'done').length;
    for (const [name, value] of Object.entries(stats)) {
      const dd = byId(`stat-${name}`);
      if (dd && dd.dataset.count !== String(value)) {
        dd.dataset.count = String(value);
        dd.textContent = value.toLocaleString('en');
      }
    }
    byId('queue-empty').hidden = queue.children.length > 0;
    byId('done-empty').hidden = done.children.length > 0;
    const states = [...rows.values()].map((r) => r.state);
    byId('pause-all').disabled = !states.includes('uploading');
    byId('resume-all').disabled = !states.includes('paused');
    byId('cancel-all').disabled = !states.some((s) => s !== 'done');
  }

  // Speed: bytes that really travelled (skipped chunks excluded), smoothed.
  function sample(row) {
    const now = performance.now();
    const moved = Math.max(0, progressOf(row) * row.size - row.skippedBytes);
    if (row.sample) {
      const dt = (now - row.sample.t) / 1000;
      if (dt < 0.2) return;
      const inst = Math.max(0, moved - row.sample.moved) / dt;
      row.speed = row.speed === null ? inst : 0.3 * inst + 0.7 * row.speed;
    }
    row.sample = { t: now, moved };
  }

  setInterval(() => {
    for (const row of rows.values()) {
      if (row.state === 'uploading') {
        sample(row);
        renderRow(row);
      }
    }
  }, 500);

  function progressed(f) {
    const row = rows.get(f);
    if (!row || row.state === 'done') return;
    renderRow(row);
  }

  function retrying(f) {
    const row = rows.get(f);
    if (!row) return;
    row.retrying = true;
    renderRow(row);
  }

  function pauseRow(row) {
    if (row.state !== 'uploading') return;
    row.ctl.pause();
    setState(row, 'paused');
  }

  function resumeRow(row) {
    if (row.state !== 'paused') return;
    setState(row, 'uploading');
    row.ctl.resume();
  }

  function retryRow(row) {
    if (row.state !== 'error') return;
    row.li.querySelector('.file-error').hidden = true;
    row.retrying = false;
    row.lastProgress = 0;
    setState(row, 'uploading');
    row.ctl.retry();
  }

  function removeRow(row) {
    rows.delete(row.libFile);
    if (rowsByIdentifier.get(row.identifier) === row) rowsByIdentifier.delete(row.identifier);
    row.li.remove();
    renderStats();
  }

  function cancelRow(row) {
    if (row.state === 'done') return;
    row.ctl.cancel();
    removeRow(row);
    notify(`Cancelled “${row.name}”. The chunks already sent stay on the server, so adding it again resumes.`);
  }

  function failed(f, message) {
    const row = rows.get(f);
    if (!row) return;
    const p = row.li.querySelector('.file-error');
    p.textContent = explain(message);
    p.hidden = false;
    row.retrying = false;
    setState(row, 'error');
  }

  async function succeeded(f, message) {
    const row = rows.get(f);
    if (!row || row.state === 'done' || row.state === 'finishing') return;
    setState(row, 'finishing');
    // The message is the reply to the request that finished last in the browser, which may
    // have been committed before another chunk's: if it does not say the file is complete,
    // ask the status endpoint.
    let reply = null;
    try {
      reply = JSON.parse(message);
    } catch {
      reply = null;
    }
    if (!reply || !reply.complete || !reply.download_url) {
      reply = await statusOf(row.identifier);
    }
    if (!reply || !reply.complete) {
      const p = row.li.querySelector('.file-error');
      p.textContent = 'Every chunk was sent, but the server does not report the file as complete. Press Retry to check the missing chunks.';
      p.hidden = false;
      setState(row, 'error');
      return;
    }
    row.ctl.forget();
    finish(row, reply);
  }

  async function statusOf(identifier) {
    const url = `${target}/status?resumableIdentifier=${encodeURIComponent(identifier)}`;
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const resp = await fetch(url, { cache: 'no-store', headers: authHeaders() });
        if (resp.ok) return await resp.json();
        if (resp.status !== 503) return null;
      } catch {
        // unreachable: try again
      }
      await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)));
    }
    return null;
  }

  // Links in chunkd's replies are relative to chunkd, which may be on another origin.
  const fromServer = (url) => new URL(url, new URL(target, location.href)).href;

  function finish(row, reply) {
    const href = fromServer(reply.download_url || `/files/${reply.file_id}`);
    const li = byId('done-row').content.firstElementChild.cloneNode(true);
    li.querySelector('.file-icon').textContent = extension(row.name);
    const name = li.querySelector('.file-name');
    name.textContent = row.name;
    name.href = href;
    li.querySelector('.file-size').textContent = formatBytes(row.size);
    const dl = li.querySelector('.act-download');
    dl.href = href;
    dl.setAttribute('aria-label', `Download ${row.name}`);
    const secs = (performance.now() - row.started) / 1000;
    li.querySelector('.file-status').textContent = `Uploaded in ${formatDuration(secs)}`;
    if (row.skipped) {
      const note = document.createElement('span');
      note.className = 'file-skipped';
      note.textContent = `${plural(row.skipped, 'chunk was', 'chunks were')} already on the server`;
      li.querySelector('.file-meta').append(note);
    }
    li.dataset.identifier = row.identifier;
    li.dataset.downloadUrl = href;
    done.prepend(li);
    row.state = 'done';
    removeRow(row);
    stats.finished++;
    renderStats();
    showPreview(li, row.identifier, reply);
  }

  // chunkd makes an image's thumbnail just after the upload completes. Ask the status call a few
  // times, soon and then less often, while it says `waiting`; then show thumbnail 0 in place of the
  // badge. A file that is not an image, or whose preview failed, keeps its badge.
  const PREVIEW_DELAYS = [150, 250, 400, 700, 1000, 1500, 2500, 4000, 6000];

  async function showPreview(li, identifier, reply) {
    li.dataset.preview = 'waiting';
    const badge = li.querySelector('.file-icon');
    let st = reply.thumbnails_status ? reply : null;
    for (const delay of PREVIEW_DELAYS) {
      if (st && st.thumbnails_status !== 'waiting') break;
      await new Promise((resolve) => setTimeout(resolve, delay));
      if (!li.isConnected) return;
      st = await statusOf(identifier);
    }
    const thumb = st && st.thumbnails_status === 'done' && Array.isArray(st.thumbnails) ? st.thumbnails[0] : null;
    if (!thumb) {
      // `done` without a thumbnail: not an image. `error`: an image chunkd could not read.
      // Still `waiting`, or no answer: say nothing, the badge stays.
      const state = st ? st.thumbnails_status : null;
      li.dataset.preview = state === 'done' ? 'none' : 'error';
      if (state === 'error') noPreview(li);
      return;
    }
    const img = new Image(thumb.width, thumb.height);
    img.className = 'file-thumb';
    img.alt = '';
    img.src = fromServer(thumb.url);
    try {
      await img.decode();
    } catch {
      li.dataset.preview = 'error';
      noPreview(li);
      return;
    }
    badge.replaceChildren(img);
    badge.classList.add('has-thumb');
    li.dataset.preview = 'done';
  }

  function noPreview(li) {
    const note = document.createElement('span');
    note.className = 'file-note';
    note.textContent = 'No preview';
    note.title = 'chunkd could not read this image to make a preview. The file itself is intact.';
    li.querySelector('.file-meta').append(note);
  }

  // ---------------------------------------------------------------- notices

  let noticeTimer = null;
  function notify(text) {
    const el = byId('notice');
    el.textContent = text;
    el.classList.add('is-visible');
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => el.classList.remove('is-visible'), 8000);
  }

  // ---------------------------------------------------------------- wiring

  function setUp() {
    byId('target-label').textContent = target;
    loadSettings();
    renderStats();
    const ready = Object.values(libraries).some((l) => l.ok);
    if (!ready) {
      byId('setup-error').hidden = false;
      for (const el of document.querySelectorAll('.drop button, #settings input, #settings select')) {
        el.disabled = true;
      }
      byId('drop').classList.add('is-disabled');
      return;
    }
    const missing = Object.values(libraries).filter((l) => !l.ok);
    if (missing.length) {
      notify(`${missing[0].label} is not installed: run npm ci --prefix static, then reload.`);
    }

    for (const [button, input] of [['pick-files-button', 'pick-files'], ['pick-folder-button', 'pick-folder']]) {
      byId(button).addEventListener('click', () => byId(input).click());
      byId(input).addEventListener('change', (e) => {
        const files = [...e.target.files];
        e.target.value = '';
        if (files.length) uploader().add(files);
      });
    }

    const drop = byId('drop');
    let depth = 0;
    drop.addEventListener('dragenter', (e) => {
      e.preventDefault();
      depth++;
      drop.classList.add('is-over');
    });
    drop.addEventListener('dragover', (e) => {
      e.preventDefault();
      e.dataTransfer.dropEffect = 'copy';
    });
    drop.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1);
      if (!depth) drop.classList.remove('is-over');
    });
    drop.addEventListener('drop', (e) => {
      e.preventDefault();
      depth = 0;
      drop.classList.remove('is-over');
      uploader().drop(e);
    });
    // A file dropped next to the zone must not replace the page.
    window.addEventListener('dragover', (e) => e.preventDefault());
    window.addEventListener('drop', (e) => e.preventDefault());

    byId('pause-all').addEventListener('click', () => {
      [...rows.values()].forEach(pauseRow);
      refocus(byId('resume-all'));
    });
    byId('resume-all').addEventListener('click', () => {
      [...rows.values()].forEach(resumeRow);
      refocus(byId('pause-all'));
    });
    byId('cancel-all').addEventListener('click', () => {
      const active = [...rows.values()].filter((r) => r.state !== 'done');
      active.forEach((r) => {
        r.ctl.cancel();
        removeRow(r);
      });
      if (active.length) notify(`Cancelled ${plural(active.length, 'upload', 'uploads')}.`);
      refocus(byId('pick-files-button'));
    });
  }

  // For the browser tests and the curious: read-only views of the page's state.
  window.chunkdDemo = {
    stats: () => ({ ...stats }),
    settings,
    rows: () => [...rows.values()].map((r) => ({ name: r.name, state: r.state, identifier: r.identifier, skipped: r.skipped })),
  };

  setUp();
})();
