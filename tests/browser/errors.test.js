// A refusal from chunkd reaches the person as chunkd's own sentence, and the other files of the
// batch carry on.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');

const h = require('./harness');

const KiB = 1024;

let chunkd;
let browser;
let dataDir;

before(async () => {
  dataDir = h.tempDir('errors');
  chunkd = await h.startChunkd({ dataDir, args: ['--max-file-size', '1MiB'] });
  browser = await h.launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (chunkd) await chunkd.stop();
  h.removeDir(dataDir);
});

for (const lib of ['resumable', 'flow']) {
  test(`${lib}: a file over --max-file-size shows chunkd's message`, async () => {
    const page = await browser.newPage();
    await page.goto(`${chunkd.url}/?lib=${lib}&chunkSize=262144&simultaneous=2`);
    const small = h.makeFile(`${lib}-fits.bin`, 600 * KiB);
    const big = h.makeFile(`${lib}-too-big.bin`, 1536 * KiB);
    await h.pick(page, [big, small]);

    const row = page.locator('#queue li[data-state="error"]');
    await row.waitFor({ timeout: 20000 });
    const message = await row.locator('.file-error').textContent();
    assert.match(message, /^The server refused this upload: The file is 1572864 bytes, more than this server accepts/);
    assert.equal(await row.locator('.file-name').textContent(), big.name);
    assert.ok(await row.getByRole('button', { name: /^Retry / }).isVisible(), 'a Retry button');
    assert.equal(await page.getAttribute('.file-error:not([hidden])', 'role'), 'alert', 'announced');

    await page.locator('#done li').first().waitFor({ timeout: 20000 });
    await h.checkDownloads(assert, page, [small]);
    await page.close();
  });
}
