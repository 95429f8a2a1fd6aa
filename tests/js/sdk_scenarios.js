// Drives the unmodified official Twilio Sync JS SDK against this server.
//
//   node sdk_scenarios.js <scenario> <ws url of /v3/wsconnect> <json args>
//
// Prints one JSON line {"ok": true, ...} on success; any failure prints {"ok": false, "error": ...} and
// exits 1. Interactive scenarios print {"phase": ...} lines before it, at which pytest acts (kills the
// server, writes…). tests/test_twilsock_sdk.py runs each scenario with tokens it minted itself.
'use strict';

const { isDeepStrictEqual } = require('node:util');
const { SyncClient } = require('twilio-sync');

const [, , scenario, wsUrl, rawArgs] = process.argv;
const args = JSON.parse(rawArgs || '{}');
const clients = [];

function client(token) {
  const c = new SyncClient(token, { twilsock: { uri: wsUrl }, logLevel: process.env.SDK_LOG || 'silent' });
  clients.push(c);
  return c;
}

function waitFor(emitter, event, predicate = () => true, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${event}`)), ms);
    const listener = (value) => {
      if (predicate(value)) {
        clearTimeout(timer);
        emitter.removeListener(event, listener);
        resolve(value);
      }
    };
    emitter.on(event, listener);
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Tells pytest that the scenario reached `phase` (one JSON line; the last line is the result).
function report(phase, details = {}) {
  console.log(JSON.stringify({ phase, ...details }));
}

async function restWrite(restUrl, auth, data) {
  const response = await fetch(restUrl, {
    method: 'POST',
    headers: {
      Authorization: 'Basic ' + Buffer.from(auth).toString('base64'),
      'Content-Type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ Data: JSON.stringify(data) }),
  });
  if (!response.ok) throw new Error(`REST write failed: ${response.status} ${await response.text()}`);
  return response.json();
}

// Resolves once the document's subscription is established (so remote events will arrive).
async function subscribed(doc) {
  for (let i = 0; i < 200; i++) {
    if (doc.syncDocumentImpl && doc.syncDocumentImpl.services.subscriptions.persisted.get(doc.sid)?.isEstablished) {
      return;
    }
    await sleep(25);
  }
  throw new Error('subscription was not established');
}

const scenarios = {
  // Two clients on one document see each other's set and update.
  async setUpdate({ tokens, name }) {
    const [a, b] = tokens.map(client);
    const docA = await a.document(name);
    const docB = await b.document(name);
    await Promise.all([subscribed(docA), subscribed(docB)]);
    const seenByB = waitFor(docB, 'updated', (e) => !e.isLocal);
    await docA.set({ greeting: 'hello', n: 1 });
    const first = await seenByB;
    const seenByA = waitFor(docA, 'updated', (e) => !e.isLocal);
    await docB.update({ n: 2, from: 'b' });
    const second = await seenByA;
    return { sid: docA.sid, same: docA.sid === docB.sid, b_saw: first.data, a_saw: second.data, revision: docA.revision };
  },

  // Concurrent mutate() increments from two clients all land (412 → re-read → retry in the SDK).
  async mutate({ tokens, name, perClient }) {
    const [a, b] = tokens.map(client);
    const docA = await a.document({ id: name, data: { count: 0 } });
    const docB = await b.document(name);
    await Promise.all([subscribed(docA), subscribed(docB)]);
    const bump = (doc) => doc.mutate((value) => ({ ...value, count: (value.count || 0) + 1 }));
    const writes = [];
    for (let i = 0; i < perClient; i++) {
      writes.push(bump(docA), bump(docB));
    }
    await Promise.all(writes);
    const total = perClient * 2;
    const settled = (doc) =>
      doc.data.count === total ? Promise.resolve() : waitFor(doc, 'updated', (e) => e.data.count === total);
    await Promise.all([settled(docA), settled(docB)]);
    return { a: docA.data.count, b: docB.data.count };
  },

  // removeDocument() on one client and TTL expiry both fire `removed` on the other.
  async removed({ tokens, name, ttlName }) {
    const [a, b] = tokens.map(client);
    const docA = await a.document(name);
    const docB = await b.document(name);
    await subscribed(docB);
    const removedOnB = waitFor(docB, 'removed');
    await docA.removeDocument();
    const removed = await removedOnB;

    const expiring = await a.document({ id: ttlName, mode: 'create_new', data: { short: true }, ttl: 2 });
    const watcher = await b.document({ id: ttlName, mode: 'open_existing' });
    // No wait for the subscription here: whether the expiry comes as an event or as a failed
    // (404) subscription, the document must emit `removed`.
    const expired = await waitFor(watcher, 'removed', () => true, 8000);
    return { removed_local: removed.isLocal, expired_local: expired.isLocal, expires: expiring.dateExpires };
  },

  // A REST write reaches the SDK subscriber; then the SDK writes (checked over REST by pytest).
  async rest({ tokens, name, restUrl, auth }) {
    const [a] = tokens.map(client);
    const doc = await a.document(name);
    await subscribed(doc);
    const seen = waitFor(doc, 'updated', (e) => !e.isLocal);
    await restWrite(restUrl, auth, { from: 'rest' });
    const update = await seen;
    await doc.set({ from: 'sdk' });
    return { sdk_saw: update.data, sid: doc.sid };
  },

  // A server restart: once this reports `subscribed`, pytest takes the server down, writes through REST
  // while it is down and again once it is back. The client must reconnect by itself, re-establish its
  // subscription with its last_event_id and end with `expected`; then a live write must still arrive.
  async restart({ tokens, name, expected, restUrl, auth, reconnectMs }) {
    const [a] = tokens.map(client);
    const states = [];
    a.on('connectionStateChanged', (state) => states.push(state));
    const doc = await a.document(name);
    await subscribed(doc);
    const updates = [];
    doc.on('updated', (e) => updates.push({ data: e.data, isLocal: e.isLocal, revision: doc.revision }));
    const lost = waitFor(a, 'connectionStateChanged', (state) => state !== 'connected', reconnectMs);
    // Listening before pytest writes, so that neither a replay nor a live event can slip by.
    const caughtUp = waitFor(doc, 'updated', (e) => isDeepStrictEqual(e.data, expected), reconnectMs);
    const back = waitFor(a, 'connectionStateChanged', (state) => state === 'connected', reconnectMs);
    report('subscribed', { revision: doc.revision });
    await lost;
    report('lost', { state: a.connectionState });
    const [update] = await Promise.all([caughtUp, back]);
    const caughtUpRevision = doc.revision;
    await subscribed(doc);
    const live = waitFor(doc, 'updated', (e) => isDeepStrictEqual(e.data, { live: true }));
    await restWrite(restUrl, auth, { live: true });
    await live;
    return {
      states,
      updates,
      caught_up: { data: update.data, isLocal: update.isLocal, revision: caughtUpRevision },
      final: { data: doc.data, revision: doc.revision, state: a.connectionState },
    };
  },

  // Errors: a missing document, unsupported Lists, and If-Match conflicts come back as SDK errors.
  async errors({ tokens, name }) {
    const [a] = tokens.map(client);
    const results = {};
    try {
      await a.document({ id: name, mode: 'open_existing' });
    } catch (e) {
      results.missing = { status: e.status, code: e.code };
    }
    try {
      await a.list('some-list');
    } catch (e) {
      results.list = { status: e.status };
    }
    const doc = await a.document({ id: name, mode: 'create_new', data: { x: 1 } });
    try {
      await a.document({ id: name, mode: 'create_new' });
    } catch (e) {
      results.duplicate = { status: e.status, code: e.code };
    }
    await doc.set({ x: 2 });
    results.data = (await a.document(name)).data;
    return results;
  },

  // A short-lived token: tokenAboutToExpire, then either updateToken() keeps the session, or tokenExpired.
  async expiring({ token, freshToken, name }) {
    const c = client(token);
    let expired = false;
    c.on('tokenExpired', () => {
      expired = true;
    });
    await waitFor(c, 'tokenAboutToExpire');
    if (!freshToken) {
      await waitFor(c, 'tokenExpired', () => true, 10000);
      return { expired: true };
    }
    await c.updateToken(freshToken);
    await sleep(5000); // past the first token's expiry
    const doc = await c.document(name);
    await doc.set({ still: 'here' });
    return { expired, state: c.connectionState, data: doc.data };
  },

  // Access control: what a client without each right sees, as SyncErrors with status and code; then a
  // revoked read right (through REST, by pytest's arguments) ends the subscription with a 'failure'.
  async acl({ token, names, restUrl, auth }) {
    const c = client(token);
    const error = (e) => ({ status: e.status, code: e.code });
    const results = {};
    try {
      await c.document({ id: names.none, mode: 'open_existing' });
    } catch (e) {
      results.open_without_read = error(e);
    }
    try {
      await c.document({ id: names.fresh, mode: 'create_new', data: {} });
    } catch (e) {
      results.create = error(e);
    }
    const readOnly = await c.document({ id: names.read, mode: 'open_existing' });
    results.read_data = readOnly.data;
    try {
      await readOnly.set({ changed: true });
    } catch (e) {
      results.set_with_read_only = error(e);
    }
    const noManage = await c.document({ id: names.write, mode: 'open_existing' });
    await noManage.set({ written: true });
    results.written = noManage.data;
    try {
      await noManage.removeDocument();
    } catch (e) {
      results.remove_without_manage = error(e);
    }
    // Revocation: the server ends the subscription; the SDK reconnects, re-establishes it, and the
    // document reports the refusal as a 'failure'.
    await subscribed(readOnly);
    const failed = waitFor(readOnly, 'failure', () => true, 15000);
    const response = await fetch(restUrl, {
      method: 'DELETE',
      headers: { Authorization: 'Basic ' + Buffer.from(auth).toString('base64') },
    });
    if (response.status !== 204) throw new Error(`revoke failed: ${response.status}`);
    results.revoked = error(await failed);
    return results;
  },

  // updateToken() with a token of another identity is refused with the SDK's own error (51130).
  async refusedUpdate({ token, otherToken }) {
    const c = client(token);
    await waitFor(c, 'connectionStateChanged', (s) => s === 'connected');
    try {
      await c.updateToken(otherToken);
      return { refused: false };
    } catch (e) {
      return { refused: true, status: e.status, code: e.code, state: c.connectionState };
    }
  },

  // A refused token makes the client `denied`; an expired one also emits tokenExpired.
  async badToken({ token, expectExpired }) {
    const c = client(token);
    let expired = false;
    c.on('tokenExpired', () => {
      expired = true;
    });
    const state = await waitFor(c, 'connectionStateChanged', (s) => s === 'denied' || s === 'connected');
    await sleep(100);
    return { state, expired, expectExpired };
  },
};

async function main() {
  const run = scenarios[scenario];
  if (!run) throw new Error(`unknown scenario ${scenario}`);
  const result = await run(args);
  console.log(JSON.stringify({ ok: true, ...result }));
}

main()
  .catch((error) => {
    console.log(JSON.stringify({ ok: false, error: String(error && (error.stack || error)) }));
    process.exitCode = 1;
  })
  .finally(async () => {
    await Promise.allSettled(clients.map((c) => c.shutdown()));
    process.exit();
  });
