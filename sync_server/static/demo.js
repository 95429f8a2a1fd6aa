// The live document demo (demo.html): one shared document, edited by every tab that opens it.
//
// The access token comes from the page's own URL (`/demo?token=…&doc=…`): the server never hands
// tokens out to browsers by itself. Mint one with `sync-server token --identity alice`.

import { SyncClient } from "./sync.js";

const DEFAULT_DATA = { text: "", color: "#2563eb", count: 0 };
const MAX_LOG_ENTRIES = 200;
const WRITE_DELAY = 150; // ms of quiet before a typed or picked value is written

const params = new URLSearchParams(location.search);
const token = params.get("token");
const docName = params.get("doc") || "demo";

/** @param {string} id */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const ui = {
  state: $("state"),
  revision: $("revision"),
  sid: $("sid"),
  identity: $("identity"),
  text: /** @type {HTMLInputElement} */ ($("text")),
  color: /** @type {HTMLInputElement} */ ($("color")),
  count: $("count"),
  increment: /** @type {HTMLButtonElement} */ ($("increment")),
  accent: $("accent"),
  data: $("data"),
  log: $("log"),
  notice: $("notice"),
};

/** @type {import("./sync.js").SyncDocument | null} */
let doc = null;
/** Local writes waiting or in flight: remote text does not overwrite what is being typed meanwhile. */
let pendingWrites = 0;

if (token) start(token);
else showTokenHelp();

/** @param {string} accessToken */
function start(accessToken) {
  $("app").hidden = false;
  $("doc-name").textContent = docName;
  /** @type {HTMLAnchorElement} */ ($("another-tab")).href = location.href;
  $("clear-log").addEventListener("click", () => ui.log.replaceChildren());

  const client = new SyncClient("ws", { token: accessToken });
  client.on("connectionStateChanged", (state, detail) => {
    ui.state.textContent = state;
    ui.state.dataset.state = state;
    log("state", detail.code ? `${state} (close ${detail.code}${detail.reason ? `: ${detail.reason}` : ""})` : state);
    if (state === "denied") {
      showNotice("The server refused this token (invalid, expired or for another service). Mint a new one.");
    }
  });
  client.on("connected", (info) => {
    ui.identity.textContent = info.identity;
    log("connected", `as ${info.identity}, connection ${info.connectionId}`);
  });
  client.on("tokenExpiring", (seconds) => log("token", `expires in ${seconds} s: reload with a fresh token`));
  client.on("error", (error) => log("error", String(error)));

  bindControls();
  open(client);
}

/** @param {SyncClient} client */
async function open(client) {
  try {
    doc = await client.document(docName, { data: DEFAULT_DATA });
  } catch (error) {
    log("error", `open failed: ${error instanceof Error ? error.message : error}`);
    return;
  }
  log("opened", `${doc.sid} at revision ${doc.revision}`);
  render();
  doc.on("updated", (update) => {
    log("updated", `revision ${update.previousRevision} → ${update.revision} (${update.source}) ${JSON.stringify(update.data)}`);
    render();
  });
  doc.on("removed", (removal) => {
    log("removed", `reason: ${removal.reason}`);
    showNotice("The document was removed. Reload the page to create it again.");
    doc = null;
  });
}

function bindControls() {
  ui.text.addEventListener("input", debounced(() => write({ text: ui.text.value })));
  ui.color.addEventListener("input", debounced(() => write({ color: ui.color.value })));
  ui.increment.addEventListener("click", increment);
}

/** @param {{[key: string]: unknown}} patch */
async function write(patch) {
  if (!doc) return;
  try {
    await doc.update(patch);
  } catch (error) {
    log("error", `update failed: ${error instanceof Error ? error.message : error}`);
  }
}

// A read-modify-write: with two tabs clicking at once, one of them gets 54103, re-reads and retries,
// so no click is lost (a plain `update({count: n + 1})` would lose one).
async function increment() {
  if (!doc) return;
  let attempts = 0;
  try {
    await doc.mutate((data) => {
      attempts += 1;
      return { ...data, count: (Number(data.count) || 0) + 1 };
    });
    if (attempts > 1) log("mutate", `revision conflict: retried ${attempts - 1}×`);
  } catch (error) {
    log("error", `increment failed: ${error instanceof Error ? error.message : error}`);
  }
}

function render() {
  if (!doc) return;
  const data = { ...DEFAULT_DATA, ...doc.data };
  ui.revision.textContent = doc.revision;
  ui.sid.textContent = doc.sid;
  // Do not pull the text from under the cursor of someone who is typing in this tab.
  if (!(document.activeElement === ui.text && pendingWrites > 0)) ui.text.value = String(data.text);
  const color = /^#[0-9a-f]{6}$/i.test(String(data.color)) ? String(data.color) : DEFAULT_DATA.color;
  if (document.activeElement !== ui.color) ui.color.value = color;
  ui.accent.style.background = color;
  ui.count.textContent = String(data.count);
  ui.data.textContent = JSON.stringify(doc.data, null, 2);
}

/**
 * `fn` runs once input has been quiet for WRITE_DELAY ms; counted in `pendingWrites` meanwhile.
 * @param {() => Promise<void>} fn
 */
function debounced(fn) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  return () => {
    if (timer === undefined) pendingWrites += 1;
    clearTimeout(timer);
    timer = setTimeout(async () => {
      timer = undefined;
      try {
        await fn();
      } finally {
        pendingWrites -= 1;
        render();
      }
    }, WRITE_DELAY);
  };
}

/**
 * @param {string} kind
 * @param {string} text
 */
function log(kind, text) {
  const entry = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  const tag = document.createElement("span");
  tag.className = `tag tag-${kind}`;
  tag.textContent = kind;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  entry.append(time, tag, body);
  ui.log.prepend(entry);
  while (ui.log.children.length > MAX_LOG_ENTRIES) ui.log.lastElementChild?.remove();
}

/** @param {string} text */
function showNotice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
}

function showTokenHelp() {
  $("no-token").hidden = false;
  const example = new URL(location.href);
  example.search = "?token=<token>";
  $("example-url").textContent = decodeURI(example.toString());
}
