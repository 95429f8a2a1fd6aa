// The benchmark's websocket fleet: N subscribers (and the writer) in one Node process, separate from
// the server under test, speaking the native protocol (protocol/README.md). bench/fanout.py starts it
// with its configuration as JSON in the FLEET environment variable and reads lines from stdout:
//   READY {...}   subscribers connected and subscribed (idle mode then waits for SIGTERM)
//   PHASE {...}   one measured fan-out phase
//   RESULT {...}  the mode's summary; the process then exits
// Modes: fanout (closed loop with W in flight, or a fixed rate), idle, recovery, expiry, and manydocs
// (fleet/manydocs.js: many documents with a few subscribers each, over several servers).
// Latency = receive time - the writer's stamp in the data (same host clock, performance.timeOrigin).
'use strict';
const fs = require('fs');
const WebSocket = require('ws');
const {performance} = require('perf_hooks');

const cfg = JSON.parse(process.env.FLEET || '{}');
const now = () => performance.timeOrigin + performance.now();
const STAMP = /"data":\{"s":(\d+),"t":([\d.]+)/;
const REVISION = /"revision":"([0-9a-f]+)"/;
const SID = /"sid":"([^"]+)"/;

function emit(kind, value) { process.stdout.write(`${kind} ${JSON.stringify(value)}\n`); }
function fail(message) { emit('RESULT', {error: message}); process.exit(2); }
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function cpuSeconds(pids) {
  let ticks = 0;
  for (const pid of pids || []) {
    try {
      const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(')').pop().trim().split(' ');
      ticks += +fields[11] + +fields[12];
    } catch (e) { /* exited */ }
  }
  return ticks / (cfg.clockTicks || 100);
}

function quantiles(values, count) {
  const sorted = Float64Array.from(values.subarray(0, count)).sort();
  const q = (p) => (count ? +sorted[Math.min(count - 1, Math.floor(p * count))].toFixed(2) : null);
  return {p50: q(0.5), p90: q(0.9), p99: q(0.99), max: count ? +sorted[count - 1].toFixed(2) : null};
}

// One websocket connection: replies matched by id, events handed to onEvent(client, text, kind).
class Client {
  constructor(index, onEvent, url = cfg.url) {
    this.index = index;
    this.onEvent = onEvent;
    this.url = url;
    this.pending = new Map();
    this.nextId = 1;
    this.ws = null;
    this.rev = -1;
    this.open = false;
  }

  connect() {
    return new Promise((resolve, reject) => {
      const local = cfg.localAddresses;
      const ws = new WebSocket(this.url, {
        perMessageDeflate: false,
        headers: cfg.auth ? {Authorization: cfg.auth} : {},
        handshakeTimeout: 20000,
        // Spread over source addresses when one address's ephemeral ports would not be enough.
        ...(local && local.length > 1 && this.index >= 0 ? {localAddress: local[this.index % local.length]} : {}),
      });
      this.ws = ws;
      ws.on('open', () => { this.open = true; resolve(this); });
      ws.on('error', (err) => { if (!this.open) reject(err); });
      ws.on('message', (data) => this.onMessage(data.toString()));
      ws.on('close', (code) => {
        const wasOpen = this.open;
        this.open = false;
        for (const [, waiter] of this.pending) waiter.reject(new Error(`closed ${code}`));
        this.pending.clear();
        if (wasOpen && this.onClose) this.onClose(code);
      });
    });
  }

  onMessage(text) {
    if (text.startsWith('{"event":')) { this.onEvent(this, text); return; }
    const reply = JSON.parse(text);
    const waiter = this.pending.get(reply.id);
    if (waiter === undefined) return;
    this.pending.delete(reply.id);
    if (reply.ok) waiter.resolve(reply); else waiter.reject(new Error(JSON.stringify(reply.error)));
  }

  request(command) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, {resolve, reject});
      this.ws.send(JSON.stringify({id, ...command}));
    });
  }
}

async function pool(count, limit, task) {
  let next = 0;
  const worker = async () => { while (next < count) await task(next++); };
  await Promise.all(Array.from({length: Math.min(limit, count)}, worker));
}

async function connectAll(n, onEvent, subscribe) {
  const clients = [];
  const started = now();
  await pool(n, cfg.connectConcurrency || 200, async (i) => {
    const client = new Client(i, onEvent);
    await client.connect();
    if (subscribe) {
      const reply = await client.request({op: 'subscribe', doc: cfg.doc});
      client.rev = parseInt(reply.document.revision, 16);
    }
    clients[i] = client;
  });
  return {clients, connectMs: now() - started};
}

async function openWriter() {
  const writer = new Client(-1, () => {});
  await writer.connect();
  const reply = await writer.request({op: 'open', name: cfg.doc, data: {s: 0, t: 0}, subscribe: false});
  return {writer, revision: parseInt(reply.document.revision, 16)};
}

function setCommand(seq) {
  return `{"id":${seq},"op":"set","doc":"${cfg.doc}","data":{"s":${seq},"t":${now().toFixed(3)}}}`;
}

// -- fan-out -------------------------------------------------------------------------------------

async function fanout() {
  const n = cfg.n;
  let phase = null;
  let stray = 0;
  let closes = 0;
  let writeErrors = 0;
  const onEvent = (client, text) => {
    const m = STAMP.exec(text);
    if (m === null) return;
    const t = now();
    const p = phase;
    const seq = +m[1];
    if (p === null || seq < p.base || seq >= p.base + p.updates) { stray++; return; }
    const k = seq - p.base;
    const slot = client.index * p.updates + k;
    if (p.seen[slot]) { p.dups++; return; }
    p.seen[slot] = 1;
    p.lat[p.count++] = t - +m[2];
    p.lastRecv = t;
    if (++p.perSeq[k] === n) p.onSeqComplete(k);
  };
  const {writer} = await openWriter();
  writer.onMessage = (text) => {
    if (!text.startsWith('{"id":')) return;
    if (!text.includes('"ok":true')) { writeErrors++; if (writeErrors < 5) console.error('write failed', text); }
  };
  const {clients, connectMs} = await connectAll(n, onEvent, true);
  for (const c of clients) c.onClose = () => { closes++; };
  emit('READY', {n, connectMs: +connectMs.toFixed(1)});

  let seq = 1;
  const runPhase = (spec) => new Promise((resolve) => {
    const p = {
      spec, base: seq, updates: spec.updates, count: 0, dups: 0, sent: 0, low: 0,
      seen: new Uint8Array(n * spec.updates), perSeq: new Uint32Array(spec.updates),
      lat: new Float64Array(n * spec.updates), firstSent: 0, lastRecv: 0,
    };
    seq += spec.updates;
    const send = () => {
      if (p.sent >= p.updates) return;
      if (p.sent === 0) p.firstSent = now();
      writer.ws.send(setCommand(p.base + p.sent));
      p.sent++;
    };
    let finished = false;
    let timer = null;
    const finish = (reason) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      const cpu1 = cpuSeconds(cfg.cpuPids);
      const redis1 = cpuSeconds(cfg.redisPids);
      const wall = (p.lastRecv - p.firstSent) / 1000;
      // Late duplicates would arrive after the last delivery: keep counting for a moment.
      setTimeout(() => {
        phase = null;
        const deliveries = p.count;
        const expected = n * p.updates;
        resolve({
          name: spec.name, kind: spec.kind, rate: spec.rate || null, window: spec.window || null,
          subscribers: n, updates: p.updates, reason, deliveries, expected,
          missed: expected - deliveries, duplicated: p.dups,
          seconds: +wall.toFixed(3),
          deliveriesPerS: wall > 0 ? Math.round(deliveries / wall) : 0,
          updatesPerS: wall > 0 ? +(p.updates / wall).toFixed(1) : 0,
          latencyMs: quantiles(p.lat, p.count),
          serverCpuS: +(cpu1 - cpu0).toFixed(3),
          redisCpuS: +(redis1 - redis0).toFixed(3),
          cpuMsPer1k: deliveries ? +((cpu1 - cpu0) * 1e6 / deliveries).toFixed(2) : null,
        });
      }, 300);
    };
    p.onSeqComplete = () => {
      if (spec.kind === 'closed') {
        while (p.low < p.updates && p.perSeq[p.low] === n) { p.low++; send(); }
      }
      if (p.count === n * p.updates) finish('all-delivered');
    };
    phase = p;
    const cpu0 = cpuSeconds(cfg.cpuPids);
    const redis0 = cpuSeconds(cfg.redisPids);
    timer = setTimeout(() => finish('timeout'), spec.timeoutMs || 60000);
    if (spec.kind === 'closed') {
      for (let i = 0; i < (spec.window || 4); i++) send();
    } else {
      const interval = 1000 / spec.rate;
      const start = now();
      const tick = () => {
        if (finished) return;
        while (p.sent < p.updates && now() - start >= p.sent * interval) send();
        if (p.sent < p.updates) setTimeout(tick, Math.max(0, start + p.sent * interval - now()));
      };
      tick();
    }
  });

  const phases = [];
  for (const spec of cfg.phases) {
    const result = await runPhase(spec);
    if (!spec.warmup) { phases.push(result); emit('PHASE', result); }
  }
  emit('RESULT', {connectMs: +connectMs.toFixed(1), phases, stray, closes, writeErrors});
  process.exit(0);
}

// -- idle ----------------------------------------------------------------------------------------

async function idle() {
  let closes = 0;
  await openWriter();
  const {clients, connectMs} = await connectAll(cfg.n, () => {}, true);
  for (const c of clients) c.onClose = () => { closes++; };
  emit('READY', {n: cfg.n, connectMs: +connectMs.toFixed(1)});
  const stop = () => { emit('RESULT', {n: cfg.n, connectMs: +connectMs.toFixed(1), closes}); process.exit(0); };
  process.on('SIGTERM', stop);
  setTimeout(stop, cfg.timeoutMs || 120000);
}

// -- recovery ------------------------------------------------------------------------------------

async function recovery() {
  const n = cfg.n;
  let dups = 0;
  let reconnects = 0;
  let firstDown = 0;
  let targetRev = Infinity;
  let recoveredAt = 0;
  let lastAckRev = -1;
  let failedWrites = 0;
  let writes = 0;
  const backoff = (attempt) => Math.min(1000, 50 * 2 ** attempt) * (0.5 + Math.random() / 2);

  const check = () => {
    if (recoveredAt || targetRev === Infinity) return;
    for (const c of clients) if (!c.open || c.rev < targetRev) return;
    recoveredAt = now();
  };
  const onEvent = (client, text) => {
    if (!text.startsWith('{"event":"updated"')) return;
    const rev = parseInt(REVISION.exec(text)[1], 16);
    if (rev <= client.rev) { dups++; return; }
    client.rev = rev;
    if (rev >= targetRev) check();
  };
  const resubscribe = async (client, attempt = 0) => {
    await sleep(backoff(attempt));
    try {
      await client.connect();
      const reply = await client.request({op: 'subscribe', doc: cfg.doc, revision: client.rev.toString(16)});
      if (!reply.unchanged) client.rev = Math.max(client.rev, parseInt(reply.document.revision, 16));
      reconnects++;
      check();
    } catch (e) {
      if (!client.open) await resubscribe(client, attempt + 1);
    }
  };
  const watch = (client) => {
    client.onClose = () => { if (!firstDown) firstDown = now(); resubscribe(client); };
  };

  const {writer} = await openWriter();
  // generation counts writer reconnects: only a write sent after one proves the new server is serving.
  const writerState = {client: writer, up: true, generation: 0};
  const reconnectWriter = async (attempt = 0) => {
    writerState.up = false;
    await sleep(backoff(attempt));
    try {
      await writerState.client.connect();
      writerState.generation++;
      writerState.up = true;
    } catch (e) { await reconnectWriter(attempt + 1); }
  };
  writer.onClose = () => { if (!firstDown) firstDown = now(); reconnectWriter(); };
  const {clients, connectMs} = await connectAll(n, onEvent, true);
  clients.forEach(watch);
  emit('READY', {n, connectMs: +connectMs.toFixed(1)});

  const deadline = now() + (cfg.timeoutMs || 60000);
  let seq = 0;
  let stopAt = Infinity;
  while (now() < Math.min(deadline, stopAt)) {
    await sleep(1000 / cfg.rate);
    if (!writerState.up) { failedWrites++; continue; }
    seq++;
    const generation = writerState.generation;
    writerState.client.request({op: 'set', doc: cfg.doc, data: {s: seq, t: now()}}).then((reply) => {
      writes++;
      const rev = parseInt(reply.document.revision, 16);
      lastAckRev = Math.max(lastAckRev, rev);
      if (generation > 0 && targetRev === Infinity) { targetRev = rev; check(); }
    }, () => { failedWrites++; });
    if (recoveredAt && stopAt === Infinity) stopAt = now() + (cfg.tailMs || 1000);
  }
  // The writer has stopped: every subscriber must converge on the last acknowledged revision.
  const settleUntil = now() + 5000;
  while (now() < settleUntil && clients.some((c) => c.rev < lastAckRev)) await sleep(20);
  const stale = clients.filter((c) => c.rev < lastAckRev).length;
  emit('RESULT', {
    n, connectMs: +connectMs.toFixed(1), recovered: recoveredAt > 0,
    recoveryMs: recoveredAt ? +(recoveredAt - firstDown).toFixed(1) : null,
    stale, duplicated: dups, reconnects, writes, failedWrites, finalRevision: lastAckRev,
  });
  process.exit(0);
}

// -- expiry --------------------------------------------------------------------------------------

// TTLs spread over ttlMin..ttlMax, every document subscribed; or, with dueInS, a burst: every document
// due in the same second (now + dueInS), only every stride-th one subscribed (subscribeSample of them).
async function expiry() {
  const expires = new Map();  // sid -> date_expires in ms, for the subscribed documents
  const burst = cfg.dueInS > 0;
  const stride = burst ? Math.max(1, Math.floor(cfg.docs / (cfg.subscribeSample || cfg.docs))) : 1;
  const expected = Math.ceil(cfg.docs / stride);
  const dueAt = burst ? (Math.floor(Date.now() / 1000) + cfg.dueInS) * 1000 : 0;
  const ttlOf = (i) => (burst
    ? Math.max(1, dueAt / 1000 - Math.floor(Date.now() / 1000))
    : cfg.ttlMin + (i % (cfg.ttlMax - cfg.ttlMin + 1)));
  const offDue = [];  // burst documents whose expiry landed in another second (a second ticked)
  const lags = new Float64Array(expected);
  let removed = 0;
  let wrongReason = 0;
  let done = null;
  const onEvent = (client, text) => {
    if (!text.startsWith('{"event":"removed"')) return;
    const t = now();
    const sid = SID.exec(text)[1];
    if (!text.includes('"reason":"expired"')) wrongReason++;
    const at = expires.get(sid);
    if (at === undefined) return;
    expires.delete(sid);
    lags[removed++] = t - at;
    if (removed === expected && done) done();
  };
  const connections = [];
  for (let i = 0; i < cfg.connections; i++) connections.push(await new Client(i, onEvent).connect());
  const started = now();
  const perConnection = Math.ceil(cfg.docs / cfg.connections);
  let maxExpires = 0;
  await Promise.all(connections.map((client, c) => pool(perConnection, 20, async (j) => {
    const i = c * perConnection + j;
    if (i >= cfg.docs) return;
    const subscribe = i % stride === 0;
    const reply = await client.request({
      op: 'open', name: `${cfg.prefix}-${i}`, data: {i}, ttl: ttlOf(i), mode: 'create_new', subscribe,
    });
    const at = Date.parse(reply.document.date_expires);
    if (burst && at !== dueAt) offDue.push({client, sid: reply.document.sid});
    maxExpires = Math.max(maxExpires, at);
    if (subscribe) expires.set(reply.document.sid, at);
  })));
  // A create sent just before a second ticked over lands one second late: move those (set_ttl keeps
  // the revision and sends no event), never within 50 ms of the next tick, until all are due at once.
  let moved = 0;
  while (offDue.length) {
    const late = offDue.splice(0);
    while (Date.now() % 1000 > 950) await sleep(10);
    await Promise.all(late.map(async ({client, sid}) => {
      const reply = await client.request({op: 'set_ttl', doc: sid, ttl: ttlOf(0)});
      const at = Date.parse(reply.document.date_expires);
      if (at !== dueAt) offDue.push({client, sid}); else moved++;
      if (expires.has(sid)) expires.set(sid, at);
    }));
  }
  if (burst) maxExpires = dueAt;
  const createMs = +(now() - started).toFixed(1);
  if (burst && Date.now() >= dueAt) fail(`creating ${cfg.docs} documents took ${createMs} ms, past their expiry`);
  emit('READY', {docs: cfg.docs, subscribed: expected, createMs, dueAtMs: dueAt || null, moved});
  await new Promise((resolve) => {
    done = resolve;
    if (removed === expected) resolve();
    setTimeout(resolve, Math.max(0, maxExpires - Date.now()) + (cfg.graceMs || 5000));
  });
  emit('RESULT', {
    docs: cfg.docs, subscribed: expected, removed, missing: expected - removed, wrongReason,
    lagMs: quantiles(lags, removed),
  });
  process.exit(0);
}

const helpers = {cfg, Client, pool, quantiles, cpuSeconds, emit, now, sleep};
const manydocs = () => require('./manydocs.js').manydocs(helpers);
const manydocsShard = () => require('./manydocs.js').manydocsShard(helpers);
const modes = {fanout, idle, recovery, expiry, manydocs, manydocsShard};
if (!modes[cfg.mode]) fail(`unknown mode ${cfg.mode}`);
setTimeout(() => fail('fleet timeout'), cfg.hardTimeoutMs || 300000).unref();
modes[cfg.mode]().catch((err) => fail(String(err && err.stack || err)));
