// chunkd stopped (SIGTERM) and started again on the same data directory in the middle of an
// upload from the demo page: the libraries retry, the upload finishes, the bytes match.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');

const h = require('./harness');

const KiB = 1024;
const CHUNK = 256 * KiB;

let browser;

before(async () => {
  browser = await h.launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
});

for (const [lib, method] of [
  ['resumable', 'multipart'],
  ['flow', 'octet'],
]) {
  test(`${lib} ${method}: a restart of chunkd mid-upload`, async () => {
    const dataDir = h.tempDir('restart');
    // A short grace, so that the stop does not wait for the browser's idle connections.
    const args = ['--shutdown-grace', '2'];
    let chunkd = await h.startChunkd({ dataDir, args });
    const port = chunkd.port;
    try {
      const page = await browser.newPage();
      const query = new URLSearchParams({
        lib,
        method,
        chunkSize: String(CHUNK),
        simultaneous: '2',
        retryInterval: '250',
        maxRetries: '400',
      });
      await page.goto(`${chunkd.url}/?${query}`);
      await page.waitForFunction(() => window.chunkdDemo);
      const slow = await h.slowChunks(page, 100);
      const files = [h.makeFile(`restart-${lib}-a.bin`, 1536 * KiB + 3), h.makeFile(`restart-${lib}-b.bin`, 1024 * KiB + 7)];
      const total = files.reduce((n, f) => n + h.chunkCount(f.buffer.length, CHUNK), 0);
      await h.pick(page, files);
      await h.waitFor(async () => (await page.evaluate(() => window.chunkdDemo.stats())).sent >= 3, {
        what: '3 chunks sent',
      });

      const { code } = await chunkd.stop();
      assert.equal(code, 0, 'chunkd exits cleanly on SIGTERM');
      const sentWhileUp = (await page.evaluate(() => window.chunkdDemo.stats())).sent;
      assert.ok(sentWhileUp < total, 'stopped mid-upload');
      // The page notices, and keeps retrying.
      await page.locator('#queue .file-status', { hasText: 'retrying' }).first().waitFor({ timeout: 15000 });
      await h.sleep(500);

      chunkd = await h.startChunkd({ dataDir, listen: `127.0.0.1:${port}`, args });
      slow.ms = 0;
      await page.waitForFunction(
        (n) => document.querySelectorAll('#done li').length >= n || document.querySelector('.file-error:not([hidden])'),
        files.length,
        { timeout: 60000 },
      );
      const errors = await page.$$eval('.file-error:not([hidden])', (ps) => ps.map((p) => p.textContent));
      assert.deepEqual(errors, [], 'no upload failed');
      await h.checkDownloads(assert, page, files);
      await page.close();
    } finally {
      await chunkd.stop();
      h.removeDir(dataDir);
    }
  });
}
