// The streaming example (engine/examples/streaming) in headless Chromium: its own
// page, served by the example, driven through the page's controls in two tabs (a
// broadcaster and a viewer) the way a person would: dev token, connect, start a
// stream, join it by id, chat both ways, viewer counts from presence, the viewer
// leaving, and the broadcaster going away ending the stream for the viewer.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { chromium } from 'playwright-core';

import { ROOT, freePort } from '../lib/harness.js';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const STEP_MS = 10_000;
const SECRET = 'node-streaming-test-secret-7d1e-0123456789abcdef0123456789abcdef';

/**
 * The example binary: $STREAMING_BIN, else next to $CORECAST_BIN (scripts/test.sh
 * sets it), else under $CARGO_TARGET_DIR or target/ (release first).
 */
function exampleBinary() {
  if (process.env.STREAMING_BIN) return process.env.STREAMING_BIN;
  const candidates = [];
  if (process.env.CORECAST_BIN) {
    candidates.push(path.join(path.dirname(path.resolve(ROOT, process.env.CORECAST_BIN)), 'examples', 'streaming'));
  }
  const target = path.resolve(ROOT, process.env.CARGO_TARGET_DIR || 'target');
  for (const profile of ['release', 'debug']) candidates.push(path.join(target, profile, 'examples', 'streaming'));
  const found = candidates.find((c) => fs.existsSync(c));
  if (!found) {
    throw new Error(`streaming example not found (${candidates.join(', ')}): run \`cargo build --release -p corecast --example streaming\``);
  }
  return found;
}

/** Starts the example on a free port; resolves once it prints its URL. */
async function startExample() {
  const port = await freePort();
  const child = spawn(exampleBinary(), [`127.0.0.1:${port}`], {
    env: { ...process.env, STREAMING_JWT_SECRET: SECRET },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { output += d; });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no listening line within 20 s: ${output}`)), 20_000);
    child.stdout.on('data', (d) => {
      output += d;
      const m = /listening on (http:\/\/\S+\/)/.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`example exited (${code ?? signal}) before listening: ${output}`));
    });
  });
  return { child, url, output: () => output };
}

/** Kills the example by its own child handle (SIGKILL) and waits for it. */
async function stopExample(child) {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }
}

/** Opens the page in a new tab and connects as `name`. */
async function openAs(context, url, name, pageErrors) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e}`));
  await page.goto(url, { timeout: 30_000 });
  await page.fill('#name', name);
  await page.click('#connect');
  await page.waitForFunction((n) => document.getElementById('conn-state').textContent === `connected as ${n}`, name);
  return page;
}

const chatLines = (page) => page.$$eval('#chat-log .chat-line', (lis) => lis.map((li) => li.textContent));
const viewers = (page) => page.$eval('#viewers', (el) => el.textContent);

async function waitViewers(page, n) {
  await page.waitForFunction((n) => document.getElementById('viewers').dataset.count === String(n), n);
  assert.equal(await viewers(page), `viewers: ${n}`);
}

async function waitChat(page, count) {
  await page.waitForFunction((c) => document.querySelectorAll('#chat-log .chat-line').length >= c, count);
}

async function say(page, text) {
  await page.fill('#chat-input', text);
  await page.click('#send');
}

test('streaming example page: broadcaster and viewer tabs chat, count viewers, see the stream end', { timeout: 120_000 }, async () => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: run scripts/setup-test-deps.sh (apt-get install chromium)`);
  const example = await startExample();
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'corecast-streaming-chromium-'));
  const pageErrors = [];
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--no-first-run'],
      timeout: 60_000,
    });

    // The broadcaster starts a stream and is shown its id.
    const host = await openAs(context, example.url, 'ada', pageErrors);
    await host.fill('#title', 'Morning show');
    await host.fill('#description', 'coffee and code');
    await host.click('#start');
    await host.waitForFunction(() => /^stream-[0-9a-f]{16}$/.test(document.getElementById('stream-id').textContent));
    const streamId = await host.$eval('#stream-id', (el) => el.textContent);
    await waitViewers(host, 0);
    assert.equal(await host.isDisabled('#end'), false, 'the broadcaster can end the stream');

    // The viewer sees it in the live list, then joins by id.
    const viewer = await openAs(context, example.url, 'bob', pageErrors);
    await viewer.click('#refresh');
    await viewer.waitForSelector(`#stream-list button[data-stream-id="${streamId}"]`);
    assert.match(await viewer.$eval('#stream-list', (el) => el.textContent), /Morning show by ada/);
    await viewer.fill('#join-id', streamId);
    await viewer.click('#join');
    await viewer.waitForFunction((id) => document.getElementById('stream-id').textContent === id, streamId);
    assert.equal(await viewer.$eval('#stream-title', (el) => el.textContent), 'Morning show: coffee and code');
    assert.equal(await viewer.isDisabled('#end'), true, 'a viewer cannot end the stream');
    await waitViewers(viewer, 1);
    await waitViewers(host, 1);

    // Chat both ways: both tabs show both lines in the same order.
    await say(host, 'welcome, everyone');
    await waitChat(viewer, 1);
    await waitChat(host, 1);
    await say(viewer, 'hi from bob');
    await waitChat(viewer, 2);
    await waitChat(host, 2);
    const expected = ['ada: welcome, everyone', 'bob: hi from bob'];
    assert.deepEqual(await chatLines(host), expected);
    assert.deepEqual(await chatLines(viewer), expected);

    // An error frame shows in the status line (an empty chat message).
    await say(viewer, '   ');
    await viewer.waitForFunction(() => document.getElementById('status').className === 'error');
    assert.match(await viewer.$eval('#status', (el) => el.textContent), /^error invalid_body: message:/);

    // The viewer closes its tab: the broadcaster's count drops to 0.
    await viewer.close();
    await waitViewers(host, 0);

    // A second viewer joins; then the broadcaster's tab closes: the stream ends.
    const late = await openAs(context, example.url, 'cy', pageErrors);
    await late.fill('#join-id', streamId);
    await late.click('#join');
    await waitViewers(late, 1);
    await waitViewers(host, 1);
    assert.equal(await late.isVisible('#ended'), false);
    await host.close();
    await late.waitForSelector('#ended', { state: 'visible' });
    assert.equal(await late.$eval('#ended', (el) => el.textContent), 'This stream has ended.');
    await waitViewers(late, 0);
    // The page left the ended stream; joining it again is refused.
    await late.waitForFunction(() => document.getElementById('stream-id').textContent === 'none');
    await late.fill('#join-id', streamId);
    await late.click('#join');
    await late.waitForFunction(() => /^error stream_not_found/.test(document.getElementById('status').textContent));
    assert.deepEqual(pageErrors, []);
  } finally {
    await context?.close().catch(() => {});
    await stopExample(example.child);
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
});
