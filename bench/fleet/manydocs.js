// The manydocs mode of the fleet (bench/manydocs.py drives it; fleet.js supplies the helpers).
// The common shape of an application: one document per user, 1-3 devices (connections) each.
//   - cfg.docs documents, each with minSubs..maxSubs subscribers drawn at random (seeded); every
//     subscriber is its own connection, subscriber j of document i on server (i + j) % servers, so
//     a document with several subscribers is served by both processes (its events cross Redis);
//   - one writer connection per server; document i is written through writer i % servers, and one
//     of the many documents never has two writes in flight (a user's device writes, then the next);
//   - for comparison, on the same servers and fleet: cfg.hotSubscribers connections (alternating
//     servers) on one hot document written through the first writer with W writes in flight, as in
//     the fan-out scenario.
// ~21,000 connections do not fit one process's open-file limit (often 20,000, and only root may
// raise it), so this process (the coordinator: writers, phases, bookkeeping) forks cfg.shards
// subscriber processes (mode manydocsShard), each holding a share of the subscribers. A shard checks
// every event it receives and reports each delivery (the write it belongs to, its latency) in batches
// over the IPC channel; the coordinator completes a write when all of its document's subscribers
// have it. Lines: CREATED, BASELINE and SUBSCRIBED (the fleet then waits for SIGUSR1: the runner
// reads the servers' RSS), START and PHASE around each measured phase (a profiler may start at
// START), RESULT.
// A write carries {"s": its sequence number, "t": send time}. A subscriber counts an event whose
// revision is not above the last it holds as duplicated (equal) or stale (lower: out of order), an
// event of another document's write as misrouted; every write must reach each of its document's
// subscribers (else missed); after a phase every subscriber must hold the revision the writer's last
// reply for its document returned (else it is stale).
'use strict';

const {fork} = require('child_process');
const path = require('path');

const STAMP = /"data":\{"s":(\d+),"t":([\d.]+)/;
const REVISION = /"revision":"([0-9a-f]+)"/;
const WRITE_ACK = /^\{"id":"w(\d+)","ok":(true|false)/;

// xorshift32: the subscriber counts are the same for the same seed.
function random(seed) {
  let x = (seed >>> 0) || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x / 4294967296;
  };
}

const docName = (cfg, i) => (i === cfg.docs ? `${cfg.prefix}-hot` : `${cfg.prefix}-${i}`);

// The document of write k of a phase: the hot one (index cfg.docs), or the many in rotation.
const docOf = (cfg, p, k) => (p.target === 'hot' ? cfg.docs : (p.start + k) % cfg.docs);

// -- a shard: subscribers only ----------------------------------------------------------------------

async function manydocsShard({cfg, Client, pool, now}) {
  const clients = [];
  let phase = null;
  let counts = {dups: 0, stale: 0, misrouted: 0};
  let stray = 0;
  let closes = 0;
  let batch = {k: [], lat: [], lastRecv: 0};
  let flushing = false;
  const flush = () => {
    flushing = false;
    if (!batch.k.length) return;
    process.send({type: 'got', ...batch});
    batch = {k: [], lat: [], lastRecv: 0};
  };
  const onEvent = (client, text) => {
    const m = STAMP.exec(text);
    if (m === null) return;
    const t = now();
    const p = phase;
    const s = +m[1];
    if (p === null || s < p.base || s >= p.base + p.writes) { stray++; return; }
    const k = s - p.base;
    if (docOf(cfg, p, k) !== client.doc) { counts.misrouted++; return; }
    const rev = parseInt(REVISION.exec(text)[1], 16);
    if (rev <= client.rev) { if (rev === client.rev) counts.dups++; else counts.stale++; return; }
    client.rev = rev;
    batch.k.push(k);
    batch.lat.push(t - +m[2]);
    batch.lastRecv = t;
    if (!flushing) { flushing = true; setImmediate(flush); }
  };
  const handlers = {
    async subscribe({subs}) {
      await pool(subs.length / 2, cfg.connectConcurrency || 256, async (i) => {
        const doc = subs[2 * i];
        const client = new Client(clients.length, onEvent, cfg.urls[subs[2 * i + 1]]);
        await client.connect();
        const reply = await client.request({op: 'subscribe', doc: docName(cfg, doc)});
        client.rev = parseInt(reply.document.revision, 16);
        client.doc = doc;
        client.onClose = () => { closes++; };
        clients.push(client);
      });
      return {count: subs.length / 2};
    },
    async phase(spec) { phase = spec; return {}; },
    async end({ackRevs, target}) {
      flush();
      phase = null;
      let stale = counts.stale;
      for (const c of clients) {
        const isHot = c.doc === cfg.docs;
        if ((target === 'hot') === isHot && c.rev < ackRevs[isHot ? 0 : c.doc]) stale++;
      }
      const found = {...counts, stale};
      counts = {dups: 0, stale: 0, misrouted: 0};
      return found;
    },
    async totals() { return {stray, closes}; },
  };
  process.on('message', (message) => {
    handlers[message.type](message).then(
      (value) => process.send({type: 'reply', id: message.id, value}),
      (err) => process.send({type: 'reply', id: message.id, error: String(err && err.stack || err)}),
    );
  });
  process.on('disconnect', () => process.exit(0));
  await new Promise(() => {});  // serve until the coordinator goes
}

// The coordinator's handle on a shard: request/reply over IPC, deliveries to onGot.
function startShard(cfg, onGot) {
  const child = fork(path.join(__dirname, 'fleet.js'), [], {
    env: {...process.env, FLEET: JSON.stringify({...cfg, mode: 'manydocsShard'})},
    serialization: 'advanced',
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  const pending = new Map();
  let nextId = 1;
  child.on('message', (message) => {
    if (message.type === 'got') { onGot(message); return; }
    const waiter = pending.get(message.id);
    pending.delete(message.id);
    if (message.error) waiter.reject(new Error(message.error)); else waiter.resolve(message.value);
  });
  child.on('exit', (code) => {
    for (const [, waiter] of pending) waiter.reject(new Error(`shard exited (${code})`));
    pending.clear();
  });
  return {
    child,
    call: (type, value = {}) => new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, {resolve, reject});
      child.send({type, id, ...value});
    }),
  };
}

// -- the coordinator ------------------------------------------------------------------------------

async function manydocs({cfg, Client, pool, quantiles, cpuSeconds, emit, now, sleep}) {
  const urls = cfg.urls;
  const servers = urls.length;
  const rand = random(cfg.seed || 1);
  const docs = [];
  for (let i = 0; i <= cfg.docs; i++) {
    const want = i === cfg.docs ? cfg.hotSubscribers
      : cfg.minSubs + Math.floor(rand() * (cfg.maxSubs - cfg.minSubs + 1));
    docs.push({index: i, name: docName(cfg, i), writer: i === cfg.docs ? 0 : i % servers, want, ackRev: -1, busy: false});
  }
  const hot = docs[cfg.docs];
  let phase = null;
  let closes = 0;
  let writeErrors = 0;
  let lateGot = 0;  // deliveries reported between phases: they count as stray

  const signalled = () => new Promise((resolve) => {
    const timer = setTimeout(resolve, cfg.signalWaitMs || 60000);
    process.once('SIGUSR1', () => { clearTimeout(timer); resolve(); });
  });
  const pause = async (kind, value) => {
    const go = signalled();
    emit(kind, value);
    await go;
  };

  // -- writers: replies to writes are matched by their "w<seq>" id, other replies as usual
  const writers = [];
  for (let w = 0; w < servers; w++) {
    const writer = new Client(-1 - w, () => {}, urls[w]);
    await writer.connect();
    const plain = writer.onMessage.bind(writer);
    writer.onMessage = (text) => {
      const m = WRITE_ACK.exec(text);
      if (m === null) { plain(text); return; }
      const p = phase;
      if (m[2] !== 'true') { writeErrors++; if (writeErrors < 5) console.error('write failed', text); return; }
      if (p === null) return;
      const k = +m[1] - p.base;
      if (k < 0 || k >= p.writes) return;
      const doc = docs[docOf(cfg, p, k)];
      doc.ackRev = Math.max(doc.ackRev, parseInt(REVISION.exec(text)[1], 16));
      p.lastAck = now();
      if (p.target === 'none') p.complete(k, doc);
    };
    writer.onClose = () => { closes++; };
    writers.push(writer);
  }

  const created = now();
  const open = (doc) => writers[doc.writer]
    .request({op: 'open', name: doc.name, data: {s: 0, t: 0}, subscribe: false})
    .then((reply) => { doc.ackRev = parseInt(reply.document.revision, 16); });
  await pool(docs.length, cfg.connectConcurrency || 256, (i) => open(docs[i]));
  emit('CREATED', {docs: cfg.docs, createMs: +(now() - created).toFixed(1)});

  // CPU per second of the servers and Redis with nothing written: the background (keepalive pings,
  // expiry sweeps) that a phase's CPU also holds, to take out of the per-delivery figures.
  const idle = async () => {
    const servers0 = cpuSeconds(cfg.serverPids.flat());
    const redis0 = cpuSeconds(cfg.redisPids);
    const started = now();
    await sleep(cfg.idleMs || 3000);
    const seconds = (now() - started) / 1000;
    return {
      seconds: +seconds.toFixed(3),
      serverCpuPerS: +((cpuSeconds(cfg.serverPids.flat()) - servers0) / seconds).toFixed(4),
      redisCpuPerS: +((cpuSeconds(cfg.redisPids) - redis0) / seconds).toFixed(4),
    };
  };
  const idleBefore = await idle();

  // -- deliveries reported by the shards
  const onGot = ({k: ks, lat, lastRecv}) => {
    const p = phase;
    if (p === null) { lateGot += ks.length; return; }
    for (let i = 0; i < ks.length; i++) {
      const k = ks[i];
      p.lat[p.count++] = lat[i];
      if (++p.got[k] === docs[docOf(cfg, p, k)].want) p.complete(k, docs[docOf(cfg, p, k)]);
    }
    p.lastRecv = Math.max(p.lastRecv, lastRecv);
  };
  const shards = Array.from({length: cfg.shards || 1}, () => startShard(cfg, onGot));
  const everyShard = (type, value) => Promise.all(shards.map((s) => s.call(type, value)));
  // Subscriber list entries are (document, server) pairs, dealt to the shards in turn.
  const subscribeAll = async (pairs) => {
    const started = now();
    const parts = shards.map(() => []);
    for (let i = 0; i < pairs.length; i++) parts[i % shards.length].push(...pairs[i]);
    await Promise.all(shards.map((s, i) => s.call('subscribe', {subs: Int32Array.from(parts[i])})));
    return now() - started;
  };

  // -- phases: closed loop (at most `window` writes in flight) or a fixed rate of writes
  let seq = 1;
  const cursor = {many: 0, hot: 0, none: 0};
  const runPhase = async (spec) => {
    const start = cursor[spec.target];
    cursor[spec.target] += spec.writes;
    const perWrite = spec.target === 'none' ? 0 : spec.target === 'hot' ? hot.want : cfg.maxSubs;
    const p = {
      spec, target: spec.target, start, base: seq, writes: spec.writes, sent: 0, done: 0, expected: 0,
      count: 0, blocked: 0, firstSent: 0, lastRecv: 0, lastAck: 0,
      got: new Uint16Array(spec.writes), lat: new Float64Array(spec.writes * perWrite),
    };
    seq += spec.writes;
    await everyShard('phase', {base: p.base, writes: p.writes, start, target: p.target});
    return new Promise((resolve) => {
      let finished = false;
      let timer = null;
      let cpu0 = null;
      let redis0 = 0;
      const trySend = () => {
        while (!finished && p.sent < p.writes) {
          if (spec.kind === 'closed' && p.sent - p.done >= spec.window) return;
          if (spec.kind === 'rate' && now() - p.startedAt < p.sent * (1000 / spec.rate)) return;
          const k = p.sent;
          const doc = docs[docOf(cfg, p, k)];
          if (doc.busy) { p.blocked++; return; }  // its previous write is still in flight
          doc.busy = doc !== hot;
          if (k === 0) p.firstSent = now();
          p.expected += spec.target === 'none' ? 0 : doc.want;
          const s = p.base + k;
          writers[doc.writer].ws.send(
            `{"id":"w${s}","op":"set","doc":"${doc.name}","data":{"s":${s},"t":${now().toFixed(3)}}}`,
          );
          p.sent++;
        }
      };
      const finish = (reason) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        const cpu1 = cfg.serverPids.map(cpuSeconds);
        const redis1 = cpuSeconds(cfg.redisPids);
        const end = spec.target === 'none' ? p.lastAck : p.lastRecv;
        const wall = (end - p.firstSent) / 1000;
        // Late duplicates and the writers' last replies arrive after the last delivery: wait a little.
        setTimeout(async () => {
          const ackRevs = spec.target === 'hot' ? [hot.ackRev] : docs.slice(0, cfg.docs).map((d) => d.ackRev);
          const checks = spec.target === 'none' ? []
            : await everyShard('end', {ackRevs: Int32Array.from(ackRevs), target: spec.target});
          phase = null;
          const sum = (key) => checks.reduce((total, c) => total + c[key], 0);
          for (const doc of docs) doc.busy = false;
          const perServer = cpu1.map((v, i) => +(v - cpu0[i]).toFixed(3));
          const serverCpu = perServer.reduce((a, b) => a + b, 0);
          const redisCpu = redis1 - redis0;
          const per = spec.target === 'none' ? p.done : p.count;  // deliveries (or writes when none)
          resolve({
            name: spec.name, target: spec.target, kind: spec.kind, rate: spec.rate || null,
            window: spec.window || null, writes: p.writes, written: p.done, reason,
            deliveries: p.count, expected: p.expected, missed: p.expected - p.count,
            duplicated: sum('dups'), stale: sum('stale'), misrouted: sum('misrouted'),
            blocked: p.blocked,
            seconds: +wall.toFixed(3),
            deliveriesPerS: wall > 0 ? Math.round(p.count / wall) : 0,
            writesPerS: wall > 0 ? Math.round(p.done / wall) : 0,
            latencyMs: quantiles(p.lat, p.count),
            serverCpuS: +serverCpu.toFixed(3), serverCpuSByProcess: perServer,
            redisCpuS: +redisCpu.toFixed(3),
            cpuMsPer1k: per ? +(serverCpu * 1e6 / per).toFixed(2) : null,
            redisMsPer1k: per ? +(redisCpu * 1e6 / per).toFixed(2) : null,
          });
        }, 300);
      };
      p.complete = (k, doc) => {
        doc.busy = false;
        p.done++;
        if (p.done === p.writes) { finish('all-delivered'); return; }
        trySend();
      };
      phase = p;
      if (!spec.warmup) emit('START', {name: spec.name});
      cpu0 = cfg.serverPids.map(cpuSeconds);
      redis0 = cpuSeconds(cfg.redisPids);
      timer = setTimeout(() => finish('timeout'), spec.timeoutMs || 60000);
      p.startedAt = now();
      if (spec.kind === 'rate') {
        const tick = () => {
          if (finished || p.sent >= p.writes) return;
          trySend();
          setTimeout(tick, 1);
        };
        tick();
      } else {
        trySend();
      }
    });
  };
  const run = async (specs) => {
    const out = [];
    for (const spec of specs) {
      const result = await runPhase(spec);
      if (!spec.warmup) { out.push(result); emit('PHASE', result); }
    }
    return out;
  };

  const phases = await run(cfg.phases.none);
  await pause('BASELINE', {});
  const subscriptions = [];
  for (const doc of docs.slice(0, cfg.docs)) {
    for (let j = 0; j < doc.want; j++) subscriptions.push([doc.index, (doc.index + j) % servers]);
  }
  const subscribeMs = await subscribeAll(subscriptions);
  await pause('SUBSCRIBED', {subscriptions: subscriptions.length, subscribeMs: +subscribeMs.toFixed(1)});
  const hotSubscribeMs = await subscribeAll(Array.from({length: hot.want}, (_, i) => [hot.index, i % servers]));
  const idleSubscribed = await idle();
  phases.push(...await run(cfg.phases.many));
  phases.push(...await run(cfg.phases.hot));
  const totals = await everyShard('totals');
  emit('RESULT', {
    docs: cfg.docs, subscriptions: subscriptions.length, subscribeMs: +subscribeMs.toFixed(1),
    hotSubscribers: hot.want, hotSubscribeMs: +hotSubscribeMs.toFixed(1), shards: shards.length,
    byCount: [1, 2, 3].map((c) => docs.slice(0, cfg.docs).filter((d) => d.want === c).length),
    idle: {before: idleBefore, subscribed: idleSubscribed},
    phases, stray: totals.reduce((t, s) => t + s.stray, 0) + lateGot,
    closes: closes + totals.reduce((t, s) => t + s.closes, 0), writeErrors,
  });
  for (const shard of shards) shard.child.disconnect();
  process.exit(0);
}

module.exports = {manydocs, manydocsShard};
