// The load generator: one scenario against one server, results as one JSON line.
// Usage: node load.js '{"scenario": "S1", "url": "http://127.0.0.1:3000", "token": "t", ...}'
// Both servers speak the original's API, so the same code drives both.
'use strict';
const http = require('http');
const { performance } = require('perf_hooks');
const { io } = require('socket.io-client');

const options = JSON.parse(process.argv[2]);
const base = new URL(options.url);
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

function request(method, path, body) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request({
      host: base.hostname, port: base.port, method, path, agent,
      headers: {
        'X-AUTH-TOKEN': options.token,
        ...(payload ? { 'Content-Type': 'application/json',
                        'Content-Length': Buffer.byteLength(payload) } : {}),
      },
    }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve()
        : reject(new Error(`${method} ${path}: ${res.statusCode}`))));
    });
    req.on('error', reject);
    if (payload) req.write(payload);
    req.end();
  });
}

const sockets = [];
// S4K: the sessions' polls on kept-alive connections, as a browser makes them (by default
// socket.io-client in Node opens a connection for every request).
const pollingAgent = options.keepAlive
  ? new http.Agent({ keepAlive: true, maxSockets: Infinity }) : undefined;

// With `sourceAddresses` (SCALE), each session's connection comes from one of that many
// loopback addresses (127.0.0.2, 127.0.0.3, ...). From one address to one server port,
// Linux gives connect() ephemeral ports from half the local port range first (28,232
// ports here, so about 14,000); past that, each connect() searches the range in the
// kernel, and the generator's system time, not the server, sets the opening rate.
let opened = 0;
function sourceAddress() {
  if (!options.sourceAddresses) return {};
  opened += 1;
  return { localAddress: `127.0.0.${2 + (opened % options.sourceAddresses)}` };
}

async function openSession(userId, connectionId, transport, onMessage) {
  await request('PUT', `/api/${userId}/register?connectionId=${connectionId}`);
  return new Promise((resolve, reject) => {
    const socket = io(options.url, { transports: [transport], forceNew: true,
                                     reconnection: false, timeout: 30000,
                                     ...(pollingAgent ? { agent: pollingAgent } : {}),
                                     ...sourceAddress() });
    sockets.push(socket);
    socket.on('message', onMessage);
    socket.on('connect_error', reject);
    socket.on('connect', () => {
      socket.emit('register', userId, connectionId, (ack) => {
        if (ack && ack.ok) resolve(socket);
        else reject(new Error(`register refused: ${JSON.stringify(ack)}`));
      });
    });
  });
}

// Opens `count` sessions, `batch` at a time; resolves with their sockets, in order.
async function openSessions(count, userOf, transport, onMessage, batch = 50) {
  const opened = [];
  for (let start = 0; start < count; start += batch) {
    const opening = [];
    for (let i = start; i < Math.min(count, start + batch); i += 1) {
      opening.push(openSession(userOf(i), `c${i}-${Math.random().toString(36).slice(2)}`,
                               transport, onMessage));
    }
    opened.push(...await Promise.all(opening));
  }
  return opened;
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

// S1's push phase: `pushes` REST pushes to users `${prefix}-0` .. `${prefix}-${users - 1}`,
// `inFlight` at a time, each message carrying its send time; once `allReceived` resolves,
// the rate and the latencies the message handler pushed into `latencies`.
async function pushRound(prefix, { users, pushes, inFlight }, latencies, allReceived) {
  let next = 0;
  const cpuStart = process.cpuUsage();
  const started = performance.now();
  async function worker() {
    while (next < pushes) {
      const n = next;
      next += 1;
      await request('POST', `/api/${prefix}-${n % users}/push`,
                    { message: { n, t: performance.now() } });
    }
  }
  await Promise.all(Array.from({ length: inFlight }, worker));
  await allReceived;
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return { rate: pushes / seconds, unit: 'pushes delivered/s', seconds,
           p50_ms: percentile(latencies, 50), p99_ms: percentile(latencies, 99),
           generator_cpu: cpuShare(cpuStart, seconds) };
}

// S1 and S4: users with one session each, `pushes` REST pushes with `inFlight` at a time.
async function pushesToManyUsers(transport) {
  const { users, pushes } = options;
  const latencies = [];
  let received = 0;
  let done;
  const allReceived = new Promise((resolve) => { done = resolve; });
  const prefix = `u${Math.random().toString(36).slice(2, 8)}`;
  await openSessions(users, (i) => `${prefix}-${i}`, transport, (message) => {
    latencies.push(performance.now() - message.t);
    received += 1;
    if (received === pushes) done();
  });
  return pushRound(prefix, options, latencies, allReceived);
}

// S2: one user with `sessions` sessions, `pushes` pushes one at a time.
async function fanOut() {
  const { sessions: count, pushes } = options;
  let received = 0;
  let waiting = null;
  const user = `fan${Math.random().toString(36).slice(2, 8)}`;
  await openSessions(count, () => user, 'websocket', () => {
    received += 1;
    if (received === count && waiting) waiting();
  });
  const cpuStart = process.cpuUsage();
  const started = performance.now();
  for (let n = 0; n < pushes; n += 1) {
    received = 0;
    const all = new Promise((resolve) => { waiting = resolve; });
    await request('POST', `/api/${user}/push`, { message: { n } });
    await all;
  }
  const seconds = (performance.now() - started) / 1000;
  return { rate: (count * pushes) / seconds, unit: 'deliveries/s', seconds,
           generator_cpu: cpuShare(cpuStart, seconds) };
}

// S3: `sessions` registered idle sessions, held until stdin closes (the orchestrator
// measures the server's memory meanwhile).
async function idleSessions() {
  const prefix = `idle${Math.random().toString(36).slice(2, 8)}`;
  await openSessions(options.sessions, (i) => `${prefix}-${i}`, 'websocket', () => {});
  process.stdout.write('READY\n');
  await new Promise((resolve) => process.stdin.on('end', resolve).resume());
  return { sessions: options.sessions };
}

// S5: open and register `sessions` sessions, `batch` at a time.
async function openAndRegister() {
  const prefix = `open${Math.random().toString(36).slice(2, 8)}`;
  const cpuStart = process.cpuUsage();
  const started = performance.now();
  await openSessions(options.sessions, (i) => `${prefix}-${i}`, 'websocket', () => {},
                     options.batch);
  const seconds = (performance.now() - started) / 1000;
  return { rate: options.sessions / seconds, unit: 'sessions/s', seconds,
           generator_cpu: cpuShare(cpuStart, seconds) };
}

// S1 with the batch route: `pushes` messages as requests of `perRequest` users each.
async function batchPushes() {
  const { users, pushes, perRequest, inFlight } = options;
  let received = 0;
  let done;
  const allReceived = new Promise((resolve) => { done = resolve; });
  const prefix = `b${Math.random().toString(36).slice(2, 8)}`;
  await openSessions(users, (i) => `${prefix}-${i}`, 'websocket', () => {
    received += 1;
    if (received === pushes) done();
  });
  const requests = Math.ceil(pushes / perRequest);
  let next = 0;
  const cpuStart = process.cpuUsage();
  const started = performance.now();
  async function worker() {
    while (next < requests) {
      const n = next;
      next += 1;
      const batch = Array.from({ length: perRequest }, (_, i) => `${prefix}-${(n * perRequest + i) % users}`);
      await request('POST', '/api/push', { users: batch, message: { n } });
    }
  }
  await Promise.all(Array.from({ length: inFlight }, worker));
  await allReceived;
  const seconds = (performance.now() - started) / 1000;
  return { rate: pushes / seconds, unit: 'deliveries/s', seconds,
           generator_cpu: cpuShare(cpuStart, seconds) };
}

// SCALE: `sessions` registered idle WebSockets (one user each), opened in chunks whose
// rates are reported (does opening slow down as sessions grow?); then, once the
// orchestrator has read the server's memory (it writes a line on stdin), one broadcast
// (where the server has the route) timed to each session's arrival, then S1's pushes to
// `users` of those users while every session stays open.
async function scale() {
  const { sessions: count, pushes, chunk } = options;
  const prefix = `s${Math.random().toString(36).slice(2, 8)}`;
  const broadcastArrivals = [];
  const latencies = [];
  let broadcastAt = 0;
  let onBroadcastDone = null;
  let onPushesDone = null;
  let received = 0;
  const onMessage = (message) => {
    const now = performance.now();
    if (message.broadcast) {
      broadcastArrivals.push(now - broadcastAt);
      if (broadcastArrivals.length === count && onBroadcastDone) onBroadcastDone();
    } else {
      latencies.push(now - message.t);
      received += 1;
      if (received === pushes && onPushesDone) onPushesDone();
    }
  };
  const chunkRates = [];
  const openCpu = process.cpuUsage();
  const openStarted = performance.now();
  for (let start = 0; start < count; start += chunk) {
    const size = Math.min(chunk, count - start);
    const t0 = performance.now();
    await openSessions(size, (i) => `${prefix}-${start + i}`, 'websocket', onMessage);
    chunkRates.push(size / ((performance.now() - t0) / 1000));
  }
  const openSeconds = (performance.now() - openStarted) / 1000;
  const openGeneratorCpu = cpuShare(openCpu, openSeconds);
  process.stdout.write(`READY ${JSON.stringify({ open_rate: count / openSeconds, chunkRates })}\n`);
  await new Promise((resolve) => process.stdin.once('data', resolve));
  const result = { sessions: count, open_rate: count / openSeconds,
                   open_rate_first: chunkRates[0],
                   open_rate_last: chunkRates[chunkRates.length - 1],
                   open_generator_cpu: openGeneratorCpu };
  if (options.broadcast) {
    const all = new Promise((resolve) => { onBroadcastDone = resolve; });
    const broadcastCpu = process.cpuUsage();
    broadcastAt = performance.now();
    await request('POST', '/api/broadcast', { message: { broadcast: true } });
    await Promise.race([all, new Promise((resolve) => setTimeout(resolve, 60000))]);
    // Reading thousands of messages takes the generator time too: a saturated generator
    // makes these figures a floor.
    result.broadcast_generator_cpu = cpuShare(broadcastCpu,
                                              (performance.now() - broadcastAt) / 1000);
    broadcastArrivals.sort((a, b) => a - b);
    Object.assign(result, { broadcast_received: broadcastArrivals.length,
                            broadcast_p50_ms: percentile(broadcastArrivals, 50),
                            broadcast_p99_ms: percentile(broadcastArrivals, 99),
                            broadcast_last_ms: broadcastArrivals[broadcastArrivals.length - 1] });
  }
  const pushed = new Promise((resolve) => { onPushesDone = resolve; });
  return Object.assign(result, await pushRound(prefix, options, latencies, pushed));
}

// POLL: `sessions` long-polling sessions, open and registered; counts every completed
// poll. The orchestrator writes a line to ask for the count (it reads the worker's CPU
// around an idle window), then "go": `pushes` pushes to `users` of them, 32 in flight.
async function pollingAtScale() {
  const { sessions: count, pushes } = options;
  const prefix = `p${Math.random().toString(36).slice(2, 8)}`;
  let polls = 0;
  let received = 0;
  let onPushesDone = null;
  const latencies = [];
  const openStarted = performance.now();
  const opened = await openSessions(count, (i) => `${prefix}-${i}`, 'polling', (message) => {
    latencies.push(performance.now() - message.t);
    received += 1;
    if (received === pushes && onPushesDone) onPushesDone();
  });
  for (const socket of opened) {
    socket.io.engine.transport.on('pollComplete', () => { polls += 1; });
  }
  const openSeconds = (performance.now() - openStarted) / 1000;
  const lines = require('readline').createInterface({ input: process.stdin });
  const nextLine = () => new Promise((resolve) => lines.once('line', resolve));
  process.stdout.write(`READY ${JSON.stringify({ open_rate: count / openSeconds })}\n`);
  while ((await nextLine()) === 'count') process.stdout.write(`${polls}\n`);
  const pollsBefore = polls;
  const pushed = new Promise((resolve) => { onPushesDone = resolve; });
  const figures = await pushRound(prefix, options, latencies, pushed);
  lines.close();
  return { sessions: count, open_rate: count / openSeconds, polls: polls - pollsBefore,
           ...figures };
}

function cpuShare(start, seconds) {
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1e6 / seconds;
}

const scenarios = {
  S1: () => pushesToManyUsers('websocket'),
  S2: fanOut,
  S3: idleSessions,
  S4: () => pushesToManyUsers('polling'),
  S4K: () => pushesToManyUsers('polling'),
  S5: openAndRegister,
  BATCH: batchPushes,
  SCALE: scale,
  POLL: pollingAtScale,
};

scenarios[options.scenario]().then((result) => {
  process.stdout.write(`${JSON.stringify(result)}\n`);
  for (const socket of sockets) socket.close();
  process.exit(0);
}, (error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
