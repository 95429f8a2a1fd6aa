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
// Lines: CREATED, BASELINE and SUBSCRIBED (the fleet then waits for SIGUSR1: the runner reads the
// servers' RSS), PHASE per measured phase, RESULT.
// A write carries {"s": its sequence number, "t": send time}. A subscriber counts an event whose
// revision is not above the last it holds as duplicated (equal) or stale (lower: out of order), an
// event of another document's write as misrouted; a write is complete when each of its document's
// subscribers has it, and every write must complete (else missed); after a phase every subscriber
// must hold the revision the writer's last reply for its document returned (else it is stale).
'use strict';

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

async function manydocs({cfg, Client, pool, quantiles, cpuSeconds, emit, now, sleep}) {
  const urls = cfg.urls;
  const servers = urls.length;
  const rand = random(cfg.seed || 1);
  const docs = [];
  for (let i = 0; i < cfg.docs; i++) {
    const subs = cfg.minSubs + Math.floor(rand() * (cfg.maxSubs - cfg.minSubs + 1));
    docs.push({name: `${cfg.prefix}-${i}`, writer: i % servers, want: subs, subs: [], ackRev: -1, busy: false});
  }
  const hot = {name: `${cfg.prefix}-hot`, writer: 0, want: cfg.hotSubscribers, subs: [], ackRev: -1, busy: false};
  let phase = null;
  let stray = 0;
  let closes = 0;
  let writeErrors = 0;

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
      const doc = p.docOf(k);
      doc.ackRev = Math.max(doc.ackRev, parseInt(REVISION.exec(text)[1], 16));
      p.lastAck = now();
      if (p.spec.target === 'none') p.complete(k, doc);
    };
    writer.onClose = () => { closes++; };
    writers.push(writer);
  }

  const created = now();
  const open = (doc) => writers[doc.writer]
    .request({op: 'open', name: doc.name, data: {s: 0, t: 0}, subscribe: false})
    .then((reply) => { doc.ackRev = parseInt(reply.document.revision, 16); });
  await pool(docs.length, cfg.connectConcurrency || 256, (i) => open(docs[i]));
  await open(hot);
  emit('CREATED', {docs: docs.length, createMs: +(now() - created).toFixed(1)});

  // -- the subscribers
  const onEvent = (client, text) => {
    const m = STAMP.exec(text);
    if (m === null) return;
    const t = now();
    const p = phase;
    const s = +m[1];
    if (p === null || s < p.base || s >= p.base + p.writes) { stray++; return; }
    const k = s - p.base;
    const doc = client.doc;
    if (p.docOf(k) !== doc) { p.misrouted++; return; }
    const rev = parseInt(REVISION.exec(text)[1], 16);
    if (rev <= client.rev) { if (rev === client.rev) p.dups++; else p.stale++; return; }
    client.rev = rev;
    p.lat[p.count++] = t - +m[2];
    p.lastRecv = t;
    if (++p.got[k] === doc.subs.length) p.complete(k, doc);
  };
  const subscribeAll = async (list) => {
    const started = now();
    await pool(list.length, cfg.connectConcurrency || 256, async (i) => {
      const {doc, server} = list[i];
      const client = new Client(i, onEvent, urls[server]);
      await client.connect();
      const reply = await client.request({op: 'subscribe', doc: doc.name});
      client.rev = parseInt(reply.document.revision, 16);
      client.doc = doc;
      client.onClose = () => { closes++; };
      doc.subs.push(client);
    });
    return now() - started;
  };

  // -- phases: closed loop (at most `window` writes in flight) or a fixed rate of writes
  let seq = 1;
  const cursor = {many: 0, hot: 0, none: 0};
  const runPhase = (spec) => new Promise((resolve) => {
    const list = spec.target === 'hot' ? [hot] : docs;
    const start = cursor[spec.target];
    cursor[spec.target] += spec.writes;
    const perWrite = spec.target === 'none' ? 0 : Math.max(...list.map((d) => d.subs.length));
    const p = {
      spec, base: seq, writes: spec.writes, sent: 0, done: 0, expected: 0, count: 0,
      dups: 0, stale: 0, misrouted: 0, blocked: 0, firstSent: 0, lastRecv: 0, lastAck: 0,
      got: new Uint16Array(spec.writes), lat: new Float64Array(spec.writes * perWrite),
      docOf: (k) => list[(start + k) % list.length],
    };
    seq += spec.writes;
    let finished = false;
    let timer = null;
    let cpu0 = null;
    let redis0 = 0;
    const trySend = () => {
      while (!finished && p.sent < p.writes) {
        if (spec.kind === 'closed' && p.sent - p.done >= spec.window) return;
        if (spec.kind === 'rate' && now() - p.startedAt < p.sent * (1000 / spec.rate)) return;
        const k = p.sent;
        const doc = p.docOf(k);
        if (doc.busy) { p.blocked++; return; }  // its previous write is still in flight
        doc.busy = spec.target !== 'hot';
        if (k === 0) p.firstSent = now();
        p.expected += spec.target === 'none' ? 0 : doc.subs.length;
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
      setTimeout(() => {
        phase = null;
        let stale = p.stale;
        if (spec.target !== 'none') {
          for (const doc of list) for (const c of doc.subs) if (c.rev < doc.ackRev) stale++;
        }
        for (const doc of list) doc.busy = false;
        const perServer = cpu1.map((v, i) => +(v - cpu0[i]).toFixed(3));
        const serverCpu = perServer.reduce((a, b) => a + b, 0);
        const redisCpu = redis1 - redis0;
        const per = spec.target === 'none' ? p.done : p.count;  // deliveries (or writes when none)
        resolve({
          name: spec.name, target: spec.target, kind: spec.kind, rate: spec.rate || null,
          window: spec.window || null, writes: p.writes, written: p.done, reason,
          deliveries: p.count, expected: p.expected, missed: p.expected - p.count,
          duplicated: p.dups, stale, misrouted: p.misrouted, blocked: p.blocked,
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
  for (const [i, doc] of docs.entries()) {
    for (let j = 0; j < doc.want; j++) subscriptions.push({doc, server: (i + j) % servers});
  }
  const subscribeMs = await subscribeAll(subscriptions);
  await pause('SUBSCRIBED', {subscriptions: subscriptions.length, subscribeMs: +subscribeMs.toFixed(1)});
  const hotList = Array.from({length: hot.want}, (_, i) => ({doc: hot, server: i % servers}));
  const hotSubscribeMs = await subscribeAll(hotList);
  phases.push(...await run(cfg.phases.many));
  phases.push(...await run(cfg.phases.hot));
  emit('RESULT', {
    docs: docs.length, subscriptions: subscriptions.length, subscribeMs: +subscribeMs.toFixed(1),
    hotSubscribers: hot.want, hotSubscribeMs: +hotSubscribeMs.toFixed(1),
    byCount: [1, 2, 3].map((c) => docs.filter((d) => d.want === c).length),
    phases, stray, closes, writeErrors,
  });
  process.exit(0);
}

module.exports = {manydocs};
