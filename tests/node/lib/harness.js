// Test harness for corecast's Node.js suites: starts a real `corecast serve`
// child process (its own temp config from config.yaml, a free loopback port,
// CORECAST_API_KEY set), waits for its `listening on` line, and kills only that
// child (by its own handle) when done. Also: publish-API helpers, a cuttable TCP
// proxy, and polling helpers. Everything targets 127.0.0.1.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const API_KEY = 'corecast-node-test-key-41c9';
const STARTUP_TIMEOUT_MS = 30_000;

/** The corecast binary: $CORECAST_BIN, else target/release, else target/debug. */
export function serverBinary() {
  const env = process.env.CORECAST_BIN;
  if (env) {
    const bin = path.isAbsolute(env) ? env : path.join(ROOT, env);
    if (!fs.existsSync(bin)) throw new Error(`CORECAST_BIN=${bin} does not exist`);
    return bin;
  }
  for (const profile of ['release', 'debug']) {
    const bin = path.join(ROOT, 'target', profile, 'corecast');
    if (fs.existsSync(bin)) return bin;
  }
  throw new Error('corecast binary not found: run `cargo build --release -p corecast --bin corecast`');
}

/** A loopback port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * `yaml` with `key` (`top` or `section.leaf`) set to `value`; throws if absent
 * (same rule as the Rust harness's set_yaml_value).
 */
export function setYaml(yaml, key, value) {
  const [section, leaf] = key.includes('.') ? key.split('.') : [null, key];
  let inSection = section === null;
  let done = false;
  const out = yaml.split('\n').map((line) => {
    const trimmed = line.trimStart();
    const indent = line.length - trimmed.length;
    const content = trimmed !== '' && !trimmed.startsWith('#');
    if (section !== null && content && indent === 0) inSection = trimmed.startsWith(`${section}:`);
    const wantIndent = (section !== null) === (indent > 0);
    if (!done && inSection && content && wantIndent && trimmed.startsWith(`${leaf}:`)) {
      done = true;
      return `${line.slice(0, indent)}${leaf}: ${value}`;
    }
    return line;
  });
  if (!done) throw new Error(`config key ${key} not found`);
  return out.join('\n');
}

function configText(port, shards, overrides) {
  let yaml = fs.readFileSync(path.join(ROOT, 'config.yaml'), 'utf8');
  yaml = setYaml(yaml, 'listen', `127.0.0.1:${port}`);
  yaml = setYaml(yaml, 'shards', String(shards));
  yaml = setYaml(yaml, 'runtime.io_memory', '131072');
  for (const [k, v] of Object.entries(overrides)) yaml = setYaml(yaml, k, v);
  return yaml;
}

function spawnOnce(port, shards, overrides, dir) {
  const cfg = path.join(dir, 'corecast.yaml');
  fs.writeFileSync(cfg, configText(port, shards, overrides));
  const child = spawn(
    serverBinary(),
    ['serve', '--config', cfg, '--listen', `127.0.0.1:${port}`, '--shards', String(shards)],
    { env: { ...process.env, CORECAST_API_KEY: API_KEY }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { output += d; });
  return new Promise((resolve) => {
    let buf = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve({ error: `no listening line within ${STARTUP_TIMEOUT_MS} ms: ${output}` });
    }, STARTUP_TIMEOUT_MS);
    child.stdout.on('data', (d) => {
      output += d;
      buf += d;
      if (buf.includes('listening on ws://')) {
        clearTimeout(timer);
        buf = '';
        resolve({ child, output: () => output });
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ error: `exited (${code ?? signal}) before listening: ${output}` });
    });
  });
}

/** A running corecast server. */
export class Server {
  constructor(port, shards, overrides, dir, child, output) {
    Object.assign(this, { port, shards, overrides, dir, child, output });
  }

  /** Starts a server (2 shards by default) with config `overrides` ({'sse.retry_ms': '500'}). */
  static async start({ shards = 2, overrides = {}, port } = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'corecast-node-'));
    let last = '';
    for (let attempt = 0; attempt < (port ? 20 : 3); attempt++) {
      const p = port ?? (await freePort());
      const r = await spawnOnce(p, shards, overrides, dir);
      if (r.child) return new Server(p, shards, overrides, dir, r.child, r.output);
      last = r.error;
      if (port) await sleep(100);
    }
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`corecast did not start: ${last}`);
  }

  get base() { return `http://127.0.0.1:${this.port}`; }

  wsUrl(p) { return `ws://127.0.0.1:${this.port}${p}`; }

  /** Kills this server's own child process (SIGKILL) and waits for it. */
  async stop() {
    const { child } = this;
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** Kill and start again on the same port (new epochs for every room). */
  async restart() {
    await this.stop();
    return Server.start({ shards: this.shards, overrides: this.overrides, port: this.port });
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` (sync or async) until truthy; throws `what` after `timeoutMs`. */
export async function waitFor(check, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await sleep(20);
  }
}

/** POST /api/rooms/{room}/publish; returns the JSON answer ({room,id,epoch,seq}). */
export async function publish(base, room, body) {
  const res = await fetch(`${base}/api/rooms/${encodeURIComponent(room)}/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${API_KEY}` },
    body,
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`publish ${room}: ${res.status} ${text}`);
  return JSON.parse(text);
}

/** GET /api/rooms/{room}. */
export async function roomInfo(base, room) {
  const res = await fetch(`${base}/api/rooms/${encodeURIComponent(room)}`, {
    headers: { 'X-API-Key': API_KEY },
    signal: AbortSignal.timeout(10_000),
  });
  if (res.status !== 200) throw new Error(`room info ${room}: ${res.status}`);
  return res.json();
}

/**
 * A TCP proxy in front of corecast whose connections the test can cut (the
 * client sees the server drop the stream). Records each connection's request
 * head, so tests can check what a reconnecting client sent.
 */
export class TcpProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.heads = [];
    this.server = net.createServer((client) => this.#accept(client));
  }

  async listen() {
    await new Promise((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = this.server.address().port;
    return this;
  }

  #accept(client) {
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    const pair = { client, upstream };
    this.pairs.add(pair);
    let head = '';
    let recorded = false;
    client.on('data', (d) => {
      if (!recorded) {
        head += d.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end >= 0) {
          recorded = true;
          this.heads.push(parseHead(head.slice(0, end)));
        }
      }
    });
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
  }

  /** Drops every open connection at once (both sides). */
  cut() {
    const n = this.pairs.size;
    for (const { client, upstream } of this.pairs) {
      upstream.destroy();
      client.destroy();
    }
    this.pairs.clear();
    return n;
  }

  /** Request heads seen whose path starts with `prefix`. */
  requests(prefix) {
    return this.heads.filter((h) => h.path.startsWith(prefix));
  }

  async close() {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }
}

/** Parses `METHOD path HTTP/1.1\r\nName: value...` into {method, path, headers (lower-case)}. */
export function parseHead(text) {
  const [requestLine, ...lines] = text.split('\r\n');
  const [method, p] = requestLine.split(' ');
  const headers = {};
  for (const l of lines) {
    const i = l.indexOf(':');
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { method, path: p, headers };
}

/** Splits `<epoch>:<seq>` into [epoch, seq]. */
export function cursor(id) {
  const m = /^([0-9a-f]+):([0-9]+)$/.exec(id);
  if (!m) throw new Error(`not a cursor: ${JSON.stringify(id)}`);
  return [m[1], Number(m[2])];
}
