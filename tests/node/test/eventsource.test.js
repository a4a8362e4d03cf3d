// corecast's SSE endpoint driven by the npm `eventsource` package (a WHATWG-
// conformant EventSource on top of fetch) and WebSocket clients from the npm
// `ws` package: messages published over the HTTP API and over WebSocket arrive
// with their ids; when the connection drops (a TCP proxy the test cuts, or a
// server restart) the client reconnects on its own with Last-Event-ID and
// resumes without loss or duplicates (or gets the documented gap signal).

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';

import { EventSource } from 'eventsource';
import WebSocket from 'ws';

import { Server, TcpProxy, cursor, publish, roomInfo, sleep, waitFor } from '../lib/harness.js';

/** A WebSocket member of `room` with envelopes: the room's order with ids. */
async function envelopeWatcher(server, room) {
  const ws = new WebSocket(server.wsUrl(`/ws/chat?room=${encodeURIComponent(room)}&envelope=1`));
  const log = [];
  ws.on('message', (data) => {
    const v = JSON.parse(data.toString());
    if (v.type === 'gap') throw new Error(`unexpected gap: ${data}`);
    log.push(v.encoding === 'base64' ? { binary: v.data, id: v.id } : { data: v.data, id: v.id });
  });
  await once(ws, 'open');
  return { ws, log };
}

/** Opens an EventSource and records everything it dispatches. */
function record(url) {
  const es = new EventSource(url);
  const rec = { es, log: [], gaps: [], opens: 0, errors: 0 };
  es.addEventListener('open', () => { rec.opens++; });
  es.addEventListener('error', () => { rec.errors++; });
  es.addEventListener('message', (e) => rec.log.push({ data: e.data, id: e.lastEventId }));
  es.addEventListener('binary', (e) => rec.log.push({ binary: e.data, id: e.lastEventId }));
  es.addEventListener('gap', (e) => rec.gaps.push({ gap: JSON.parse(e.data), lastEventId: e.lastEventId }));
  return rec;
}

test('eventsource gets API and WebSocket messages and resumes after the connection is cut', { timeout: 60_000 }, async () => {
  const server = await Server.start({ overrides: { 'sse.retry_ms': '600' } });
  const proxy = await new TcpProxy(server.port).listen();
  let rec;
  let watcher;
  let wsPub;
  try {
    watcher = await envelopeWatcher(server, 'news');
    wsPub = new WebSocket(server.wsUrl('/ws/chat?room=news'));
    wsPub.on('message', () => {});
    await once(wsPub, 'open');
    rec = record(`http://127.0.0.1:${proxy.port}/sse?room=news`);
    await waitFor(() => rec.opens === 1, 'EventSource open');
    await waitFor(async () => (await roomInfo(server.base, 'news')).members.sse === 1, 'SSE member');

    // Phase 1: both kinds of publisher, interleaved, plus a binary body.
    for (let i = 0; i < 5; i++) {
      await publish(server.base, 'news', `api ${i}\nsecond line`);
      wsPub.send(`ws ${i}`);
    }
    await publish(server.base, 'news', Buffer.from([0, 255, 1, 2]));
    await waitFor(() => watcher.log.length === 11 && rec.log.length === 11, 'phase 1 delivered');
    assert.deepEqual(rec.log, watcher.log, 'EventSource sees the room order with the same ids');
    assert.equal(rec.log[0].data, 'api 0\nsecond line');
    assert.equal(
      rec.log.filter((m) => m.binary === Buffer.from([0, 255, 1, 2]).toString('base64')).length,
      1,
      'the binary body arrives once as an `event: binary` with base64 data',
    );
    const lastBeforeCut = rec.log.at(-1).id;
    assert.equal(rec.es.readyState, EventSource.OPEN);

    // Cut the stream; publish while the client waits for its retry (600 ms).
    assert.equal(proxy.cut(), 1, 'one stream through the proxy');
    for (let i = 5; i < 10; i++) {
      await publish(server.base, 'news', `api ${i}`);
      wsPub.send(`ws ${i}`);
    }
    await waitFor(() => rec.opens === 2, 'EventSource reconnected by itself', 15_000);
    await waitFor(() => rec.log.length === 21 && watcher.log.length === 21, 'missed messages replayed');
    // Live again.
    for (let i = 10; i < 13; i++) {
      await publish(server.base, 'news', `api ${i}`);
      wsPub.send(`ws ${i}`);
    }
    await waitFor(() => rec.log.length === 27 && watcher.log.length === 27, 'live after resume');
    await sleep(200);
    assert.deepEqual(rec.log, watcher.log, 'no loss, no duplicate, one order');
    const seqs = rec.log.map((m) => cursor(m.id)[1]);
    assert.deepEqual(seqs, Array.from({ length: 27 }, (_, i) => i + 1));
    assert.ok(rec.errors >= 1, 'the drop was reported as an error event');
    assert.equal(rec.gaps.length, 0);

    const reqs = proxy.requests('/sse');
    assert.equal(reqs.length, 2, 'one reconnect');
    assert.equal(reqs[0].headers['last-event-id'], undefined);
    assert.equal(reqs[1].headers['last-event-id'], lastBeforeCut, 'reconnect sends Last-Event-ID');
    assert.equal(reqs[1].headers.accept, 'text/event-stream');
  } finally {
    rec?.es.close();
    watcher?.ws.terminate();
    wsPub?.terminate();
    await proxy.close();
    await server.stop();
  }
});

test('eventsource rides out repeated cuts during continuous publishing', { timeout: 90_000 }, async () => {
  const server = await Server.start({ overrides: { 'sse.retry_ms': '50' } });
  const proxy = await new TcpProxy(server.port).listen();
  const clients = [];
  let watcher;
  try {
    watcher = await envelopeWatcher(server, 'stream');
    for (let i = 0; i < 3; i++) clients.push(record(`http://127.0.0.1:${proxy.port}/sse?room=stream`));
    await waitFor(() => clients.every((c) => c.opens === 1), 'all open');
    await waitFor(async () => (await roomInfo(server.base, 'stream')).members.sse === 3, 'members');
    const TOTAL = 600;
    let published = 0;
    const publisher = (async () => {
      for (; published < TOTAL; published++) await publish(server.base, 'stream', `m${published}`);
    })();
    let cuts = 0;
    while (published < TOTAL) {
      await sleep(60 + Math.floor(Math.random() * 80));
      cuts += proxy.cut() > 0 ? 1 : 0;
    }
    await publisher;
    await waitFor(
      () => watcher.log.length === TOTAL && clients.every((c) => c.log.length >= TOTAL),
      'every client caught up',
      30_000,
    );
    await sleep(200);
    for (const [k, c] of clients.entries()) {
      assert.deepEqual(c.log, watcher.log, `client ${k}: exactly the room's messages, in order`);
      assert.equal(c.gaps.length, 0);
      assert.ok(c.opens >= 3, `client ${k} reconnected (${c.opens} opens)`);
    }
    assert.ok(cuts >= 3, `${cuts} cuts`);
  } finally {
    for (const c of clients) c.es.close();
    watcher?.ws.terminate();
    await proxy.close();
    await server.stop();
  }
});

test('eventsource across a server restart: an epoch_changed gap event, then the new epoch', { timeout: 60_000 }, async () => {
  let server = await Server.start({ overrides: { 'sse.retry_ms': '300' } });
  let rec;
  try {
    rec = record(`${server.base}/sse?room=restart`);
    await waitFor(() => rec.opens === 1, 'open');
    await waitFor(async () => (await roomInfo(server.base, 'restart')).members.sse === 1, 'member');
    const before = [];
    for (let i = 0; i < 3; i++) before.push(await publish(server.base, 'restart', `old ${i}`));
    await waitFor(() => rec.log.length === 3, 'old messages');
    const oldId = rec.log.at(-1).id;
    assert.equal(oldId, before[2].id);

    server = await server.restart();
    await waitFor(() => rec.gaps.length === 1, 'gap event after the reconnect', 20_000);
    const { gap } = rec.gaps[0];
    assert.equal(gap.type, 'gap');
    assert.equal(gap.reason, 'epoch_changed');
    assert.equal(gap.room, 'restart');
    assert.equal(gap.requested, oldId);
    const [newEpoch] = cursor(gap.first_available);
    assert.notEqual(newEpoch, before[0].epoch, 'a restart changes the epoch');
    assert.equal(rec.opens, 2);

    const p = await publish(server.base, 'restart', 'new epoch');
    await waitFor(() => rec.log.length === 4, 'message of the new epoch');
    assert.deepEqual(rec.log[3], { data: 'new epoch', id: p.id });
    assert.equal(cursor(p.id)[0], newEpoch);
    assert.equal(cursor(p.id)[1], 1);
  } finally {
    rec?.es.close();
    await server.stop();
  }
});
