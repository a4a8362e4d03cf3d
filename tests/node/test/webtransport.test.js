// Headless Chromium's own WebTransport (HTTP/3 over QUIC) against corecast,
// driven by playwright-core; wire format in docs/PROTOCOL.md, "WebTransport over
// HTTP/3". The test's Node HTTP server serves a page on http://127.0.0.1 (a
// secure context); the page opens
//   new WebTransport('https://127.0.0.1:PORT/wt/chat?room=browser',
//                    {serverCertificateHashes: [<GET /webtransport/cert-hash>]})
// writes records on a bidirectional stream, parses the records of the
// server-opened unidirectional stream, and uses /wt/echo for a datagram and a
// bidirectional stream. From Node: a `ws` WebSocket member of room `browser`
// hears what the browser publishes and the browser hears what it publishes;
// when the page closes its session, it leaves the room.
// Chromium runs without --disable-quic, with a fresh profile and HOME/TMPDIR in a
// temporary directory, and writes a NetLog there: the HTTP/3 SETTINGS, CONNECT
// headers and QUIC transport parameters it saw are printed as test diagnostics.
// If Chromium cannot open the session, the test fails with the browser's error.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { chromium } from 'playwright-core';
import WebSocket from 'ws';

import { Server, roomInfo, sleep, waitFor } from '../lib/harness.js';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ROOM = 'browser';

// The page: helpers the test calls with page.evaluate. Everything WebTransport
// returns or throws is turned into plain data/messages so Node can assert on it.
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>corecast WebTransport</title>
<pre id="log"></pre>
<script>
  const enc = new TextEncoder();
  const dec = new TextDecoder('utf-8', { fatal: true });
  window.received = [];   // {via, kind, room, text | bytes}
  window.readErrors = [];
  const show = () => {
    document.getElementById('log').textContent =
      received.map((r) => r.via + ' ' + r.room + ' ' + (r.text ?? r.bytes.join(','))).join('\\n');
  };
  const describe = (e) => {
    const extra = {};
    for (const k of ['name', 'source', 'streamErrorCode']) if (e && e[k] !== undefined) extra[k] = e[k];
    return String(e) + ' ' + JSON.stringify(extra);
  };
  const hashOption = (b64) => ({
    serverCertificateHashes: [{ algorithm: 'sha-256', value: Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)) }],
  });

  // QUIC varints.
  function putVarint(out, v) {
    if (v < 0x40) out.push(v);
    else if (v < 0x4000) out.push(0x40 | (v >> 8), v & 0xff);
    else if (v < 0x40000000) out.push(0x80 | (v >>> 24), (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
    else throw new Error('varint too large for this page: ' + v);
  }
  function getVarint(buf, at) {
    if (at >= buf.length) return null;
    const len = 1 << (buf[at] >> 6);
    if (at + len > buf.length) return null;
    let v = buf[at] & 0x3f;
    for (let i = 1; i < len; i++) v = v * 256 + buf[at + i];
    return [v, len];
  }
  // client -> server record: varint(1 + payload length) kind payload.
  function record(kind, payload) {
    const out = [];
    putVarint(out, 1 + payload.length);
    out.push(kind);
    const head = Uint8Array.from(out);
    const r = new Uint8Array(head.length + payload.length);
    r.set(head);
    r.set(payload, head.length);
    return r;
  }
  // kind varint(room length) room payload (server record body; server datagram).
  function parseBody(via, body) {
    const kind = body[0];
    const rl = getVarint(body, 1);
    if (!rl) throw new Error('no room length: ' + Array.from(body).join(','));
    const roomEnd = 1 + rl[1] + rl[0];
    if (roomEnd > body.length) throw new Error('room runs past the delivery');
    const room = dec.decode(body.subarray(1 + rl[1], roomEnd));
    const payload = body.subarray(roomEnd);
    return kind === 0 ? { via, kind, room, text: dec.decode(payload) } : { via, kind, room, bytes: Array.from(payload) };
  }
  window.uniStreams = 0;
  async function readRecords(stream) {
    const reader = stream.getReader();
    let buf = new Uint8Array(0);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const next = new Uint8Array(buf.length + value.length);
      next.set(buf);
      next.set(value, buf.length);
      buf = next;
      for (;;) {
        const l = getVarint(buf, 0);
        if (!l || buf.length < l[1] + l[0]) break;
        received.push(parseBody('stream', buf.subarray(l[1], l[1] + l[0])));
        buf = buf.slice(l[1] + l[0]);
      }
      show();
    }
    if (buf.length) throw new Error('server stream ended inside a record');
  }

  // Opens the rooms session, starts reading its streams and datagrams, and opens
  // one bidirectional stream for publishing.
  window.openChat = async (url, b64) => {
    const t = new WebTransport(url, hashOption(b64));
    try {
      await t.ready;
    } catch (e) {
      throw new Error('WebTransport to ' + url + ' failed: ' + describe(e));
    }
    window.chat = t;
    t.closed.then((info) => { window.chatClosed = JSON.stringify(info); }, (e) => { window.chatClosed = describe(e); });
    (async () => {
      const r = t.incomingUnidirectionalStreams.getReader();
      for (;;) {
        const { value, done } = await r.read();
        if (done) break;
        uniStreams++;
        readRecords(value).catch((e) => readErrors.push('uni stream: ' + describe(e)));
      }
    })().catch((e) => readErrors.push('incoming streams: ' + describe(e)));
    (async () => {
      const r = t.datagrams.readable.getReader();
      for (;;) {
        const { value, done } = await r.read();
        if (done) break;
        received.push(parseBody('datagram', value));
        show();
      }
    })().catch((e) => readErrors.push('datagrams: ' + describe(e)));
    const bidi = await t.createBidirectionalStream();
    window.chatWriter = bidi.writable.getWriter();
    // The server answers nothing on this stream; remember what (if anything) comes.
    window.chatAnswer = [];
    (async () => {
      const r = bidi.readable.getReader();
      for (;;) {
        const { value, done } = await r.read();
        if (done) break;
        chatAnswer.push(...value);
      }
    })().catch((e) => readErrors.push('publishing stream: ' + describe(e)));
  };
  window.sendTexts = async (texts) => {
    for (const t of texts) await chatWriter.write(record(0, enc.encode(t)));
  };
  window.sendBinary = async (bytes) => chatWriter.write(record(1, Uint8Array.from(bytes)));

  // /wt/echo: one datagram round trip (resent while nothing comes back: datagrams
  // are unreliable) and one bidirectional stream echo with FIN.
  window.echo = async (url, b64, text) => {
    const t = new WebTransport(url, hashOption(b64));
    try {
      await t.ready;
    } catch (e) {
      throw new Error('WebTransport to ' + url + ' failed: ' + describe(e));
    }
    const result = { datagramTries: 0 };
    const w = t.datagrams.writable.getWriter();
    const r = t.datagrams.readable.getReader();
    // A read still pending when the session closes rejects: mark it handled.
    const read = () => { const p = r.read(); p.catch(() => {}); return p; };
    let pending = read();
    for (let i = 0; i < 10 && result.datagram === undefined; i++) {
      result.datagramTries++;
      await w.write(enc.encode(text));
      const got = await Promise.race([pending, new Promise((res) => setTimeout(() => res(null), 500))]);
      if (got) {
        pending = read();
        if (!got.done) result.datagram = dec.decode(got.value);
      }
    }
    const bidi = await t.createBidirectionalStream();
    const sw = bidi.writable.getWriter();
    await sw.write(enc.encode(text + ' on a stream'));
    await sw.close();
    const chunks = [];
    const sr = bidi.readable.getReader();
    for (;;) {
      const { value, done } = await sr.read();
      if (done) break;
      chunks.push(...value);
    }
    result.stream = dec.decode(Uint8Array.from(chunks));
    t.close({ closeCode: 0, reason: 'done' });
    return result;
  };
</script>`;

/** Serves PAGE on a loopback origin (http://127.0.0.1 is a secure context). */
async function startFront() {
  const server = http.createServer((req, res) => {
    if (req.url === '/' || req.url === '/index.html') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(PAGE);
      return;
    }
    res.writeHead(404).end();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }),
  };
}

/** A Node-side WebSocket member of ROOM: every message it receives, in order. */
async function wsMember(server) {
  const ws = new WebSocket(server.wsUrl(`/ws/chat?room=${ROOM}`));
  const log = [];
  ws.on('message', (data, isBinary) => {
    log.push(isBinary ? { bytes: Array.from(data) } : { text: data.toString() });
  });
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  return { ws, log };
}

/**
 * What a Chromium NetLog (JSON, written at browser exit) says about WebTransport:
 * QUIC transport parameters both ways, the negotiated WebTransport and HTTP
 * Datagram versions, WebTransport client states, and how QUIC sessions closed
 * (Chromium 156 logs no HTTP/3 SETTINGS or headers for WebTransport sessions).
 * Also counts QUIC packets sent and received. Returns lines for diagnostics.
 */
function netlogSummary(file) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    return [`no NetLog: ${e.message}`];
  }
  let log;
  try {
    log = JSON.parse(text);
  } catch {
    // Not closed cleanly: cut after the last complete event.
    try {
      log = JSON.parse(`${text.slice(0, text.lastIndexOf('},') + 1)}]}`);
    } catch (e) {
      return [`NetLog does not parse: ${e.message}`];
    }
  }
  const names = Object.fromEntries(Object.entries(log.constants.logEventTypes).map(([k, v]) => [v, k]));
  const wanted = /HTTP3_.*SETTINGS|HTTP3_HEADERS|TRANSPORT_PARAMETERS|WEBTRANSPORT|CONNECTION_CLOSE|QUIC_SESSION_CLOSED/;
  const lines = [];
  const seen = new Set();
  const packets = { sent: 0, received: 0 };
  for (const e of log.events ?? []) {
    const name = names[e.type] ?? String(e.type);
    if (name === 'QUIC_SESSION_PACKET_SENT') packets.sent++;
    if (name === 'QUIC_SESSION_PACKET_RECEIVED') packets.received++;
    if (!wanted.test(name) || !e.params) continue;
    const line = `${name} ${JSON.stringify(e.params)}`;
    if (seen.has(line)) continue;
    seen.add(line);
    lines.push(line.length > 1500 ? `${line.slice(0, 1500)}...` : line);
  }
  lines.push(`QUIC packets: ${packets.sent} sent, ${packets.received} received`);
  return lines;
}

test('Chromium WebTransport: rooms with a WebSocket member, datagram and stream echo, session close', { timeout: 180_000 }, async (t) => {
  assert.ok(
    fs.existsSync(CHROMIUM),
    `${CHROMIUM} is missing: run scripts/setup-test-deps.sh (apt-get install chromium)`,
  );
  const server = await Server.start({ shards: 2 });
  const front = await startFront();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'corecast-chromium-wt-'));
  const userDataDir = path.join(tmp, 'profile');
  const home = path.join(tmp, 'home');
  fs.mkdirSync(home);
  const netlog = path.join(process.env.WT_NETLOG_DIR || tmp, 'corecast-wt-netlog.json');
  let context;
  let member;
  const consoleLines = [];
  try {
    const hashRes = await fetch(`${server.base}/webtransport/cert-hash`, { signal: AbortSignal.timeout(10_000) });
    assert.equal(hashRes.status, 200, 'GET /webtransport/cert-hash');
    const hash = await hashRes.json();
    assert.match(hash.sha256, /^[0-9a-f]{64}$/i, 'sha256 is 64 hex digits');
    assert.equal(Buffer.from(hash.base64, 'base64').toString('hex'), hash.sha256.toLowerCase(), 'base64 and hex agree');
    const chatUrl = `https://127.0.0.1:${server.port}/wt/chat?room=${ROOM}`;
    const echoUrl = `https://127.0.0.1:${server.port}/wt/echo`;

    member = await wsMember(server);
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      // No --disable-quic: WebTransport needs QUIC.
      args: [
        '--no-sandbox',
        '--headless',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        `--log-net-log=${netlog}`,
        '--net-log-capture-mode=Everything',
      ],
      env: { ...process.env, HOME: home, TMPDIR: tmp, XDG_CONFIG_HOME: path.join(home, '.config'), XDG_CACHE_HOME: path.join(home, '.cache') },
      timeout: 60_000,
    });
    const page = context.pages()[0] ?? (await context.newPage());
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    await page.goto(front.url, { timeout: 30_000 });
    assert.equal(await page.evaluate(() => window.isSecureContext), true, 'the page is a secure context');
    assert.equal(await page.evaluate(() => typeof WebTransport), 'function', 'WebTransport is available');

    // Opening the session: a failure here is the evidence (the browser's own message).
    await page.evaluate(([u, b]) => window.openChat(u, b), [chatUrl, hash.base64]);

    // Warm up both directions (membership may take a moment to reach every shard).
    const browserGot = (pred) => page.evaluate((src) => window.received.some(new Function('r', src)), pred);
    let k = 0;
    await waitFor(async () => {
      await page.evaluate((i) => window.sendTexts([`warm-up ${i}`]), k++);
      await sleep(200);
      return member.log.some((m) => m.text?.startsWith('warm-up'));
    }, 'a browser record reaching the WebSocket member', 20_000);
    await waitFor(async () => {
      member.ws.send(`warm-up ws ${k++}`);
      await sleep(200);
      return browserGot("return r.text?.startsWith('warm-up ws')");
    }, 'a WebSocket message reaching the browser', 20_000);

    // WebSocket -> browser: text as a 0x00 record, binary as 0x01, on the stream.
    const before = await page.evaluate(() => window.received.length);
    member.ws.send('hello from node ws ✓');
    member.ws.send(Buffer.from([0x00, 0x01, 0xfe, 0xff]), { binary: true });
    await waitFor(
      async () => (await page.evaluate((n) => window.received.slice(n).filter((r) => !r.text?.startsWith('warm-up')), before)).length >= 2,
      'two WebSocket messages in the browser',
    );
    const fromWs = (await page.evaluate((n) => window.received.slice(n), before)).filter((r) => !r.text?.startsWith('warm-up'));
    assert.deepEqual(fromWs.slice(0, 2), [
      { via: 'stream', kind: 0, room: ROOM, text: 'hello from node ws ✓' },
      { via: 'stream', kind: 1, room: ROOM, bytes: [0x00, 0x01, 0xfe, 0xff] },
    ]);

    // Browser -> WebSocket: 10 text records and a binary one, in order.
    const texts = Array.from({ length: 10 }, (_, i) => `hello from chromium ${i}`);
    await page.evaluate((ts) => window.sendTexts(ts), texts);
    await page.evaluate(() => window.sendBinary([0xca, 0xfe, 0x00]));
    const isOwn = (m) => m.text?.startsWith('warm-up') || m.text === 'hello from node ws ✓' || (m.bytes && m.bytes.length === 4);
    await waitFor(() => member.log.filter((m) => !isOwn(m)).length >= 11, 'the browser records on the WebSocket');
    assert.deepEqual(member.log.filter((m) => !isOwn(m)), [...texts.map((text) => ({ text })), { bytes: [0xca, 0xfe, 0x00] }]);

    // The browser's own records come back to it on the same stream (itself included).
    await waitFor(() => browserGot("return r.text === 'hello from chromium 9'"), 'the browser hearing its own records');
    assert.equal(await page.evaluate(() => window.uniStreams), 1, 'one server-opened stream per session');

    // /wt/echo: datagram and bidirectional stream.
    const echo = await page.evaluate(([u, b]) => window.echo(u, b, 'datagram from chromium'), [echoUrl, hash.base64]);
    t.diagnostic(`echo: ${JSON.stringify(echo)}`);
    assert.equal(echo.datagram, 'datagram from chromium', 'datagram echoed');
    assert.equal(echo.stream, 'datagram from chromium on a stream', 'bidirectional stream echoed');

    assert.deepEqual(await page.evaluate(() => window.readErrors), [], 'no read errors in the page');
    assert.deepEqual(await page.evaluate(() => window.chatAnswer), [], 'nothing written back on the publishing stream');
    assert.equal(await page.evaluate(() => window.chatClosed), undefined, 'the chat session is still open');

    // The browser closes the rooms session (CLOSE_WEBTRANSPORT_SESSION capsule):
    // it stops being a member of the room, and the WebSocket member stays.
    assert.equal((await roomInfo(server.base, ROOM)).members.webtransport, 1, 'the browser session is a member');
    await page.evaluate(() => window.chat.close({ closeCode: 4000, reason: 'page done' }));
    await waitFor(async () => (await roomInfo(server.base, ROOM)).members.webtransport === 0,
      'the closed browser session to leave the room', 10_000)
      .catch(async (e) => { throw new Error(`${e.message}: members ${JSON.stringify((await roomInfo(server.base, ROOM)).members)}`); });
    assert.equal((await roomInfo(server.base, ROOM)).members.websocket, 1, 'the WebSocket member stays');
    assert.deepEqual(pageErrors, []);
  } finally {
    if (consoleLines.length) t.diagnostic(`browser console:\n${consoleLines.join('\n')}`);
    await context?.close().catch(() => {});
    for (const line of netlogSummary(netlog)) t.diagnostic(line);
    member?.ws.terminate();
    await front.close();
    await server.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
