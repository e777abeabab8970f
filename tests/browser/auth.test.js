// The demo page against chunkd with --require-auth: without a token an upload stops at once
// with a sentence that says what to do; a token pasted under Settings serves the Retry; the
// finished file's signed link downloads with no token; the token stays in the tab only.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');

const h = require('./harness');

const KiB = 1024;

let chunkd;
let browser;
let dataDir;

/** A token signed with the data directory's secret, by `chunkd token`. */
function mintToken(sub) {
  const run = spawnSync(
    h.chunkdBinary(),
    ['token', '--sub', sub, '--company', 'acme', '--ttl', '1h', '--data', dataDir],
    { encoding: 'utf8', env: h.chunkdEnv() },
  );
  assert.equal(run.status, 0, run.stderr);
  return run.stdout.trim();
}

before(async () => {
  dataDir = h.tempDir('auth');
  chunkd = await h.startChunkd({ dataDir, args: ['--require-auth'] });
  browser = await h.launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (chunkd) await chunkd.stop();
  h.removeDir(dataDir);
});

for (const lib of ['resumable', 'flow']) {
  test(`${lib}: no token stops the upload at once; a pasted token serves the Retry`, async () => {
    const page = await browser.newPage();
    const counts = h.countRequests(page);
    await page.goto(`${chunkd.url}/?lib=${lib}&chunkSize=262144&simultaneous=2`);
    const file = h.makeFile(`${lib}-private.bin`, 700 * KiB);
    await h.pick(page, [file]);

    const row = page.locator('#queue li[data-state="error"]');
    await row.waitFor({ timeout: 20000 });
    assert.match(
      await row.locator('.file-error').textContent(),
      /^This server needs a token: paste one under Settings, then press Retry\./,
    );
    // 401 is final for the libraries: one refusal per chunk in flight, not a minute of retries.
    assert.ok(counts.post <= 2 && counts.get <= 3, `requests: ${counts.get} GET, ${counts.post} POST`);

    await page.fill('#token', 'not-a-token');
    await row.getByRole('button', { name: /^Retry / }).click();
    await page.locator('#queue li[data-state="error"]').waitFor({ timeout: 20000 });
    assert.match(
      await page.locator('#queue li .file-error').textContent(),
      /^This server refused the token under Settings, then press Retry\./,
    );

    await page.fill('#token', mintToken(`user-${lib}`));
    await page.locator('#queue li').getByRole('button', { name: /^Retry / }).click();
    await page.locator('#done li').first().waitFor({ timeout: 20000 });
    const [done] = await h.finishedFiles(page);
    assert.match(done.url, /[?&]sig=/, 'the download link is signed');
    await h.checkDownloads(assert, page, [file]);

    // The token survives a reload of the tab, but is never stored with the settings.
    await page.reload();
    assert.notEqual(await page.inputValue('#token'), '');
    const saved = await page.evaluate(() => JSON.stringify({ ...localStorage }));
    assert.doesNotMatch(saved, /eyJ/, 'no token in localStorage');
    await page.close();
  });
}
