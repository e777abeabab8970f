// A small uploader that speaks chunkd's chunk protocol with fetch: octet chunks, three in
// flight, and a resume that asks the status endpoint once, then sends only what is missing.
'use strict';

const CHUNK = 1024 * 1024;
const IN_FLIGHT = 3;

function identifier(file) {
  return `${file.size}-${file.lastModified}-${file.name}`.replace(/[^0-9A-Za-z_-]/g, '');
}

function row(file) {
  const li = document.createElement('li');
  li.innerHTML = '<div class="name"></div><progress max="1" value="0"></progress><div class="meta"></div>';
  li.querySelector('.name').textContent = file.name;
  document.getElementById('list').append(li);
  return {
    progress: li.querySelector('progress'),
    say(text, isError) {
      const meta = li.querySelector('.meta');
      meta.textContent = text;
      meta.classList.toggle('error', !!isError);
    },
    link(url) {
      const meta = li.querySelector('.meta');
      meta.textContent = 'Done. ';
      const a = document.createElement('a');
      a.href = url;
      a.textContent = 'Download';
      meta.append(a);
    },
  };
}

async function errorText(resp) {
  try {
    return (await resp.json()).message;
  } catch {
    return `the server answered ${resp.status}`;
  }
}

async function upload(file) {
  const ui = row(file);
  const id = identifier(file);
  const total = Math.max(Math.floor(file.size / CHUNK), 1);
  const base = {
    resumableChunkSize: CHUNK, resumableTotalSize: file.size, resumableIdentifier: id,
    resumableFilename: file.name, resumableRelativePath: file.name,
    resumableTotalChunks: total, resumableType: file.type,
  };
  const have = new Set();
  const st = await fetch(`/upload/status?resumableIdentifier=${encodeURIComponent(id)}`);
  if (st.ok) (await st.json()).received.forEach((n) => have.add(n));
  const todo = [];
  for (let n = 1; n <= total; n++) if (!have.has(n)) todo.push(n);
  let done = total - todo.length;
  let last = null;
  const started = performance.now();
  const show = () => {
    ui.progress.value = done / total;
    const secs = (performance.now() - started) / 1000;
    const rate = secs > 0 ? ((done - (total - todo.length)) * CHUNK) / secs / 1e6 : 0;
    ui.say(`${done} of ${total} chunks` + (have.size ? `, ${have.size} already on the server` : '') +
      (rate > 0 ? `, ${rate.toFixed(1)} MB/s` : ''));
  };
  show();
  const send = async (n) => {
    const start = (n - 1) * CHUNK;
    const end = n === total ? file.size : start + CHUNK;
    const q = new URLSearchParams({ ...base, resumableChunkNumber: n, resumableCurrentChunkSize: end - start });
    for (let attempt = 0; ; attempt++) {
      const resp = await fetch(`/upload?${q}`, {
        method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: file.slice(start, end),
      }).catch(() => null);
      if (resp && resp.ok) return resp.json();
      if (resp && resp.status !== 503) throw new Error(await errorText(resp));
      if (attempt >= 5) throw new Error(resp ? await errorText(resp) : 'the server cannot be reached');
      await new Promise((r) => setTimeout(r, 1000 * (attempt + 1)));
    }
  };
  const worker = async () => {
    while (todo.length) {
      const reply = await send(todo.shift());
      done++;
      if (reply.complete) last = reply;
      show();
    }
  };
  try {
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    if (!last) {
      const s = await fetch(`/upload/status?resumableIdentifier=${encodeURIComponent(id)}`);
      last = await s.json();
    }
    ui.progress.value = 1;
    ui.link(last.download_url || `/files/${last.file_id}`);
  } catch (e) {
    ui.say(`Upload failed: ${e.message}`, true);
  }
}

document.getElementById('pick').addEventListener('change', (ev) => {
  for (const f of ev.target.files) upload(f);
  ev.target.value = '';
});
