// Bun WebSocket peer for corecast's `loadgen fanout` / `loadgen idle`.
//
// Same contract as corecast's `/ws/chat` endpoint (kind: rooms):
//   - the client joins every `?room=NAME` (repeatable) on open;
//   - every message a client sends is broadcast to all members of its rooms,
//     INCLUDING the sender (loadgen's publisher uses its own echo as the ack).
// Fan-out uses Bun's native (uWebSockets) topic pub/sub: `server.publish()`
// reaches every subscriber of the topic, the sender included (unlike
// `ws.publish()`, which skips the sender unless `publishToSelf` is set).
//
// `/ws/echo` (corecast's `kind: echo`): every message goes back to its sender
// only, for `loadgen echo`.
//
// `/sse` (for `loadgen idle --sse`, idle-memory only): answers 200
// `text/event-stream`, writes one comment line (`: ok`) so the client sees the
// stream is up, and keeps the stream open forever (a ReadableStream that is
// never closed; the per-request idle timeout is switched off). Nothing is
// published to SSE streams; `?room=` is accepted and ignored. Bun sends the
// body chunked (no Content-Length), which `loadgen idle --sse` accepts.
//
// Run: bun bun-pubsub.js [PORT]   (or PORT=... / HOST=... in the environment)
// Prints "listening on HOST:PORT" once ready. GET /stats answers 404 (loadgen
// then reports no server counters).

const port = Number(process.argv[2] ?? process.env.PORT ?? 8080);
const hostname = process.env.HOST ?? "127.0.0.1";
const PATH = "/ws/chat";
const ECHO_PATH = "/ws/echo";
const SSE_PATH = "/sse";
const SSE_HELLO = new TextEncoder().encode(": ok\n\n");
const SSE_HEADERS = {
  "Content-Type": "text/event-stream",
  "Cache-Control": "no-cache",
  "X-Accel-Buffering": "no",
};

const server = Bun.serve({
  hostname,
  port,
  fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === ECHO_PATH) {
      if (server.upgrade(req, { data: { rooms: [], echo: true } })) return undefined;
      return new Response("expected a WebSocket upgrade\n", { status: 426 });
    }
    if (url.pathname === SSE_PATH) {
      // Bun.serve closes a request idle for `idleTimeout` (default 10 s);
      // an idle event stream must outlive the measurement.
      server.timeout(req, 0);
      const body = new ReadableStream({
        start(controller) {
          controller.enqueue(SSE_HELLO); // never closed
        },
      });
      return new Response(body, { headers: SSE_HEADERS });
    }
    if (url.pathname === PATH) {
      const rooms = url.searchParams.getAll("room").filter((r) => r.length > 0);
      if (server.upgrade(req, { data: { rooms, echo: false } })) return undefined;
      return new Response("expected a WebSocket upgrade\n", { status: 426 });
    }
    return new Response("not found\n", { status: 404 });
  },
  websocket: {
    // Mirror corecast's bench-relevant settings: no compression, 1 MiB messages.
    perMessageDeflate: false,
    maxPayloadLength: 1024 * 1024,
    // Never drop or close a slow subscriber inside a benchmark run: uWS drops a
    // publish to a socket whose buffered bytes exceed this limit.
    backpressureLimit: 1024 * 1024 * 1024,
    closeOnBackpressureLimit: false,
    // Idle connections (loadgen idle) must stay open; no server pings.
    idleTimeout: 0,
    sendPings: false,
    // Only matters for ws.publish(); server.publish() always includes the sender.
    publishToSelf: true,
    open(ws) {
      for (const room of ws.data.rooms) ws.subscribe(room);
    },
    message(ws, message) {
      if (ws.data.echo) {
        ws.send(message, false);
        return;
      }
      // `message` is a Buffer for binary frames, a string for text frames;
      // publish() keeps the opcode. compress = false.
      for (const room of ws.data.rooms) server.publish(room, message, false);
    },
  },
});

console.log(`listening on ${server.hostname}:${server.port} (bun ${Bun.version})`);
