/**
 * sync.js — a small browser client for sync-server's native websocket protocol (protocol/README.md).
 *
 * No build step and no dependencies: import it as an ES module from the server itself.
 *
 *     import { SyncClient } from "/sdk/sync.js";
 *     const client = new SyncClient("/ws", { token, tokenProvider: fetchToken });
 *     client.on("connectionStateChanged", (state) => console.log(state));
 *     const doc = await client.document("board", { data: { cells: [] } });
 *     doc.on("updated", (update) => render(update.data));
 *     await doc.mutate((data) => ({ ...data, turn: "x" }));
 *
 * Connection states: "connecting" → "connected"; after a lost connection "disconnected", then
 * "connecting" again after a jittered exponential backoff; "denied" when the server refused the
 * credentials (4401, 4403, or 4410 without a `tokenProvider`) — the client then stops for good.
 *
 * Convergence: after every reconnect each open document is resubscribed with the last revision the
 * client holds; the server answers "unchanged" or the current snapshot, which is applied and emitted
 * as `updated`. A resubscribe the server refuses for now (20503 while its Redis restarts, 54009) is
 * retried with the reconnect backoff until it succeeds or the document is gone (`removed`, reason
 * "gone"). Events and replies older than what a document holds are dropped, so revisions only
 * ever move forward and each one is emitted once.
 *
 * @module sync
 */

/** @typedef {"connecting" | "connected" | "disconnected" | "denied"} ConnectionState */
/** @typedef {"open_or_create" | "open_existing" | "create_new"} OpenMode */
/** @typedef {{ [key: string]: unknown }} JsonObject */
/** @typedef {() => string | Promise<string>} TokenProvider */

/**
 * A document as it travels on the wire.
 * @typedef {object} WireDocument
 * @property {string} sid
 * @property {string | null} unique_name
 * @property {string} revision
 * @property {string | null} [previous_revision]
 * @property {JsonObject} data
 * @property {string} date_created
 * @property {string} date_updated
 * @property {string | null} date_expires
 * @property {string} created_by
 */

/**
 * What `updated` listeners receive.
 * @typedef {object} DocumentUpdate
 * @property {string} revision
 * @property {string | null} previousRevision the revision the client held before (null: first snapshot)
 * @property {JsonObject} data
 * @property {"event" | "reply" | "resubscribe" | "fetch"} source how the client learnt of it
 */

/**
 * What `removed` listeners receive. `reason` is "gone" when the document was found missing while
 * resubscribing after a reconnect (the server cannot say why any more).
 * @typedef {object} DocumentRemoval
 * @property {string} sid
 * @property {string | null} uniqueName
 * @property {"deleted" | "expired" | "service_deleted" | "gone"} reason
 */

/**
 * @typedef {object} ClientOptions
 * @property {string} [token] the access token (if absent, `tokenProvider` is asked for the first one)
 * @property {TokenProvider} [tokenProvider] returns a fresh token: asked on `token_expiring` and
 *     after a 4410 close
 * @property {number} [minReconnectDelay] milliseconds before the first reconnect (default 500)
 * @property {number} [maxReconnectDelay] the cap of the exponential backoff (default 30000)
 * @property {number} [pingInterval] milliseconds between liveness pings (default 25000, 0 disables)
 */

const DEFAULTS = { minReconnectDelay: 500, maxReconnectDelay: 30_000, pingInterval: 25_000 };
/** A connection that does not answer a ping within this is considered dead. */
const PING_TIMEOUT = 10_000;
/** 4429 (rate limited) and unknown transient codes wait at least this long. */
const SLOW_BACKOFF = 5_000;
const PRECONDITION_FAILED = 54103;
const NOT_FOUND = 54100;
const RATE_LIMITED = 54009;

/**
 * What to do after a close (the table of protocol/README.md): "no" stops, "denied" stops and
 * reports the credentials, "yes" reconnects, "new_token" reconnects with a token from the provider,
 * "backoff" reconnects after a longer backoff.
 * @type {Record<number, "no" | "denied" | "yes" | "new_token" | "backoff">}
 */
const CLOSE_POLICY = {
  1000: "no",
  1001: "yes",
  1006: "yes",
  1008: "no",
  1009: "no",
  1011: "yes",
  4401: "denied",
  4403: "denied",
  4410: "new_token",
  4429: "backoff",
  4508: "yes",
};

/**
 * @param {number} code a websocket close code
 * @returns {"no" | "denied" | "yes" | "new_token" | "backoff"}
 */
export function reconnectPolicy(code) {
  if (code in CLOSE_POLICY) return CLOSE_POLICY[code];
  if (code >= 4500 && code <= 4999) return "yes";
  if (code >= 4000 && code <= 4499) return "denied";
  return "backoff";
}

/**
 * The delay before retry number `attempt` (0 for the first): `base` doubling per attempt, capped at
 * `max`, with "equal jitter" — at least half the ceiling, so clients dropped together spread out but
 * none hammers the server right away. The one backoff of this client: reconnects and resubscribes
 * both use it.
 * @param {number} attempt
 * @param {number} base milliseconds
 * @param {number} max milliseconds
 */
function backoffDelay(attempt, base, max) {
  const ceiling = Math.min(max, base * 2 ** attempt);
  return ceiling / 2 + (Math.random() * ceiling) / 2;
}

/**
 * Whether a refusal means "not now" rather than "never": 5xx (20503 while the server's Redis is down
 * or restarting) and rate limiting. The same command may succeed later.
 * @param {unknown} error
 */
function isTransient(error) {
  return error instanceof SyncError && (error.status >= 500 || error.code === RATE_LIMITED);
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The server refused a command: `code` and `status` are Twilio's (e.g. 54103 / 412). */
export class SyncError extends Error {
  /**
   * @param {string} message
   * @param {number} code
   * @param {number} status
   */
  constructor(message, code, status) {
    super(message);
    this.name = "SyncError";
    this.code = code;
    this.status = status;
  }
}

/** The connection closed before the reply came: the command may or may not have been applied. */
export class ConnectionLostError extends Error {
  constructor(message = "The connection closed before the server replied") {
    super(message);
    this.name = "ConnectionLostError";
  }
}

/** A minimal event emitter; `on` returns a function that removes the listener. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }

  /**
   * @param {string} event
   * @param {Function} listener
   * @returns {() => void} removes the listener
   */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event)?.add(listener);
    return () => this.off(event, listener);
  }

  /**
   * @param {string} event
   * @param {Function} listener
   */
  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  /**
   * @param {string} event
   * @param {...unknown} args
   */
  _emit(event, ...args) {
    for (const listener of [...(this._listeners.get(event) ?? [])]) {
      try {
        listener(...args);
      } catch (error) {
        // A failing listener must not break the client or the other listeners.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}

/**
 * Whether revision `a` is newer than `b`. Revisions are hex counters; anything else that differs
 * counts as newer, so a server with another revision scheme still converges.
 * @param {string} a
 * @param {string | null} b
 */
function isNewer(a, b) {
  if (b === null) return true;
  if (/^[0-9a-f]+$/.test(a) && /^[0-9a-f]+$/.test(b)) return BigInt(`0x${a}`) > BigInt(`0x${b}`);
  return a !== b;
}

/**
 * The websocket URL for `url`: relative and http(s) URLs are resolved against the page.
 * @param {string} url
 * @param {string} token
 */
function socketUrl(url, token) {
  const base = typeof location === "undefined" ? undefined : location.href;
  const target = new URL(url, base);
  if (target.protocol === "http:") target.protocol = "ws:";
  if (target.protocol === "https:") target.protocol = "wss:";
  target.searchParams.set("token", token);
  return target.toString();
}

/**
 * A promise with its resolve and reject functions.
 * @template T
 */
class Deferred {
  constructor() {
    /** @type {(value: T) => void} */
    this.resolve = () => {};
    /** @type {(reason: unknown) => void} */
    this.reject = () => {};
    this.settled = false;
    /** @type {Promise<T>} */
    this.promise = new Promise((resolve, reject) => {
      this.resolve = (value) => {
        this.settled = true;
        resolve(value);
      };
      this.reject = (reason) => {
        this.settled = true;
        reject(reason);
      };
    });
    this.promise.catch(() => {}); // nobody may be waiting; that is not an unhandled rejection
  }
}

/**
 * One connection to the server, kept alive across network failures and server restarts.
 *
 * Events: `connectionStateChanged` (state, {code, reason}), `connected` ({identity, serviceSid,
 * connectionId}), `tokenExpiring` (seconds left; a `tokenProvider` is asked automatically),
 * `error` (an Error the client could not attribute to a command, e.g. a failed token refresh).
 */
export class SyncClient extends Emitter {
  /**
   * @param {string} url the `/ws` endpoint, e.g. "wss://sync.example.com/ws" or a relative "/ws"
   * @param {ClientOptions} options
   */
  constructor(url, options = {}) {
    super();
    if (!options.token && !options.tokenProvider) throw new TypeError("a token or a tokenProvider is required");
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    /** @type {string | null} */
    this.token = options.token ?? null;
    /** @type {ConnectionState} */
    this.connectionState = "disconnected";
    /** @type {string | null} the identity of the token, once connected */
    this.identity = null;
    /** @type {WebSocket | null} */
    this._socket = null;
    this._nextId = 1;
    /** @type {Map<number, {resolve: (reply: any) => void, reject: (error: Error) => void}>} */
    this._pending = new Map();
    /** @type {Map<string, SyncDocument>} open documents by SID */
    this._documents = new Map();
    /** @type {Map<string, Promise<SyncDocument>>} documents being opened or open, by name */
    this._byName = new Map();
    /** @type {Deferred<void>} resolved while connected; commands wait for it */
    this._ready = new Deferred();
    this._attempt = 0;
    this._closed = false;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._reconnectTimer = undefined;
    /** @type {ReturnType<typeof setInterval> | undefined} */
    this._pingTimer = undefined;
    // After the caller's synchronous code, so listeners added right after `new` see "connecting".
    queueMicrotask(() => this._connect());
  }

  /**
   * Open (and by default create) a document and subscribe to it. Opening the same name twice
   * returns the same object.
   * @param {string} [name] a unique name or a document SID ("ET…"); omit it with mode "create_new"
   * @param {{mode?: OpenMode, data?: JsonObject, ttl?: number}} [options] `data` and `ttl` apply
   *     only if the document is created
   * @returns {Promise<SyncDocument>}
   */
  document(name, options = {}) {
    const mode = options.mode ?? "open_or_create";
    const cached = name === undefined ? undefined : this._byName.get(name);
    if (cached && mode !== "create_new") return cached;
    const target = name === undefined ? {} : /^ET[0-9a-f]{32}$/.test(name) ? { sid: name } : { name };
    const opening = this._request(
      "open",
      { ...target, mode, data: options.data, ttl: options.ttl, subscribe: true },
      { retry: mode !== "create_new" }, // opening an existing document again is harmless
    ).then((reply) => {
      let doc = this._documents.get(reply.document.sid);
      if (doc) doc._apply(reply.document, "fetch");
      else {
        doc = new SyncDocument(this, reply.document);
        this._documents.set(doc.sid, doc);
      }
      if (name !== undefined) doc._names.add(name);
      return doc;
    });
    if (name !== undefined) {
      this._byName.set(name, opening);
      opening.catch(() => this._byName.get(name) === opening && this._byName.delete(name));
    }
    return opening;
  }

  /**
   * Give the connection a fresh token (for apps that manage tokens without a `tokenProvider`).
   * @param {string} token
   * @returns {Promise<number>} when the new token expires, in Unix seconds
   */
  async updateToken(token) {
    this.token = token; // reconnects use it even if this connection drops before the reply
    const reply = await this._request("update_token", { token });
    return reply.expires_at;
  }

  /** Close the connection for good; pending commands fail with ConnectionLostError. */
  close() {
    this._closed = true;
    clearTimeout(this._reconnectTimer);
    this._dropSocket(1000, "closed by the client");
    this._ready.reject(new ConnectionLostError("The client was closed"));
    if (this.connectionState !== "denied") {
      this._setState("disconnected", { code: 1000, reason: "closed by the client" });
    }
  }

  // -- commands -------------------------------------------------------------------------------------

  /**
   * Send a command once connected and resolve with its reply. With `retry`, a command lost with
   * its connection is sent again after the reconnect (for commands that are safe to repeat).
   * @param {string} op
   * @param {JsonObject} fields
   * @param {{retry?: boolean}} [options]
   * @returns {Promise<any>}
   */
  async _request(op, fields, { retry = false } = {}) {
    for (;;) {
      await this._ready.promise;
      try {
        return await this._sendNow(op, fields);
      } catch (error) {
        if (!(retry && error instanceof ConnectionLostError) || this._closed) throw error;
      }
    }
  }

  /**
   * @param {string} op
   * @param {JsonObject} fields
   * @returns {Promise<any>}
   */
  _sendNow(op, fields) {
    const socket = this._socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return Promise.reject(new ConnectionLostError());
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      // JSON.stringify drops undefined fields, which the server treats as absent.
      socket.send(JSON.stringify({ id, op, ...fields }));
    });
  }

  // -- the connection -------------------------------------------------------------------------------

  async _connect() {
    if (this._closed) return;
    this._setState("connecting");
    if (!this.token) {
      try {
        this.token = await this._fetchToken();
      } catch (error) {
        this._emit("error", error);
        this._setState("disconnected");
        this._scheduleReconnect("yes");
        return;
      }
    }
    if (this._closed) return;
    const socket = new WebSocket(socketUrl(this.url, this.token));
    this._socket = socket;
    socket.onmessage = (message) => this._onFrame(String(message.data));
    socket.onclose = (close) => this._onClose(socket, close.code, close.reason);
  }

  /** @param {string} frame */
  _onFrame(frame) {
    let message;
    try {
      message = JSON.parse(frame);
    } catch {
      return; // the server only sends JSON; ignore anything else rather than crash
    }
    if ("id" in message) {
      const pending = this._pending.get(message.id);
      this._pending.delete(message.id);
      if (!pending) return;
      if (message.ok) pending.resolve(message);
      else pending.reject(new SyncError(message.error.message, message.error.code, message.error.status));
      return;
    }
    switch (message.event) {
      case "connected":
        this._onConnected(message);
        break;
      case "updated":
        this._documents.get(message.document.sid)?._apply(message.document, "event");
        break;
      case "removed":
        this._documents.get(message.sid)?._removed(message.reason);
        break;
      case "subscription_ended":
        this._documents
          .get(message.sid)
          ?._revoked(new SyncError(message.error.message, message.error.code, message.error.status));
        break;
      case "token_expiring":
        this._onTokenExpiring(message.expires_in);
        break;
    }
  }

  /** @param {{identity: string, service_sid: string, connection_id: string}} message */
  _onConnected(message) {
    this._attempt = 0;
    this.identity = message.identity;
    this._startPinging();
    // Resubscribes go out before any queued command, so the server handles them first.
    for (const doc of this._documents.values()) doc._resubscribe();
    this._setState("connected");
    this._emit("connected", {
      identity: message.identity,
      serviceSid: message.service_sid,
      connectionId: message.connection_id,
    });
    this._ready.resolve();
  }

  /** @param {number} expiresIn seconds */
  async _onTokenExpiring(expiresIn) {
    this._emit("tokenExpiring", expiresIn);
    if (!this.options.tokenProvider) return;
    try {
      await this.updateToken(await this._fetchToken());
    } catch (error) {
      this._emit("error", error);
    }
  }

  async _fetchToken() {
    const provider = this.options.tokenProvider;
    if (!provider) throw new Error("no tokenProvider");
    const token = await provider();
    if (typeof token !== "string" || !token) throw new Error("the tokenProvider returned no token");
    return token;
  }

  /**
   * @param {WebSocket} socket
   * @param {number} code
   * @param {string} reason
   */
  _onClose(socket, code, reason) {
    if (socket !== this._socket) return; // a socket we already gave up on
    this._socket = null;
    this._stopPinging();
    // Commands already waiting keep waiting on the pending promise until the next connect.
    if (this._ready.settled) this._ready = new Deferred();
    for (const pending of this._pending.values()) pending.reject(new ConnectionLostError());
    this._pending.clear();
    if (this._closed) return;
    let policy = reconnectPolicy(code);
    if (policy === "new_token") {
      if (this.options.tokenProvider) this.token = null; // _connect asks the provider
      else policy = "denied";
    }
    if (policy === "no" || policy === "denied") {
      this._closed = true;
      this._ready.reject(new ConnectionLostError(`The server closed the connection (${code})`));
      this._setState(policy === "denied" ? "denied" : "disconnected", { code, reason });
      return;
    }
    this._setState("disconnected", { code, reason });
    this._scheduleReconnect(policy);
  }

  /** @param {"yes" | "new_token" | "backoff"} policy */
  _scheduleReconnect(policy) {
    const { minReconnectDelay, maxReconnectDelay } = this.options;
    const base = policy === "backoff" ? Math.max(SLOW_BACKOFF, minReconnectDelay) : minReconnectDelay;
    const delay = backoffDelay(this._attempt, base, maxReconnectDelay);
    this._attempt += 1;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => this._connect(), delay);
  }

  /**
   * Stop using the current socket at once, as if it had closed with `code`.
   * @param {number} code
   * @param {string} reason
   */
  _dropSocket(code, reason) {
    const socket = this._socket;
    if (!socket) return;
    socket.onclose = null;
    socket.onmessage = null;
    socket.close(1000);
    this._onClose(socket, code, reason);
  }

  // Browsers answer the server's pings but cannot send their own: a `ping` command detects a
  // connection that died without a close (a sleeping laptop, a silent proxy) on the client side.
  _startPinging() {
    this._stopPinging();
    if (!this.options.pingInterval) return;
    this._pingTimer = setInterval(() => {
      const socket = this._socket;
      const timeout = setTimeout(() => {
        if (socket === this._socket) this._dropSocket(1006, "no answer to ping");
      }, PING_TIMEOUT);
      this._sendNow("ping", {})
        .catch(() => {})
        .finally(() => clearTimeout(timeout));
    }, this.options.pingInterval);
  }

  _stopPinging() {
    clearInterval(this._pingTimer);
  }

  /**
   * @param {ConnectionState} state
   * @param {{code?: number, reason?: string}} [detail]
   */
  _setState(state, detail = {}) {
    if (state === this.connectionState) return;
    this.connectionState = state;
    this._emit("connectionStateChanged", state, detail);
  }

  /** @param {SyncDocument} doc */
  _forget(doc) {
    this._documents.delete(doc.sid);
    for (const name of doc._names) this._byName.delete(name);
  }
}

/**
 * An open, subscribed document. Its fields always hold the newest snapshot the client has seen.
 *
 * Events: `updated` (a {@link DocumentUpdate}, once per revision, for this client's writes too),
 * `removed` (a {@link DocumentRemoval}; the document is closed afterwards), `revoked` (a
 * {@link SyncError} with code 54007: access control took this identity's read permission away; the
 * document lives on but this copy is closed).
 */
export class SyncDocument extends Emitter {
  /**
   * @param {SyncClient} client
   * @param {WireDocument} wire
   */
  constructor(client, wire) {
    super();
    this._client = client;
    this.sid = wire.sid;
    this.uniqueName = wire.unique_name;
    /** @type {string} */
    this.revision = wire.revision;
    /** @type {JsonObject} treat as read-only: replace it through set, update or mutate */
    this.data = wire.data;
    this.dateUpdated = wire.date_updated;
    this.dateExpires = wire.date_expires;
    this.createdBy = wire.created_by;
    /** false after close() or removal */
    this.isOpen = true;
    /** @type {Set<string>} the names this document was opened with (the client's cache keys) */
    this._names = new Set();
  }

  /**
   * Replace the data.
   * @param {JsonObject} data
   * @param {{ifMatch?: string, ttl?: number}} [options] `ifMatch` makes the write fail with
   *     SyncError 54103 unless the document is still at that revision
   * @returns {Promise<JsonObject>} the data as written
   */
  async set(data, options = {}) {
    return this._write("set", { data, if_match: options.ifMatch, ttl: options.ttl });
  }

  /**
   * Shallow-merge `patch` into the data (atomic on the server: its top-level keys replace the
   * document's).
   * @param {JsonObject} patch
   * @param {{ifMatch?: string, ttl?: number}} [options]
   * @returns {Promise<JsonObject>} the data after the merge
   */
  async update(patch, options = {}) {
    return this._write("update", { data: patch, if_match: options.ifMatch, ttl: options.ttl });
  }

  /**
   * Read-modify-write: `fn` gets a copy of the current data and returns the new data (or
   * undefined/null to give up). If another writer got there first (54103), the document is
   * fetched again and `fn` runs again on the newer data.
   * @param {(data: JsonObject) => JsonObject | null | undefined} fn
   * @param {{attempts?: number}} [options] how many times to try (default 10)
   * @returns {Promise<JsonObject>} the data as written (or the current data if `fn` gave up)
   */
  async mutate(fn, { attempts = 10 } = {}) {
    for (let attempt = 1; ; attempt++) {
      const revision = this.revision;
      const data = fn(structuredClone(this.data));
      if (data === undefined || data === null) return this.data;
      try {
        return await this.set(data, { ifMatch: revision });
      } catch (error) {
        if (!(error instanceof SyncError && error.code === PRECONDITION_FAILED) || attempt >= attempts) {
          throw error;
        }
        await this.fetch();
      }
    }
  }

  /**
   * Set the time to live in seconds (0 removes the expiry).
   * @param {number} ttl
   */
  async setTtl(ttl) {
    const reply = await this._client._request("set_ttl", { doc: this.sid, ttl });
    this._apply(reply.document, "reply");
  }

  /** Read the current snapshot from the server (applied and emitted if newer). */
  async fetch() {
    const reply = await this._client._request("fetch", { doc: this.sid }, { retry: true });
    this._apply(reply.document, "fetch");
    return this.data;
  }

  /** Delete the document on the server; `removed` follows. */
  async remove() {
    await this._client._request("remove", { doc: this.sid });
    this._removed("deleted");
  }

  /** Stop receiving this document's events (other handles of the same name close too). */
  close() {
    if (!this.isOpen) return;
    this.isOpen = false;
    this._client._forget(this);
    if (this._client.connectionState === "connected") {
      this._client._request("unsubscribe", { doc: this.sid }).catch(() => {});
    }
  }

  /**
   * @param {"set" | "update"} op
   * @param {JsonObject} fields
   */
  async _write(op, fields) {
    const reply = await this._client._request(op, { doc: this.sid, ...fields });
    this._apply(reply.document, "reply");
    return reply.document.data;
  }

  /**
   * Take `wire` if it is newer than what we hold, and tell the listeners.
   * @param {WireDocument} wire
   * @param {DocumentUpdate["source"]} source
   */
  _apply(wire, source) {
    if (!this.isOpen || !isNewer(wire.revision, this.revision)) return;
    const previousRevision = this.revision;
    this.revision = wire.revision;
    this.data = wire.data;
    this.uniqueName = wire.unique_name;
    this.dateUpdated = wire.date_updated;
    this.dateExpires = wire.date_expires;
    /** @type {DocumentUpdate} */
    const update = { revision: wire.revision, previousRevision, data: wire.data, source };
    this._emit("updated", update);
  }

  /**
   * After a reconnect: subscribe again from our revision, and catch up if we missed writes. A
   * refusal for now (20503 while the server's Redis restarts, 54009) is retried with the reconnect
   * backoff until it succeeds or the document is gone; the retries end with this connection (the
   * next one resubscribes anew).
   */
  async _resubscribe() {
    const client = this._client;
    const socket = client._socket;
    const { minReconnectDelay, maxReconnectDelay } = client.options;
    for (let attempt = 0; this.isOpen && socket && client._socket === socket; attempt++) {
      try {
        const reply = await client._sendNow("subscribe", { doc: this.sid, revision: this.revision });
        if (reply.document) this._apply(reply.document, "resubscribe");
        return;
      } catch (error) {
        if (error instanceof SyncError && error.code === NOT_FOUND) this._removed("gone");
        // A lost connection resubscribes again on the next reconnect; other refusals are final.
        if (!isTransient(error)) return;
      }
      await sleep(backoffDelay(attempt, minReconnectDelay, maxReconnectDelay));
    }
  }

  /** @param {DocumentRemoval["reason"]} reason */
  /** @param {SyncError} error */
  _revoked(error) {
    if (!this.isOpen) return;
    this.isOpen = false;
    this._client._forget(this);
    this._emit("revoked", error);
  }

  _removed(reason) {
    if (!this.isOpen) return;
    this.isOpen = false;
    this._client._forget(this);
    /** @type {DocumentRemoval} */
    const removal = { sid: this.sid, uniqueName: this.uniqueName, reason };
    this._emit("removed", removal);
  }
}
