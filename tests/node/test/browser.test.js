// Headless Chromium's own EventSource and WebSocket against corecast, driven by
// playwright-core. The test's Node HTTP server serves the page and
// reverse-proxies /sse and /api to corecast on the same origin (corecast sends
// no CORS headers); the proxy can drop the browser's stream, after which the
// browser reconnects by itself with Last-Event-ID and must resume without loss.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { chromium } from 'playwright-core';
import WebSocket from 'ws';

import { API_KEY, Server, cursor, publish, roomInfo, sleep, waitFor } from '../lib/harness.js';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ROOM = 'browser';

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>corecast SSE</title>
<pre id="log"></pre>
<script>
  window.log = [];
  window.opens = 0;
  window.errors = 0;
  const show = () => { document.getElementById('log').textContent = log.map((m) => m.id + ' ' + (m.data ?? m.binary)).join('\\n'); };
  const es = new EventSource('/sse?room=${ROOM}');
  es.onopen = () => { opens++; };
  es.onerror = () => { errors++; };
  es.onmessage = (e) => { log.push({ data: e.data, id: e.lastEventId }); show(); };
  es.addEventListener('binary', (e) => { log.push({ binary: e.data, id: e.lastEventId }); show(); });
  es.addEventListener('gap', (e) => { log.push({ gap: e.data }); show(); });
  window.es = es;
  // A WebSocket member of the room, opened by the page (cross-origin is fine for WebSocket).
  window.openWs = (url) => new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.onopen = () => { window.ws = ws; resolve(); };
    ws.onerror = () => reject(new Error('websocket error'));
  });
  window.wsSend = (texts) => { for (const t of texts) window.ws.send(t); };
  // The publish API through the page's own origin.
  window.apiPublish = async (body) => {
    const r = await fetch('/api/rooms/${ROOM}/publish', {
      method: 'POST', headers: { Authorization: 'Bearer ${API_KEY}' }, body,
    });
    if (r.status !== 200) throw new Error('publish ' + r.status);
    return r.json();
  };
</script>`;

/** The page's origin: serves PAGE, reverse-proxies /sse and /api/ to corecast. */
async function startFront(corecastPort) {
  const streams = new Set();
  const sseRequests = [];
  const server = http.createServer((req, res) => {
    if (req.url === '/' || req.url === '/index.html') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(PAGE);
      return;
    }
    if (!req.url.startsWith('/sse') && !req.url.startsWith('/api/')) {
      res.writeHead(404).end();
      return;
    }
    if (req.url.startsWith('/sse')) sseRequests.push({ url: req.url, headers: { ...req.headers } });
    const up = http.request(
      { host: '127.0.0.1', port: corecastPort, method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode, upRes.headers);
        res.flushHeaders();
        upRes.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
    if (req.url.startsWith('/sse')) {
      const pair = { res, up };
      streams.add(pair);
      res.on('close', () => { streams.delete(pair); up.destroy(); });
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    sseRequests,
    /** Drops every proxied event stream (the browser sees its connection die). */
    cut() {
      const n = streams.size;
      for (const { res, up } of streams) {
        up.destroy();
        res.socket?.destroy();
      }
      streams.clear();
      return n;
    },
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }),
  };
}

/** A Node-side WebSocket member with envelopes: the room's order with ids. */
async function watcher(server) {
  const ws = new WebSocket(server.wsUrl(`/ws/chat?room=${ROOM}&envelope=1`));
  const log = [];
  ws.on('message', (d) => {
    const v = JSON.parse(d.toString());
    log.push(v.encoding === 'base64' ? { binary: v.data, id: v.id } : { data: v.data, id: v.id });
  });
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  return { ws, log };
}

test('Chromium EventSource gets WebSocket and API messages and resumes after a server-side drop', { timeout: 120_000 }, async (t) => {
  assert.ok(
    fs.existsSync(CHROMIUM),
    `${CHROMIUM} is missing: run scripts/setup-test-deps.sh (apt-get install chromium)`,
  );
  const server = await Server.start({ overrides: { 'sse.retry_ms': '700' } });
  const front = await startFront(server.port);
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'corecast-chromium-'));
  let context;
  let w;
  try {
    w = await watcher(server);
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--headless',
        '--disable-gpu',
        '--disable-quic',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ],
      timeout: 60_000,
    });
    const page = context.pages()[0] ?? (await context.newPage());
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    await page.goto(front.url, { timeout: 30_000 });
    await page.waitForFunction(() => window.opens === 1, null, { timeout: 15_000 });
    await page.evaluate((url) => window.openWs(url), server.wsUrl(`/ws/chat?room=${ROOM}`));
    await waitFor(async () => {
      const m = (await roomInfo(server.base, ROOM)).members;
      return m.sse === 1 && m.websocket === 2;
    }, 'browser stream and sockets joined');

    const browserLog = () => page.evaluate(() => window.log);

    // Phase 1: the page's WebSocket, the page's fetch to the API, and Node's API client.
    for (let i = 0; i < 4; i++) {
      await page.evaluate((i) => window.wsSend([`page ws ${i}`]), i);
      await page.evaluate((i) => window.apiPublish(`page api ${i}`), i);
      await publish(server.base, ROOM, `node api ${i}\nline two`);
    }
    await publish(server.base, ROOM, Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x00]));
    await waitFor(async () => w.log.length === 13 && (await browserLog()).length === 13, 'phase 1 in the browser');
    assert.deepEqual(await browserLog(), w.log, 'the browser sees the room order with the same ids');
    const before = await browserLog();
    const lastBeforeCut = before.at(-1).id;
    assert.ok(before.some((m) => m.data === 'node api 0\nline two'), 'multi-line data');
    assert.ok(before.some((m) => m.binary === '3q2+7wA='), 'binary as event: binary, base64');

    // Phase 2: drop the stream under the browser; publish while it waits to reconnect.
    assert.equal(front.cut(), 1, 'one event stream proxied');
    for (let i = 4; i < 8; i++) {
      await publish(server.base, ROOM, `node api ${i}`);
      await page.evaluate((i) => window.wsSend([`page ws ${i}`]), i);
    }
    await page.waitForFunction(() => window.opens === 2, null, { timeout: 20_000 });
    await waitFor(async () => w.log.length === 21 && (await browserLog()).length === 21, 'missed messages in the browser', 15_000);
    // Phase 3: live again, published by the page.
    for (let i = 8; i < 10; i++) {
      await page.evaluate((i) => window.apiPublish(`page api ${i}`), i);
      await page.evaluate((i) => window.wsSend([`page ws ${i}`]), i);
    }
    await waitFor(async () => w.log.length === 25 && (await browserLog()).length === 25, 'live after resume');
    await sleep(300);
    const after = await browserLog();
    assert.deepEqual(after, w.log, 'no loss, no duplicate, one order');
    assert.deepEqual(after.map((m) => cursor(m.id)[1]), Array.from({ length: 25 }, (_, i) => i + 1));
    assert.ok((await page.evaluate(() => window.errors)) >= 1, 'the drop fired an error event');

    assert.equal(front.sseRequests.length, 2, 'one reconnect');
    assert.equal(front.sseRequests[0].headers['last-event-id'], undefined);
    assert.equal(front.sseRequests[1].headers['last-event-id'], lastBeforeCut, 'Chromium sent Last-Event-ID');
    assert.match(front.sseRequests[1].headers.accept ?? '', /text\/event-stream/);
    assert.deepEqual(pageErrors, []);
    // SCREENSHOT_DIR=/some/dir keeps a picture of the page for a person to look at.
    const shot = path.join(process.env.SCREENSHOT_DIR || userDataDir, 'corecast-sse-page.png');
    await page.screenshot({ path: shot });
    t.diagnostic(`screenshot: ${fs.statSync(shot).size} bytes`);
  } finally {
    await context?.close().catch(() => {});
    w?.ws.terminate();
    await front.close();
    await server.stop();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
});
