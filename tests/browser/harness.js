// Shared helpers of the browser tests: the real chunkd binary, headless Chromium through
// playwright-core (never a downloaded browser), generated files, downloads and hashes.
'use strict';

const { spawn, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const zlib = require('node:zlib');

const { chromium } = require('playwright-core');

const ROOT = path.resolve(__dirname, '..', '..');
const STATIC_DIR = path.join(ROOT, 'static');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `chunkd-browser-${prefix}-`));
}

function removeDir(dir) {
  fs.rmSync(dir, { recursive: true, force: true });
}

let builtBinary = null;
let buildError = null;

/** The chunkd binary: $CHUNKD_BIN if set, else `cargo build --locked --bin chunkd` once. */
function chunkdBinary() {
  if (process.env.CHUNKD_BIN) return process.env.CHUNKD_BIN;
  if (builtBinary) return builtBinary;
  if (buildError) throw buildError;
  const built = spawnSync('cargo', ['build', '--locked', '--quiet', '--bin', 'chunkd'], {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (built.status !== 0) {
    buildError = new Error('cargo build --locked --bin chunkd failed');
    throw buildError;
  }
  const targetDir = process.env.CARGO_TARGET_DIR
    ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR)
    : path.join(ROOT, 'target');
  builtBinary = path.join(targetDir, 'debug', 'chunkd');
  return builtBinary;
}

/** The environment for chunkd: none of the caller's CHUNKD_* settings leak in. */
function chunkdEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('CHUNKD_') || k === 'CHUNKD_LOG') env[k] = v;
  }
  return env;
}

/**
 * Starts chunkd on `listen` (default 127.0.0.1:0) with its data in `dataDir`, and resolves once
 * it prints `chunkd listening on http://IP:PORT`. `stop()` sends SIGTERM and waits for the exit.
 */
async function startChunkd({ dataDir, listen = '127.0.0.1:0', corsOrigins, args = [] }) {
  const argv = ['--listen', listen, '--data', dataDir, '--static-dir', STATIC_DIR, ...args];
  if (corsOrigins) argv.push('--cors-origin', corsOrigins);
  // A restart on the same port can meet the old socket for a moment: try a few times.
  for (let attempt = 1; ; attempt++) {
    try {
      return await spawnChunkd(argv);
    } catch (e) {
      if (attempt >= 10 || listen.endsWith(':0')) throw e;
      await sleep(300);
    }
  }
}

function spawnChunkd(argv) {
  const proc = spawn(chunkdBinary(), argv, { env: chunkdEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stderr.on('data', (d) => {
    log = (log + d).slice(-20000);
  });
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: proc.stdout });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`chunkd did not start within 30 s:\n${log}`));
    }, 30000);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`chunkd exited (${code ?? signal}) before listening:\n${log}`));
    });
    lines.on('line', (line) => {
      const m = /^chunkd listening on (http:\/\/[0-9.]+:(\d+))$/.exec(line.trim());
      if (!m) return;
      clearTimeout(timer);
      resolve({
        url: m[1],
        port: Number(m[2]),
        proc,
        log: () => log,
        async stop() {
          if (proc.exitCode === null && proc.signalCode === null) {
            proc.kill('SIGTERM');
            const t = setTimeout(() => proc.kill('SIGKILL'), 15000);
            const result = await exited;
            clearTimeout(t);
            return result;
          }
          return exited;
        },
      });
    });
  });
}

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/** Headless Chromium with a fresh profile in a temporary directory. */
async function launchBrowser() {
  const profile = tempDir('profile');
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 800 },
    deviceScaleFactor: 1,
    colorScheme: 'light',
    reducedMotion: 'reduce',
  });
  return {
    context,
    async newPage() {
      const page = await context.newPage();
      page.on('pageerror', (e) => process.stderr.write(`page error: ${e.message}\n`));
      return page;
    },
    async close() {
      await context.close();
      removeDir(profile);
    },
  };
}

let filesDir = null;
const MTIME = new Date('2026-01-01T00:00:00Z');

/**
 * A file of `size` random bytes on disk, for setInputFiles: `path`, `name` and `buffer`. It has a
 * fixed modification time, so the page gives it the same identifier every time it is added.
 * (Playwright gives a file passed as a buffer a new lastModified each time.)
 */
function makeFile(name, size) {
  return writeFile(name, crypto.randomBytes(size));
}

function writeFile(name, buffer) {
  if (!filesDir) {
    filesDir = tempDir('files');
    process.once('exit', () => removeDir(filesDir));
  }
  const file = path.join(filesDir, name);
  fs.writeFileSync(file, buffer);
  fs.utimesSync(file, MTIME, MTIME);
  return { name, path: file, buffer };
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 255] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A PNG (8-bit RGB) of `width` × `height` pixels, each `pixel(u, v)` = [r, g, b], u and v in [0, 1). */
function encodePng(width, height, pixel) {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0, o = 0; y < height; y++) {
    raw[o++] = 0; // filter: none
    for (let x = 0; x < width; x++) {
      const [r, g, b] = pixel(x / width, y / height);
      raw[o++] = r;
      raw[o++] = g;
      raw[o++] = b;
    }
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8 bits, RGB, deflate, no filter method, no interlace
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** A landscape at dusk: sky, sun, two mountain ridges and a lake. Something worth a thumbnail. */
function landscape(u, v) {
  const mix = (a, b, t) => a.map((x, i) => Math.round(x + (b[i] - x) * Math.min(Math.max(t, 0), 1)));
  const far = 0.47 + 0.07 * Math.sin(u * 6.5 + 1) + 0.025 * Math.sin(u * 19 + 2);
  const near = 0.58 + 0.06 * Math.sin(u * 4.2 + 3.5) + 0.02 * Math.sin(u * 27);
  const shore = 0.7;
  const sun = Math.hypot(u - 0.68, (v - 0.4) * 0.66);
  if (v >= shore) {
    const depth = (v - shore) / (1 - shore);
    let c = mix([232, 146, 120], [32, 52, 96], depth * 1.6);
    // The sun's reflection: a shimmering column under it.
    const glint = Math.max(0, 1 - Math.abs(u - 0.68) * 14) * (0.5 + 0.5 * Math.sin(v * 260));
    c = mix(c, [255, 226, 170], glint * (1 - depth) * 0.9);
    return c;
  }
  if (v >= near) return mix([64, 48, 92], [40, 30, 64], (v - near) * 8);
  if (v >= far) return mix([128, 84, 128], [96, 66, 112], (v - far) * 6);
  let c = mix([44, 62, 128], [252, 176, 120], (v / far) ** 1.6);
  if (sun < 0.055) return [255, 240, 200];
  c = mix(c, [255, 214, 160], Math.max(0, 1 - sun / 0.2) ** 2);
  return c;
}

/** makeFile for a PNG of that landscape. */
function makePng(name, width, height) {
  return writeFile(name, encodePng(width, height, landscape));
}

/** A folder of files from makeFile, with a subfolder: `dir`, and `files` named by relative path. */
function makeFolder(name, sizes) {
  const files = sizes.map((size, i) => {
    const rel = i % 2 ? `${name}/inner/file-${i}.bin` : `${name}/file-${i}.bin`;
    const f = makeFile(rel.replaceAll('/', '_'), size);
    const dest = path.join(filesDir, rel);
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.renameSync(f.path, dest);
    fs.utimesSync(dest, MTIME, MTIME);
    return { name: rel, path: dest, buffer: f.buffer };
  });
  return { dir: path.join(filesDir, name), files };
}

/** setInputFiles on the input `selector` with files from makeFile. */
const pick = (page, files, selector = '#pick-files') => page.setInputFiles(selector, files.map((f) => f.path));

const sha256 = (buf) => crypto.createHash('sha256').update(buf).digest('hex');

/** Number of chunks the libraries cut a file into (the default, floor rule). */
const chunkCount = (size, chunkSize) => Math.max(Math.floor(size / chunkSize), 1);

async function download(url) {
  const resp = await fetch(url);
  if (resp.status !== 200) throw new Error(`GET ${url}: ${resp.status} ${await resp.text()}`);
  return Buffer.from(await resp.arrayBuffer());
}

/** Polls `fn` until it returns a truthy value. */
async function waitFor(fn, { timeout = 30000, interval = 50, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(interval);
  }
}

/** Counts the chunk endpoint's requests a page makes: probes (GET) and chunks (POST). */
function countRequests(page, uploadPath = '/upload') {
  const counts = { get: 0, post: 0, posts: [] };
  page.on('request', (req) => {
    if (new URL(req.url()).pathname !== uploadPath) return;
    if (req.method() === 'GET') counts.get++;
    if (req.method() === 'POST') {
      counts.post++;
      counts.posts.push(req);
    }
  });
  return counts;
}

/** Makes every chunk POST wait `ms` before it leaves the browser, so an upload can be caught. */
async function slowChunks(page, ms) {
  const state = { ms };
  await page.route(
    (url) => url.pathname === '/upload',
    async (route) => {
      if (route.request().method() === 'POST' && state.ms > 0) await sleep(state.ms);
      try {
        await route.continue();
      } catch {
        // the page aborted the request meanwhile (pause, reload)
      }
    },
  );
  return state;
}

/** The finished files listed by the demo page: name and absolute download URL. */
async function finishedFiles(page) {
  return page.$$eval('#done li', (lis) =>
    lis.map((li) => ({ name: li.querySelector('.file-name').textContent, url: li.dataset.downloadUrl })),
  );
}

/** Downloads every finished file and checks it against the originals, by name. */
async function checkDownloads(assert, page, files) {
  const done = await finishedFiles(page);
  assert.equal(done.length, files.length, 'every file is listed as finished');
  for (const f of files) {
    const row = done.find((d) => d.name === f.name);
    assert.ok(row, `${f.name} is listed as finished`);
    const got = await download(row.url);
    assert.equal(got.length, f.buffer.length, `${f.name}: length`);
    assert.equal(sha256(got), sha256(f.buffer), `${f.name}: SHA-256`);
  }
}

/** A tiny HTTP server for a page on another origin. `routes` maps a path to [type, body]. */
async function originServer(routes) {
  const server = http.createServer((req, res) => {
    const route = routes[new URL(req.url, 'http://x').pathname];
    if (!route) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    const [type, body] = route;
    res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    origin: `http://127.0.0.1:${port}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** Where the demo screenshot goes: docs/demo.png with CHUNKD_SCREENSHOT=1, else a temp file. */
function screenshotPath() {
  return process.env.CHUNKD_SCREENSHOT === '1'
    ? path.join(ROOT, 'docs', 'demo.png')
    : path.join(os.tmpdir(), 'chunkd-demo.png');
}

module.exports = {
  ROOT,
  STATIC_DIR,
  sleep,
  tempDir,
  removeDir,
  chunkdBinary,
  chunkdEnv,
  startChunkd,
  launchBrowser,
  makeFile,
  makeFolder,
  makePng,
  pick,
  sha256,
  chunkCount,
  download,
  waitFor,
  countRequests,
  slowChunks,
  finishedFiles,
  checkDownloads,
  originServer,
  screenshotPath,
};
