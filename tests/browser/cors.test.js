// A page on another origin embeds Resumable.js (its own copy, from static/node_modules) with
// `target` pointing at chunkd. From an origin listed in --cors-origin the upload works, with
// credentials, Authorization and a custom header, and a cross-origin download; from any other
// origin it fails and nothing reaches the server.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const h = require('./harness');

const KiB = 1024;

const EMBED_PAGE = `<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>An app on another origin</title>
<label>Files <input type="file" id="files" multiple></label>
<script src="/resumable.js"></script>
<script>
  const params = new URLSearchParams(location.search);
  const target = params.get('target');
  window.results = { succeeded: [], failed: [] };
  const r = new Resumable({
    target,
    method: params.get('method') || 'multipart',
    chunkSize: 256 * 1024,
    simultaneousUploads: 3,
    withCredentials: true,
    // chunkd without --require-auth ignores the token, but the browser must be allowed to send it.
    headers: { 'X-Embed-Test': 'yes', Authorization: 'Bearer embed-test' },
    maxChunkRetries: 2,
    chunkRetryInterval: 200,
    generateUniqueIdentifier: (f) =>
      params.get('tag') + '-' + f.size + '-' + f.lastModified + '-' + f.name.replace(/[^0-9A-Za-z_-]/g, ''),
  });
  r.assignBrowse(document.getElementById('files'));
  r.on('filesAdded', () => r.upload());
  r.on('fileSuccess', async (file, message) => {
    try {
      let reply = JSON.parse(message);
      if (!reply.complete) {
        const status = await fetch(target + '/status?resumableIdentifier=' + encodeURIComponent(file.uniqueIdentifier), { credentials: 'include' });
        reply = await status.json();
      }
      const url = new URL(reply.download_url, target).href;
      const resp = await fetch(url, { credentials: 'include' });
      const digest = await crypto.subtle.digest('SHA-256', await resp.arrayBuffer());
      window.results.succeeded.push({
        name: file.fileName,
        url,
        disposition: resp.headers.get('content-disposition'),
        sha256: [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join(''),
      });
    } catch (e) {
      window.results.failed.push({ name: file.fileName, identifier: file.uniqueIdentifier, message: 'after upload: ' + e });
    }
  });
  r.on('fileError', (file, message) => {
    window.results.failed.push({ name: file.fileName, identifier: file.uniqueIdentifier, message });
  });
</script>
</html>
`;

const routes = {
  '/': ['text/html; charset=utf-8', EMBED_PAGE],
  '/resumable.js': [
    'text/javascript; charset=utf-8',
    fs.readFileSync(path.join(h.STATIC_DIR, 'node_modules', 'resumablejs', 'resumable.js')),
  ],
};

let allowed;
let denied;
let chunkd;
let browser;
let dataDir;

before(async () => {
  allowed = await h.originServer(routes);
  denied = await h.originServer(routes);
  dataDir = h.tempDir('cors');
  chunkd = await h.startChunkd({ dataDir, corsOrigins: allowed.origin });
  browser = await h.launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (chunkd) await chunkd.stop();
  if (allowed) await allowed.close();
  if (denied) await denied.close();
  h.removeDir(dataDir);
});

async function embed(origin, query) {
  const page = await browser.newPage();
  await page.goto(`${origin}/?${new URLSearchParams({ target: `${chunkd.url}/upload`, ...query })}`);
  return page;
}

for (const method of ['multipart', 'octet']) {
  test(`an allowed origin uploads through CORS (${method})`, async () => {
    const page = await embed(allowed.origin, { method, tag: `allowed-${method}` });
    const posts = [];
    page.on('requestfinished', async (req) => {
      if (req.method() === 'POST') posts.push({ headers: await req.allHeaders(), status: (await req.response()).status() });
    });
    const files = [h.makeFile(`cors-${method}-1.bin`, 900 * KiB + 1), h.makeFile(`cors-${method}-2.bin`, 300 * KiB)];
    await h.pick(page, files, '#files');
    const results = await h.waitFor(
      () => page.evaluate(() => (window.results.succeeded.length + window.results.failed.length >= 2 ? window.results : null)),
      { what: 'both uploads to end', timeout: 30000 },
    );
    assert.deepEqual(results.failed, []);
    for (const f of files) {
      const got = results.succeeded.find((s) => s.name === f.name);
      assert.ok(got, `${f.name} succeeded`);
      assert.equal(got.sha256, h.sha256(f.buffer), 'the page downloaded the same bytes cross-origin');
      assert.match(got.disposition, /^attachment/, 'Content-Disposition is exposed to the page');
      assert.equal(h.sha256(await h.download(got.url)), h.sha256(f.buffer));
    }
    await h.waitFor(() => posts.length >= 4, { what: 'the 4 chunk POSTs' });
    for (const p of posts) {
      assert.equal(p.status, 200);
      assert.equal(p.headers['x-embed-test'], 'yes', 'the custom header went through');
      assert.equal(p.headers.authorization, 'Bearer embed-test', 'Authorization went through');
    }
    await page.close();
  });
}

test('an origin that is not allowed cannot upload', async () => {
  const page = await embed(denied.origin, { method: 'multipart', tag: 'denied' });
  const posts = [];
  page.on('requestfinished', (req) => {
    if (req.method() === 'POST') posts.push(req.url());
  });
  const file = h.makeFile('cors-denied.bin', 600 * KiB);
  await h.pick(page, [file], '#files');
  const results = await h.waitFor(
    () => page.evaluate(() => (window.results.succeeded.length + window.results.failed.length >= 1 ? window.results : null)),
    { what: 'the upload to end', timeout: 30000 },
  );
  // Resumable.js 1.1.0 can report one failure per chunk in flight: wait for the others too.
  await h.sleep(1000);
  const final = await page.evaluate(() => window.results);
  assert.equal(final.succeeded.length, 0, 'nothing succeeded');
  assert.ok(final.failed.length >= 1, 'the upload failed');
  for (const f of final.failed) {
    assert.equal(f.name, file.name);
    assert.equal(f.message, '', 'the browser hid any answer from the page');
  }
  assert.deepEqual(posts, [], 'no chunk POST got through');
  // The server never saw a chunk: the upload is unknown to it.
  const status = await fetch(
    `${chunkd.url}/upload/status?resumableIdentifier=${encodeURIComponent(results.failed[0].identifier)}`,
  );
  assert.equal(status.status, 404);
  await page.close();
});

test('preflight answers: allowed origin, headers asked, Max-Age; nothing for others', async () => {
  const ask = (origin) =>
    fetch(`${chunkd.url}/upload`, {
      method: 'OPTIONS',
      headers: {
        Origin: origin,
        'Access-Control-Request-Method': 'POST',
        'Access-Control-Request-Headers': 'authorization, content-type, x-embed-test',
      },
    });
  const ok = await ask(allowed.origin);
  assert.equal(ok.status, 204);
  assert.equal(ok.headers.get('access-control-allow-origin'), allowed.origin);
  assert.equal(ok.headers.get('access-control-allow-credentials'), 'true');
  assert.match(ok.headers.get('access-control-allow-methods'), /POST/);
  assert.equal(ok.headers.get('access-control-allow-headers'), 'authorization, content-type, x-embed-test');
  assert.match(ok.headers.get('vary'), /Origin/);
  assert.equal(ok.headers.get('access-control-max-age'), '7200');
  const no = await ask(denied.origin);
  assert.equal(no.headers.get('access-control-allow-origin'), null);
});
