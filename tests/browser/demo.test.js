// The demo page in headless Chromium against the real chunkd: uploads with Resumable.js
// (multipart and octet) and Flow.js, pause and resume, a reload mid-upload, thumbnails in the
// finished list, the page without its libraries, and the screenshot in docs/demo.png.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const h = require('./harness');

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 256 * KiB;

let chunkd;
let browser;
let dataDir;

before(async () => {
  dataDir = h.tempDir('demo');
  chunkd = await h.startChunkd({ dataDir });
  browser = await h.launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (chunkd) {
    const { code, signal } = await chunkd.stop();
    assert.equal(code, 0, `chunkd exits cleanly on SIGTERM (signal ${signal})\n${chunkd.log()}`);
  }
  h.removeDir(dataDir);
});

function demoUrl(params) {
  return `${chunkd.url}/?${new URLSearchParams({ chunkSize: String(CHUNK), ...params })}`;
}

async function openDemo(params) {
  const page = await browser.newPage();
  await page.goto(demoUrl(params));
  await page.waitForFunction(() => window.chunkdDemo);
  return page;
}

const stats = (page) => page.evaluate(() => window.chunkdDemo.stats());

async function waitFinished(page, n, timeout = 60000) {
  await page.waitForFunction(
    (n) => document.querySelectorAll('#done li').length >= n || document.querySelector('.file-error:not([hidden])'),
    n,
    { timeout },
  );
  const errors = await page.$$eval('.file-error:not([hidden])', (ps) => ps.map((p) => p.textContent));
  assert.deepEqual(errors, [], 'no upload failed');
}

for (const [lib, method] of [
  ['resumable', 'multipart'],
  ['resumable', 'octet'],
  ['flow', 'multipart'],
  ['flow', 'octet'],
]) {
  test(`${lib} ${method}: several files at once, downloads match`, async () => {
    const page = await openDemo({ lib, method, simultaneous: '3' });
    const requests = h.countRequests(page);
    const files = [
      h.makeFile(`${lib}-${method}-a.bin`, 1 * MiB + 300 * KiB + 12345),
      h.makeFile(`${lib}-${method}-b.txt`, 800 * KiB),
      h.makeFile(`${lib}-${method}-c.bin`, 300 * KiB + 1),
    ];
    await h.pick(page, files);
    await waitFinished(page, files.length);
    await h.checkDownloads(assert, page, files);

    const chunks = files.reduce((n, f) => n + h.chunkCount(f.buffer.length, CHUNK), 0);
    assert.equal(requests.post, chunks, 'one POST per chunk');
    const s = await stats(page);
    assert.equal(s.sent, chunks);
    assert.equal(s.skipped, 0);
    assert.equal(s.finished, files.length);
    for (const req of requests.posts) {
      const type = req.headers()['content-type'] || '';
      if (method === 'octet') assert.equal(type, 'application/octet-stream');
      else assert.match(type, /^multipart\/form-data; boundary=/);
    }
    await page.close();
  });
}

test('a whole folder, with Flow.js', async () => {
  const page = await openDemo({ lib: 'flow', method: 'multipart', simultaneous: '3' });
  const folder = h.makeFolder('holiday', [400 * KiB + 1, 300 * KiB, 500 * KiB + 2]);
  await page.setInputFiles('#pick-folder', folder.dir);
  await waitFinished(page, folder.files.length);
  // Listed by path inside the folder, each downloadable.
  await h.checkDownloads(assert, page, folder.files);
  await page.close();
});

test('files dropped on the drop zone', async () => {
  const page = await openDemo({ lib: 'resumable', method: 'octet' });
  const dataTransfer = await page.evaluateHandle(() => {
    const dt = new DataTransfer();
    for (const [name, size] of [['dropped-1.bin', 700 * 1024 + 5], ['dropped-2.bin', 300 * 1024]]) {
      const bytes = new Uint8Array(size);
      for (let i = 0; i < size; i++) bytes[i] = (i * 31 + name.length) & 255;
      dt.items.add(new File([bytes], name, { lastModified: 1767225600000 }));
    }
    return dt;
  });
  await page.dispatchEvent('#drop', 'dragenter', { dataTransfer });
  assert.match(await page.getAttribute('#drop', 'class'), /is-over/, 'the zone shows it will take the files');
  await page.dispatchEvent('#drop', 'drop', { dataTransfer });
  await waitFinished(page, 2);
  const files = ['dropped-1.bin', 'dropped-2.bin'].map((name) => {
    const size = name === 'dropped-1.bin' ? 700 * KiB + 5 : 300 * KiB;
    const buffer = Buffer.alloc(size);
    for (let i = 0; i < size; i++) buffer[i] = (i * 31 + name.length) & 255;
    return { name, buffer };
  });
  await h.checkDownloads(assert, page, files);
  await page.close();
});

test('pause then resume', async () => {
  const page = await openDemo({ lib: 'resumable', method: 'octet', simultaneous: '2' });
  const slow = await h.slowChunks(page, 150);
  const requests = h.countRequests(page);
  const file = h.makeFile('pause-me.bin', 2 * MiB + 77);
  await h.pick(page, [file]);
  const row = page.locator('#queue li').first();
  await h.waitFor(async () => (await stats(page)).sent >= 3, { what: '3 chunks sent' });
  // By keyboard: Enter on Pause, and the focus lands on Resume, which replaces it.
  const focused = () => page.evaluate(() => document.activeElement.getAttribute('aria-label'));
  await row.getByRole('button', { name: /^Pause / }).focus();
  await page.keyboard.press('Enter');
  assert.equal(await row.getAttribute('data-state'), 'paused');
  assert.equal(await focused(), `Resume ${file.name}`, 'the focus moves to Resume');
  assert.match(await row.locator('.bar').getAttribute('aria-valuetext'), /^Paused at \d+%$/);
  await h.sleep(300); // requests already aborted may still land
  const postsAtPause = requests.post;
  const sentAtPause = (await stats(page)).sent;
  await h.sleep(1200);
  assert.equal(requests.post, postsAtPause, 'no chunk is sent while paused');
  assert.equal((await stats(page)).sent, sentAtPause);
  assert.match(await row.locator('.file-status').textContent(), /^Paused at \d+%$/);
  assert.ok(sentAtPause < h.chunkCount(file.buffer.length, CHUNK), 'paused before the end');

  slow.ms = 0;
  await page.keyboard.press('Enter');
  assert.equal(await row.getAttribute('data-state'), 'uploading');
  assert.equal(await focused(), `Pause ${file.name}`, 'and back to Pause');
  await waitFinished(page, 1);
  await h.checkDownloads(assert, page, [file]);
  await page.close();
});

test('a reload mid-upload: the same files again skip the chunks the server has', async () => {
  const params = { lib: 'resumable', method: 'multipart', simultaneous: '1' };
  const files = [h.makeFile('reload-a.bin', 1536 * KiB + 5), h.makeFile('reload-b.bin', 1 * MiB + 9)];
  const total = files.reduce((n, f) => n + h.chunkCount(f.buffer.length, CHUNK), 0);

  const page = await openDemo(params);
  await h.slowChunks(page, 100);
  await h.pick(page, files);
  await h.waitFor(async () => (await stats(page)).sent >= 4, { what: '4 chunks sent' });
  const sentBefore = (await stats(page)).sent;
  await page.reload();
  await page.waitForFunction(() => window.chunkdDemo);
  assert.equal((await stats(page)).sent, 0, 'a fresh page');

  const requests = h.countRequests(page);
  await h.pick(page, files);
  await waitFinished(page, files.length);
  await h.checkDownloads(assert, page, files);
  const s = await stats(page);
  assert.ok(s.skipped >= sentBefore, `skipped ${s.skipped} >= ${sentBefore} acknowledged before the reload`);
  assert.equal(requests.post, total - s.skipped, 'only the missing chunks are sent');
  assert.ok(requests.post < total, 'fewer POSTs than chunks');
  assert.equal(requests.get, total, 'one probe per chunk');
  const notes = await page.$$eval('#done li .file-meta', (els) => els.map((e) => e.textContent));
  assert.ok(notes.some((t) => /already on the server/.test(t)), 'the finished list says what was skipped');
  await page.close();
});

test('an image gets its thumbnail in the finished list; other files keep their badge', async () => {
  const page = await openDemo({ lib: 'resumable', method: 'multipart', simultaneous: '3' });
  const image = h.makePng('lake.png', 960, 640);
  const text = h.makeFile('notes.txt', 20 * KiB);
  const broken = h.makeFile('broken.png', 40 * KiB); // random bytes: no image in them
  await h.pick(page, [image, text, broken]);
  await waitFinished(page, 3);
  await page.waitForFunction(() => !document.querySelector('#done li[data-preview="waiting"]'), null, { timeout: 30000 });
  await h.checkDownloads(assert, page, [image, text, broken]);
  const row = (name) => page.locator('#done li', { has: page.locator('.file-name', { hasText: name }) });

  const thumb = row('lake.png').locator('img.file-thumb');
  assert.equal(await row('lake.png').getAttribute('data-preview'), 'done');
  assert.ok(await thumb.isVisible(), 'the thumbnail is visible');
  const shown = await thumb.evaluate((img) => ({ w: img.naturalWidth, h: img.naturalHeight, src: img.src, box: img.getBoundingClientRect().width }));
  assert.deepEqual([shown.w, shown.h], [600, 400], 'the browser decoded the 600×400 thumbnail');
  assert.ok(shown.box >= 32, `shown at ${shown.box} px`);
  assert.match(shown.src, /\/files\/[0-9a-f]{32}\/thumbnails\/0$/);
  const png = await h.download(shown.src);
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

  assert.equal(await row('notes.txt').getAttribute('data-preview'), 'none');
  assert.equal(await row('notes.txt').locator('img').count(), 0);
  assert.equal(await row('notes.txt').locator('.file-icon').textContent(), 'TXT');

  assert.equal(await row('broken.png').getAttribute('data-preview'), 'error');
  assert.equal(await row('broken.png').locator('img').count(), 0);
  assert.equal(await row('broken.png').locator('.file-icon').textContent(), 'PNG');
  assert.equal(await row('broken.png').locator('.file-note').textContent(), 'No preview');
  await page.close();
});

test('without its libraries the page says how to install them', async () => {
  const page = await browser.newPage();
  await page.route(
    (url) => url.pathname.startsWith('/node_modules/'),
    (route) => route.fulfill({ status: 404, contentType: 'application/json', body: '{"error":"not_found"}' }),
  );
  await page.goto(`${chunkd.url}/`);
  const banner = page.locator('#setup-error');
  await banner.waitFor({ state: 'visible' });
  assert.match(await banner.textContent(), /npm ci --prefix static/);
  assert.ok(await page.locator('#pick-files-button').isDisabled());
  await page.close();
});

test('screenshot of the page after finished uploads', async () => {
  const page = await openDemo({ lib: 'resumable', method: 'multipart', simultaneous: '3', chunkSize: String(512 * KiB) });
  // Part of the video reaches the server first, as if a previous visit had been interrupted.
  const video = h.makeFile('launch-video.mp4', 3 * MiB + 123);
  const slow = await h.slowChunks(page, 80);
  await h.pick(page, [video]);
  await h.waitFor(async () => (await stats(page)).sent >= 3, { what: '3 chunks sent' });
  await page.reload();
  await page.waitForFunction(() => window.chunkdDemo);
  slow.ms = 0;
  const finished = [
    video,
    h.makeFile('quarterly-report.pdf', 1 * MiB + 300 * KiB),
    h.makeFile('customers-2026.csv', 600 * KiB + 999),
    h.makePng('lake-at-dusk.png', 1800, 1200),
  ];
  await h.pick(page, finished);
  await waitFinished(page, finished.length);
  await h.checkDownloads(assert, page, finished);
  await page.locator('#done li[data-preview="done"] img.file-thumb').waitFor({ timeout: 30000 });

  // Then two more: one paused, one on its way.
  slow.ms = 600;
  await h.pick(page, [h.makeFile('brand-assets.zip', 5 * MiB)]);
  const paused = page.locator('#queue li').first();
  await h.waitFor(async () => /left/.test(await paused.locator('.file-status').textContent()), { what: 'a speed' });
  await h.waitFor(async () => Number(await paused.locator('.bar').getAttribute('aria-valuenow')) >= 30, { what: '30%' });
  await paused.getByRole('button', { name: /^Pause / }).click();
  await h.pick(page, [h.makeFile('interview-raw.wav', 8 * MiB)]);
  const moving = page.locator('#queue li').nth(1);
  await h.waitFor(async () => /left/.test(await moving.locator('.file-status').textContent()), { what: 'a speed' });
  await h.sleep(300);
  const out = h.screenshotPath();
  fs.mkdirSync(path.dirname(out), { recursive: true });
  await page.screenshot({ path: out, fullPage: true });
  assert.ok(fs.statSync(out).size > 10000, 'a real screenshot');
  await page.getByRole('button', { name: 'Cancel all' }).click();
  await page.close();
});
