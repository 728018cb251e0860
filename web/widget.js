// <quote-ticker>: a live market ticker, as one self-contained ES module.
//
// Embed with one script tag and one element:
//   <script type="module" src="https://HOST/widget.js"></script>
//   <quote-ticker symbols="OGDC,PPL,KSE100"></quote-ticker>
//
// The module has three parts:
//   1. Formatting (pure, side-effect free, exported): the seed's text form of a quote,
//      identical to service/ticker_text.py format_line ("How the ticker reads", PROTOCOL.md).
//   2. The connection registry: one websocket per `src`, shared by every element that uses
//      that src (refcounted, union of symbols, reconnect with backoff and full jitter).
//   3. The custom element (Shadow DOM, styles inside, all feed data inserted as text).
//
// Importing the module defines the element (unless a `quote-ticker` is already defined);
// nothing else happens until an element is connected to a document.

// ---------------------------------------------------------------------------------------
// 1. Formatting
// ---------------------------------------------------------------------------------------

export const UP = '\u25B2'; // ▲
export const DOWN = '\u25BC'; // ▼
export const INCREASED = 'Increased By';
export const DECREASED = 'Decreased By';
export const NO_CHANGE = 'No Change';

/**
 * Python's `format(x, f".{digits}f")`: the exact binary value rounded half to even.
 * (JavaScript's toFixed rounds exact ties away from zero, e.g. 0.125 -> "0.13" where
 * Python gives "0.12", and 71902.5 -> "71903" where Python gives "71902".)
 */
export function pyFixed(value, digits) {
  const x = Number(value);
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  const negative = x < 0 || Object.is(x, -0);
  const a = Math.abs(x);
  let whole;
  let frac;
  if (a >= 1e21) {
    whole = BigInt(a).toString(); // an integer already: exact
    frac = '';
  } else {
    // Exact for every double whose rounding can matter here: a double >= 2**-47 has at
    // most 99 fractional decimal digits, and smaller ones round to zero anyway.
    const exact = a.toFixed(100);
    const dot = exact.indexOf('.');
    whole = exact.slice(0, dot);
    frac = exact.slice(dot + 1);
  }
  const kept = frac.slice(0, digits).padEnd(digits, '0');
  const rest = frac.slice(digits);
  let digitsStr = whole + kept;
  const first = rest.charCodeAt(0) - 48;
  let up = false;
  if (first > 5) up = true;
  else if (first === 5) {
    up = /[1-9]/.test(rest.slice(1)) || (digitsStr.charCodeAt(digitsStr.length - 1) - 48) % 2 === 1;
  }
  if (up) {
    const chars = digitsStr.split('');
    let i = chars.length - 1;
    while (i >= 0) {
      if (chars[i] === '9') {
        chars[i] = '0';
        i -= 1;
      } else {
        chars[i] = String.fromCharCode(chars[i].charCodeAt(0) + 1);
        break;
      }
    }
    if (i < 0) chars.unshift('1');
    digitsStr = chars.join('');
  }
  const intPart = digitsStr.slice(0, digitsStr.length - digits);
  const fracPart = digitsStr.slice(digitsStr.length - digits);
  return (negative ? '-' : '') + intPart + (digits > 0 ? '.' + fracPart : '');
}

/** Thousands separators as Python's `,` format option (en-US style): 71902 -> "71,902". */
export function groupThousands(text) {
  const m = /^(-?)(\d+)(.*)$/.exec(text);
  if (!m) return text;
  return m[1] + m[2].replace(/\B(?=(\d{3})+(?!\d))/g, ',') + m[3];
}

/** service/ticker_text.py `_trim`: 4.90 -> 4.9, 0.00 -> 0, -0.0 -> 0. */
export function trimZeros(text) {
  let t = text;
  if (t.includes('.')) t = t.replace(/0+$/, '').replace(/\.+$/, '');
  return t === '-0' || t === '' ? '0' : t;
}

function num(value) {
  return value === null || value === undefined || value === '' ? NaN : Number(value);
}

/** Python's round(x, 2) (half to even on the exact value). */
export function round2(value) {
  const x = Number(value);
  return Number.isFinite(x) ? Number(pyFixed(x, 2)) : x;
}

/**
 * The parts of a quote's text form, each a plain string:
 *   {symbol, kind, direction: 'up'|'down'|'flat', price, words, arrow, change, pct}
 * `arrow` is '' for indices (the seed draws none); `pct` includes the brackets and %.
 * Numbers are first rounded to two decimals and a missing `change` / `change_pct` is
 * derived from `prev_close`, exactly as service/quote.py Quote.from_dict does, so the text
 * equals format_line(Quote.from_dict(q)) for any quote the service would accept.
 */
export function formatQuote(q) {
  const price = round2(num(q.price));
  const prev = round2(num(q.prev_close));
  let change = round2(num(q.change));
  if (Number.isNaN(change) && Number.isFinite(price) && Number.isFinite(prev)) {
    change = round2(price - prev);
  }
  let changePct = round2(num(q.change_pct));
  if (Number.isNaN(changePct) && Number.isFinite(price) && Number.isFinite(prev) && prev !== 0) {
    changePct = round2((100 * (price - prev)) / prev);
  }
  const direction = change > 0 ? 'up' : change < 0 ? 'down' : 'flat';
  const words = change > 0 ? INCREASED : change < 0 ? DECREASED : NO_CHANGE;
  const pct = `(${trimZeros(pyFixed(changePct, 2))}%)`;
  const symbol = String(q.symbol);
  if (q.kind === 'index') {
    // The words and colour follow the change as shown: +0.04 reads "0", so "No Change".
    const shown = trimZeros(pyFixed(change, 1));
    const value = Number(shown);
    return {
      symbol, kind: 'index', pct, arrow: '',
      direction: value > 0 ? 'up' : value < 0 ? 'down' : 'flat',
      words: value > 0 ? INCREASED : value < 0 ? DECREASED : NO_CHANGE,
      price: groupThousands(pyFixed(price, 0)),
      change: shown,
    };
  }
  let changeText = pyFixed(change, 2);
  if (changeText === '-0.00') changeText = '0.00';
  return {
    symbol, kind: 'stock', direction, words, pct,
    arrow: change > 0 ? UP : DOWN,
    price: pyFixed(price, 2),
    change: changeText,
  };
}

/** The exact seed line, e.g. `AIRLINK 72.59 Increased By ▲ 3.39 (4.9%)`. */
export function tickerText(q) {
  const p = formatQuote(q);
  return p.kind === 'index'
    ? `${p.symbol} ${p.price} ${p.words} ${p.change} ${p.pct}`
    : `${p.symbol} ${p.price} ${p.words} ${p.arrow} ${p.change} ${p.pct}`;
}

const SYMBOL_RE = /^[A-Z0-9.\-]{1,16}$/;

/** The `symbols` attribute: '*' (absent, empty or "*") or a list of valid, unique symbols. */
export function parseSymbols(value) {
  if (value === null || value === undefined) return '*';
  const raw = String(value).trim();
  if (raw === '' || raw === '*') return '*';
  const out = [];
  for (const part of raw.split(/[\s,]+/)) {
    const s = part.toUpperCase();
    if (!s) continue;
    if (!SYMBOL_RE.test(s)) {
      console.warn('[quote-ticker] ignoring invalid symbol', JSON.stringify(part.slice(0, 20)));
      continue;
    }
    if (!out.includes(s)) out.push(s);
  }
  return out;
}

/** The websocket URL for a `src` attribute; the default is ./ws next to this module. */
export function resolveSocketUrl(src, base = import.meta.url) {
  const url = new URL(src || './ws', src ? (globalThis.document ? document.baseURI : base) : base);
  if (url.protocol === 'http:') url.protocol = 'ws:';
  else if (url.protocol === 'https:') url.protocol = 'wss:';
  url.hash = '';
  return url.href;
}

// ---------------------------------------------------------------------------------------
// 2. Connections: one websocket per URL, shared by every element using it
// ---------------------------------------------------------------------------------------

export const RECONNECT = Object.freeze({
  baseMs: 500, capMs: 15000, // ordinary drops: 1001, 1006, 1011, 1013, 4008, ...
  slowBaseMs: 5000, slowCapMs: 60000, // policy / rate limit: 1008, 4029
  healthyAfterMs: 10000, // a socket that lived this long resets the backoff
});
const SLOW_CODES = new Set([1008, 4029]);

/** Full jitter: uniform in [0, min(cap, base * 2**attempt)). */
export function backoffDelay(attempt, code, random = Math.random) {
  const slow = SLOW_CODES.has(code);
  const base = slow ? RECONNECT.slowBaseMs : RECONNECT.baseMs;
  const cap = slow ? RECONNECT.slowCapMs : RECONNECT.capMs;
  return random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

const registry = new Map(); // url -> Connection

/** Diagnostics: the shared connections, as {url, feed, consumers, subscribed}. */
export function connections() {
  return [...registry.values()].map((c) => ({
    url: c.url,
    feed: c.feed,
    consumers: c.consumers.size,
    subscribed: c.sent === '*' ? '*' : [...(c.sent || [])].sort(),
    readyState: c.ws ? c.ws.readyState : -1,
  }));
}

function wants(consumer, symbol) {
  return consumer.wants === '*' || consumer.wants.includes(symbol);
}

/** Is `q` newer than `held`? `fresh` is true for the first sight of the symbol on a new
 * socket: there a seq that is not higher but comes with a later ts means the service's seq
 * space restarted (e.g. the embedded broker after a restart), and its snapshot is the truth. */
export function isNewer(q, held, fresh = false) {
  if (!held) return true;
  const s = q.seq;
  const h = held.seq;
  if (typeof s !== 'number' || typeof h !== 'number') return true;
  if (s > h) return true;
  return fresh && Number(q.ts) > Number(held.ts);
}

class Connection {
  constructor(url) {
    this.url = url;
    this.consumers = new Set();
    this.quotes = new Map(); // symbol -> latest accepted quote
    this.feed = 'connecting';
    this.everUp = false;
    this.ws = null;
    this.sent = null; // what we asked the server for on this socket: '*' or Set
    this.nextId = 1;
    this.attempt = 0;
    this.retryTimer = null;
    this.watchdog = null;
    this.liveTimer = null;
    this.syncQueued = false;
    this.serverFeed = 'live';
    this.heartbeatS = 15;
    this.maxFrameBytes = 4096;
    this.pendingSnapshot = false;
    this.seenOnSocket = new Set();
    this.openedAt = 0;
    this.onOnline = () => {
      if (this.retryTimer !== null) {
        clearTimeout(this.retryTimer);
        this.retryTimer = null;
        this.attempt = 0;
        this.open();
      }
    };
    globalThis.addEventListener?.('online', this.onOnline);
  }

  add(consumer) {
    this.consumers.add(consumer);
    consumer.setFeed(this.feed);
    this.seed(consumer);
    this.queueSync();
    if (!this.ws && this.retryTimer === null) this.open();
  }

  remove(consumer) {
    this.consumers.delete(consumer);
    this.queueSync();
  }

  /** The consumer's symbols changed: give it what we hold and resubscribe. */
  changed(consumer) {
    this.seed(consumer);
    this.queueSync();
  }

  seed(consumer) {
    const held = [...this.quotes.values()].filter(
      (q) => wants(consumer, q.symbol) && isNewer(q, consumer.quote(q.symbol)),
    );
    if (held.length) consumer.receive(held, true);
  }

  queueSync() {
    if (this.syncQueued) return;
    this.syncQueued = true;
    queueMicrotask(() => {
      this.syncQueued = false;
      this.sync();
    });
  }

  union() {
    const all = new Set();
    for (const c of this.consumers) {
      if (c.wants === '*') return '*';
      for (const s of c.wants) all.add(s);
    }
    return all;
  }

  send(message) {
    if (!this.ws || this.ws.readyState !== 1) return;
    this.ws.send(JSON.stringify({ ...message, id: this.nextId++ }));
  }

  /** Lists split so that no frame exceeds the server's max_frame_bytes. */
  sendSymbols(op, symbols) {
    let chunk = [];
    let size = 64;
    for (const s of symbols) {
      if (chunk.length && size + s.length + 3 > this.maxFrameBytes) {
        this.send({ op, symbols: chunk });
        chunk = [];
        size = 64;
      }
      chunk.push(s);
      size += s.length + 3;
    }
    if (chunk.length) this.send({ op, symbols: chunk });
  }

  sync() {
    if (this.consumers.size === 0) {
      this.shutdown();
      return;
    }
    if (!this.ws || this.ws.readyState !== 1) return; // sync runs again on open
    const want = this.union();
    if (want === '*') {
      if (this.sent !== '*') {
        this.send({ op: 'subscribe', symbols: '*' });
        this.sent = '*';
      }
      return;
    }
    if (this.sent === '*') {
      // Leave "*" for an explicit list: drop everything, then take the list.
      this.send({ op: 'unsubscribe', symbols: '*' });
      this.sent = new Set();
      this.dropHeld((s) => !want.has(s));
      this.sendSymbols('subscribe', [...want]);
      for (const s of want) this.sent.add(s);
      return;
    }
    const add = [...want].filter((s) => !this.sent.has(s));
    const drop = [...this.sent].filter((s) => !want.has(s));
    if (drop.length) {
      this.sendSymbols('unsubscribe', drop);
      for (const s of drop) this.sent.delete(s);
      this.dropHeld((s) => drop.includes(s));
    }
    if (add.length) {
      this.sendSymbols('subscribe', add);
      for (const s of add) this.sent.add(s);
    }
  }

  dropHeld(predicate) {
    for (const s of [...this.quotes.keys()]) if (predicate(s)) this.quotes.delete(s);
  }

  setFeed(feed) {
    if (feed === this.feed) return;
    this.feed = feed;
    for (const c of this.consumers) c.setFeed(feed);
  }

  goLive() {
    clearTimeout(this.liveTimer);
    this.liveTimer = null;
    this.everUp = true;
    this.setFeed(this.serverFeed);
  }

  open() {
    this.retryTimer = null;
    if (this.consumers.size === 0) return;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      console.warn('[quote-ticker] cannot open', this.url, err);
      this.scheduleReconnect(1006);
      return;
    }
    this.ws = ws;
    this.sent = new Set();
    this.seenOnSocket = new Set();
    this.serverFeed = 'live';
    this.pendingSnapshot = false;
    this.liveTimer = null;
    this.openedAt = 0;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.openedAt = Date.now();
      this.armWatchdog();
      this.sync();
    };
    ws.onmessage = (ev) => {
      if (ws === this.ws) this.onMessage(ev.data);
    };
    ws.onclose = (ev) => {
      if (ws === this.ws) this.onClose(ev.code);
    };
    ws.onerror = () => {}; // a close event follows
  }

  armWatchdog() {
    clearTimeout(this.watchdog);
    // The server speaks at least every heartbeat_s; silence past twice that (plus slack)
    // means a dead path that TCP has not reported yet.
    const ms = Math.max(4000, (this.heartbeatS * 2 + 3) * 1000);
    this.watchdog = setTimeout(() => {
      const ws = this.ws;
      if (!ws) return;
      this.ws = null;
      try {
        ws.close(4000, 'heartbeat timeout');
      } catch (_) { /* already closing */ }
      this.onClose(1006, ws);
    }, ms);
  }

  onMessage(data) {
    this.armWatchdog();
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'welcome':
        if (Number(msg.heartbeat_s) > 0) this.heartbeatS = Number(msg.heartbeat_s);
        if (msg.limits && Number(msg.limits.max_frame_bytes) > 256) {
          this.maxFrameBytes = Number(msg.limits.max_frame_bytes);
        }
        this.armWatchdog();
        // Live once the first subscription is answered; this is the fallback.
        clearTimeout(this.liveTimer);
        this.liveTimer = setTimeout(() => this.goLive(), 2000);
        break;
      case 'ack':
        if (msg.op === 'subscribe') {
          const unknown = new Set(Array.isArray(msg.unknown) ? msg.unknown : []);
          const listed = Array.isArray(msg.symbols) ? msg.symbols : [];
          // A snapshot follows only if something we asked for has a quote; until it
          // arrives the board is not complete, so the feed is not "live" yet.
          const expect = msg.all ? listed.length > 0 : listed.some((s) => !unknown.has(s));
          if (expect) this.pendingSnapshot = true;
          else if (!this.pendingSnapshot) this.goLive();
        }
        break;
      case 'snapshot':
        this.pendingSnapshot = false;
        this.apply(msg.quotes, true);
        this.goLive();
        break;
      case 'quotes':
        this.apply(msg.quotes, false);
        if (this.feed === 'connecting' || this.feed === 'reconnecting') this.goLive();
        break;
      case 'status':
        this.serverFeed = msg.feed === 'stale' ? 'stale' : 'live';
        if (this.serverFeed === 'stale' || this.everUp) this.goLive();
        break;
      case 'error':
        console.warn('[quote-ticker] server error', msg.code, msg.message);
        break;
      default: // heartbeat, pong, and types this version does not know
        break;
    }
  }

  apply(list, snapshot) {
    if (!Array.isArray(list)) return;
    const accepted = [];
    for (const q of list) {
      if (!q || typeof q !== 'object' || typeof q.symbol !== 'string') continue;
      const fresh = !this.seenOnSocket.has(q.symbol);
      this.seenOnSocket.add(q.symbol);
      if (!isNewer(q, this.quotes.get(q.symbol), fresh)) continue;
      this.quotes.set(q.symbol, q);
      accepted.push(q);
    }
    if (!accepted.length) return;
    for (const c of this.consumers) {
      const mine = accepted.filter((q) => wants(c, q.symbol));
      if (mine.length) c.receive(mine, snapshot);
    }
  }

  onClose(code) {
    clearTimeout(this.watchdog);
    clearTimeout(this.liveTimer);
    this.watchdog = null;
    this.liveTimer = null;
    this.ws = null;
    this.sent = null;
    if (this.consumers.size === 0) {
      this.shutdown();
      return;
    }
    if (this.openedAt && Date.now() - this.openedAt >= RECONNECT.healthyAfterMs) this.attempt = 0;
    this.setFeed(this.everUp ? 'reconnecting' : 'connecting');
    this.scheduleReconnect(code);
  }

  scheduleReconnect(code) {
    const delay = backoffDelay(this.attempt, code);
    this.attempt += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  shutdown() {
    clearTimeout(this.retryTimer);
    clearTimeout(this.watchdog);
    clearTimeout(this.liveTimer);
    this.retryTimer = this.watchdog = this.liveTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(1000, 'no more subscribers');
      } catch (_) { /* already closed */ }
    }
    globalThis.removeEventListener?.('online', this.onOnline);
    if (registry.get(this.url) === this) registry.delete(this.url);
  }
}

function connectionFor(url) {
  let c = registry.get(url);
  if (!c) {
    c = new Connection(url);
    registry.set(url, c);
  }
  return c;
}

// ---------------------------------------------------------------------------------------
// 3. The element
// ---------------------------------------------------------------------------------------

const FEED_TEXT = {
  connecting: 'Connecting\u2026',
  live: 'Live',
  stale: 'Feed stale',
  reconnecting: 'Reconnecting\u2026',
};
const FLASH_MIN_GAP_MS = 400; // at most 2.5 flashes a second per item (WCAG 2.3.1: < 3)
const HISTORY_MAX = 240; // sparkline points kept per symbol (older ones are thinned)
const SVG_NS = 'http://www.w3.org/2000/svg';

const CSS = `
:host {
  --_up: var(--qt-up, #0a7a3c);
  --_down: var(--qt-down, #c1262e);
  --_flat: var(--qt-flat, #5b6169);
  --_bg: var(--qt-bg, #ffffff);
  --_fg: var(--qt-fg, #17191c);
  --_muted: var(--qt-muted, #5b6169);
  --_border: var(--qt-border, #d8dce1);
  --_focus: var(--qt-focus, #1a5fb4);
  display: block;
  box-sizing: border-box;
  min-width: 0;
  color: var(--_fg);
  background: var(--_bg);
  font-family: var(--qt-font, system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif);
  font-size: var(--qt-font-size, 14px);
  line-height: 1.4;
}
:host([hidden]) { display: none; }
*, *::before, *::after { box-sizing: inherit; }

.wrap { display: flex; min-width: 0; height: 100%; }
.wrap.strip { flex-direction: row; align-items: stretch; }
.wrap.panel { flex-direction: column; }

.controls {
  display: flex; align-items: center; gap: .5em; flex: none;
  padding: .35em .6em; color: var(--_muted); font-size: .86em; white-space: nowrap;
}
.strip .controls { border-right: 1px solid var(--_border); }
.panel .controls { justify-content: space-between; border-bottom: 1px solid var(--_border); }
.controls[hidden] { display: none; }
.state { display: inline-flex; align-items: center; gap: .4em; }
.dot {
  width: .62em; height: .62em; border-radius: 50%; flex: none;
  background: var(--_muted); border: 1px solid transparent;
}
.feed-live .dot { background: var(--_up); }
.feed-stale .dot { background: var(--qt-stale, #b26b00); border-radius: 1px; transform: rotate(45deg); }
.feed-reconnecting .dot, .feed-connecting .dot { background: transparent; border-color: var(--_muted); }

button {
  font: inherit; font-size: 1em; color: var(--_fg); background: var(--_bg);
  border: 1px solid var(--_border); border-radius: 4px; padding: .15em .6em;
  cursor: pointer; display: inline-flex; align-items: center; gap: .35em; min-height: 24px;
}
button:hover { border-color: var(--_muted); }
button[aria-pressed="true"] { background: var(--_fg); color: var(--_bg); border-color: var(--_fg); }
button:focus-visible, .viewport:focus-visible, .list:focus-visible {
  outline: 2px solid var(--_focus); outline-offset: 2px;
}
.icon {
  display: inline-block; flex: none; width: .62em; height: .72em;
  border-left: .2em solid currentColor; border-right: .2em solid currentColor;
}
[aria-pressed="true"] .icon {
  border: 0; background: currentColor; clip-path: polygon(0 0, 100% 50%, 0 100%);
}

.viewport { position: relative; flex: 1 1 auto; min-width: 0; overflow: hidden; }
.strip .viewport { display: flex; align-items: center; }
.strip.still .viewport { overflow-x: auto; scrollbar-width: thin; }
.track {
  list-style: none; margin: 0; padding: 0 .6em; display: flex; gap: 0;
  width: max-content; flex: none; white-space: nowrap;
}
.strip .row { padding: .35em .9em; border-right: 1px solid var(--_border); }
.strip .row:last-child { border-right: 0; }
.moving .track {
  animation: qt-marquee var(--qt-duration, 30s) ease-in-out infinite alternate;
}
.moving .viewport:hover .track, .moving .viewport:focus-within .track { animation-play-state: paused; }
@keyframes qt-marquee {
  0%, 6% { transform: translateX(0); }
  94%, 100% { transform: translateX(var(--qt-shift, 0px)); }
}

.panel .viewport { overflow: auto; flex: 1 1 auto; }
.panel .track { display: block; width: auto; padding: 0; white-space: normal; }
.panel .row {
  display: grid; grid-template-columns: minmax(0, 1fr) var(--qt-spark-width, 84px);
  align-items: center; gap: .6em; padding: .4em .6em; border-bottom: 1px solid var(--_border);
}
.panel .row:last-child { border-bottom: 0; }

.item { border-radius: 3px; padding: .05em .2em; font-variant-numeric: tabular-nums; }
.sym { font-weight: 700; }
/* Panel rows read on two lines: symbol and price, then the change. The break is generated
   content on an empty inline span, which innerText leaves out, so the item still reads as
   the one seed line. */
.panel .sym { display: inline-block; min-width: 48%; }
.panel .px { display: inline-block; min-width: 42%; text-align: right; }
.panel .br::before { content: "\\A"; white-space: pre; }
.panel .chg, .panel .pct, .panel .arw { font-size: .9em; }
.panel .arw { font-size: .75em; margin-left: 0; }
.panel .tri { margin-left: 0; }
.panel .item { display: block; }
.px { font-weight: 600; }
.up .chg, .up .pct, .up .arw, .up .tri { color: var(--_up); }
.down .chg, .down .pct, .down .arw, .down .tri { color: var(--_down); }
.flat .chg, .flat .pct, .flat .arw, .flat .tri { color: var(--_flat); }
.arw { font-size: .8em; margin-left: .35em; }
/* Indices carry no arrow text (the seed's form); the shape is drawn, not written. */
.tri {
  display: inline-block; width: .62em; height: .55em; margin: 0 .3em 0 .35em;
  background: currentColor; vertical-align: .05em;
}
.up .tri { clip-path: polygon(50% 0, 100% 100%, 0 100%); }
.down .tri { clip-path: polygon(0 0, 100% 0, 50% 100%); }
.flat .tri { clip-path: polygon(0 35%, 100% 35%, 100% 65%, 0 65%); }

/* Visually hidden but read, and part of innerText. Inline-block (not absolute) so that
   innerText gets no line breaks around it; pre keeps its leading space. */
.vh {
  display: inline-block; width: 1px; height: 1px; margin: 0 -1px 0 0; padding: 0; border: 0;
  overflow: hidden; clip-path: inset(50%); white-space: pre; vertical-align: top;
}

.flash-a.tick-up { animation: qt-flash-up-a .6s ease-out; }
.flash-b.tick-up { animation: qt-flash-up-b .6s ease-out; }
.flash-a.tick-down { animation: qt-flash-down-a .6s ease-out; }
.flash-b.tick-down { animation: qt-flash-down-b .6s ease-out; }
@keyframes qt-flash-up-a { from { background: var(--qt-flash-up, rgba(10, 122, 60, .22)); } to { background: transparent; } }
@keyframes qt-flash-up-b { from { background: var(--qt-flash-up, rgba(10, 122, 60, .22)); } to { background: transparent; } }
@keyframes qt-flash-down-a { from { background: var(--qt-flash-down, rgba(193, 38, 46, .2)); } to { background: transparent; } }
@keyframes qt-flash-down-b { from { background: var(--qt-flash-down, rgba(193, 38, 46, .2)); } to { background: transparent; } }

.feed-stale .item, .feed-reconnecting .item { opacity: .62; }
.spark { display: block; width: 100%; height: var(--qt-spark-height, 26px); overflow: visible; }
.spark .line { fill: none; stroke-width: 1.5; stroke-linejoin: round; stroke-linecap: round; }
.spark .base { stroke: var(--_border); stroke-width: 1; stroke-dasharray: 3 3; }
.row.up .line { stroke: var(--_up); }
.row.down .line { stroke: var(--_down); }
.row.flat .line { stroke: var(--_flat); }
.empty { padding: .35em .9em; color: var(--_muted); }
.empty[hidden] { display: none; }

@media (prefers-reduced-motion: reduce) {
  .track, .item { animation: none !important; }
}
@media (forced-colors: active) {
  .dot { forced-color-adjust: none; }
  .tri { background: CanvasText; }
}
`;

let sharedSheet = null;
function styleFor(root) {
  try {
    if (!sharedSheet) {
      sharedSheet = new CSSStyleSheet();
      sharedSheet.replaceSync(CSS);
    }
    root.adoptedStyleSheets = [sharedSheet];
  } catch (_) {
    const style = document.createElement('style');
    style.textContent = CSS;
    root.appendChild(style);
  }
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const reducedMotion = globalThis.matchMedia
  ? globalThis.matchMedia('(prefers-reduced-motion: reduce)')
  : { matches: false, addEventListener() {} };

// Outside a browser (e.g. Node importing the formatters) there is no HTMLElement.
const ElementBase = globalThis.HTMLElement || class {};

export class QuoteTicker extends ElementBase {
  static get observedAttributes() {
    return ['symbols', 'src', 'layout', 'controls', 'paused', 'label', 'motion'];
  }

  constructor() {
    super();
    this.root = this.attachShadow({ mode: 'open' });
    styleFor(this.root);
    this.wants = '*'; // consumer interface: '*' or an array of symbols
    this.quotes = new Map(); // latest state, tracked even while paused
    this.history = new Map(); // symbol -> prices received this session
    this.rows = new Map(); // symbol -> {row, item, parts, spark}
    this.dirty = new Set();
    this.flashedAt = new Map();
    this.feed = 'connecting';
    this.conn = null;
    this.frame = 0;
    this.waiters = [];
    this.pendingFlash = new Map();
    this.pausedShown = false;
    this.marquee = { shift: 0, count: -1 };
    this.onMotion = () => this.updateMotion();
    this.build();
  }

  // --- public API -------------------------------------------------------------------

  get paused() {
    return this.hasAttribute('paused');
  }

  set paused(value) {
    this.toggleAttribute('paused', Boolean(value));
  }

  /** '*' or the list of symbols this element shows (from the `symbols` attribute). */
  get symbols() {
    return this.wants === '*' ? '*' : [...this.wants];
  }

  set symbols(value) {
    this.setAttribute('symbols', Array.isArray(value) ? value.join(',') : String(value));
  }

  /** Hand quotes to this element exactly as the socket does (same seq rule, same
   * renderer). Resolves once they are on screen (at once while paused). */
  ingest(quotes, { snapshot = false } = {}) {
    const latest = new Map();
    for (const q of Array.isArray(quotes) ? quotes : [quotes]) {
      if (!q || typeof q !== 'object' || typeof q.symbol !== 'string' || !wants(this, q.symbol)) continue;
      if (isNewer(q, latest.get(q.symbol) || this.quotes.get(q.symbol))) latest.set(q.symbol, q);
    }
    this.receive([...latest.values()], snapshot);
    return this.rendered();
  }

  /** Resolves after the next render (or at once if nothing is pending / paused). */
  rendered() {
    if (!this.frame || this.paused) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** The latest quote held for a symbol (also while paused), or undefined. */
  quote(symbol) {
    return this.quotes.get(symbol);
  }

  // --- lifecycle --------------------------------------------------------------------

  connectedCallback() {
    this.attach(); // sets data-feed from the (possibly shared, already live) connection
    if (!this.conn) this.applyFeed('connecting');
    reducedMotion.addEventListener?.('change', this.onMotion);
    this.observeSize();
    this.renderAll();
  }

  disconnectedCallback() {
    this.detach();
    reducedMotion.removeEventListener?.('change', this.onMotion);
    this.resizeObserver?.disconnect();
  }

  attributeChangedCallback(name, oldValue, value) {
    if (oldValue === value) return;
    switch (name) {
      case 'symbols': {
        this.wants = parseSymbols(value);
        for (const s of [...this.quotes.keys()]) {
          if (!wants(this, s)) {
            this.quotes.delete(s);
            this.history.delete(s);
            this.removeRow(s);
          }
        }
        this.reorder();
        if (this.conn) this.conn.changed(this); // resubscribe on the shared socket
        break;
      }
      case 'src':
        if (this.isConnected) {
          this.detach();
          this.quotes.clear();
          this.history.clear();
          for (const s of [...this.rows.keys()]) this.removeRow(s);
          this.attach();
        }
        break;
      case 'layout':
        this.applyLayout();
        break;
      case 'controls':
        this.controls.hidden = value === 'none';
        break;
      case 'label':
        this.viewport.setAttribute('aria-label', this.label());
        break;
      case 'paused':
        this.applyPaused();
        break;
      case 'motion':
        this.updateMotion();
        break;
      default:
        break;
    }
  }

  // --- connection consumer interface -----------------------------------------------

  receive(quotes, snapshot) {
    for (const q of quotes) {
      const prev = this.quotes.get(q.symbol);
      this.quotes.set(q.symbol, q);
      const price = Number(q.price);
      if (Number.isFinite(price)) {
        let h = this.history.get(q.symbol);
        if (!h) this.history.set(q.symbol, (h = []));
        h.push(price);
        if (h.length > HISTORY_MAX * 2) {
          const last = h.length - 1;
          this.history.set(q.symbol, h.filter((_, i) => (last - i) % 2 === 0));
        }
      }
      const flash = !snapshot && prev && Number(prev.price) !== price;
      if (flash) this.pendingFlash.set(q.symbol, price > Number(prev.price) ? 'up' : 'down');
      this.dirty.add(q.symbol);
    }
    if (snapshot && !this.paused) {
      // A snapshot is drawn at once, so the board is complete when data-feed turns live.
      if (this.frame) cancelAnimationFrame(this.frame);
      this.frame = 0;
      this.flush();
    } else {
      this.schedule();
    }
  }

  setFeed(feed) {
    this.applyFeed(feed);
  }

  // --- internals --------------------------------------------------------------------

  label() {
    return this.getAttribute('label') || (this.layout() === 'panel' ? 'Market prices' : 'Market ticker');
  }

  layout() {
    return this.getAttribute('layout') === 'panel' ? 'panel' : 'strip';
  }

  build() {
    this.wrap = el('div', { class: 'wrap', part: 'container' });
    this.controls = el('div', { class: 'controls', part: 'controls' });
    const state = el('span', { class: 'state' });
    state.append(el('span', { class: 'dot', 'aria-hidden': 'true' }));
    // A status message (not the quotes): announced politely, and only when it changes.
    this.statusText = el('span', { class: 'status', role: 'status', part: 'status' }, FEED_TEXT.connecting);
    state.append(this.statusText);
    this.pauseButton = el('button', { type: 'button', class: 'pause', part: 'pause', 'aria-pressed': 'false' });
    this.pauseIcon = el('span', { class: 'icon', 'aria-hidden': 'true' }); // drawn by CSS
    this.pauseButton.append(this.pauseIcon, document.createTextNode('Pause'));
    this.pauseButton.title = 'Pause live updates';
    this.pauseButton.addEventListener('click', () => {
      this.paused = !this.paused;
    });
    this.controls.append(state, this.pauseButton);
    // The quotes: a named region, deliberately NOT a live region (no announcement per tick).
    this.viewport = el('div', { class: 'viewport', part: 'viewport', role: 'region', tabindex: '0' });
    this.list = el('ul', { class: 'track', part: 'list', role: 'list' });
    this.empty = el('div', { class: 'empty', part: 'empty' }, 'Waiting for prices\u2026');
    this.viewport.append(this.list, this.empty);
    this.wrap.append(this.controls, this.viewport);
    this.root.append(this.wrap);
    this.applyLayout();
    this.applyPaused();
  }

  applyLayout() {
    const layout = this.layout();
    this.wrap.classList.toggle('strip', layout === 'strip');
    this.wrap.classList.toggle('panel', layout === 'panel');
    this.viewport.setAttribute('aria-label', this.label());
    for (const s of [...this.rows.keys()]) this.removeRow(s);
    this.renderAll();
  }

  applyFeed(feed) {
    this.feed = feed;
    if (this.getAttribute('data-feed') !== feed) {
      this.setAttribute('data-feed', feed);
      this.dispatchEvent(new CustomEvent('feedchange', { detail: { feed }, bubbles: true, composed: true }));
    }
    for (const f of Object.keys(FEED_TEXT)) this.wrap.classList.toggle(`feed-${f}`, f === feed);
    this.showStatus();
  }

  showStatus() {
    const text = (FEED_TEXT[this.feed] || this.feed) + (this.paused ? ' \u00B7 paused' : '');
    if (this.statusText.textContent !== text) this.statusText.textContent = text;
  }

  applyPaused() {
    const paused = this.paused;
    this.pauseButton.setAttribute('aria-pressed', String(paused));
    this.pauseButton.title = paused ? 'Resume live updates' : 'Pause live updates';
    this.wrap.classList.toggle('paused', paused);
    this.showStatus();
    if (!paused) {
      this.pendingFlash.clear(); // no burst of flashes on resume
      for (const s of this.quotes.keys()) this.dirty.add(s);
      this.schedule();
    } else {
      this.resolveWaiters();
    }
    this.updateMotion();
    if (paused !== this.pausedShown) {
      this.pausedShown = paused;
      this.dispatchEvent(new CustomEvent('pausechange', { detail: { paused }, bubbles: true, composed: true }));
    }
  }

  attach() {
    if (this.conn) return;
    let url;
    try {
      url = resolveSocketUrl(this.getAttribute('src'));
    } catch (err) {
      console.warn('[quote-ticker] bad src', this.getAttribute('src'), err);
      return;
    }
    this.conn = connectionFor(url);
    this.conn.add(this);
  }

  detach() {
    if (!this.conn) return;
    this.conn.remove(this);
    this.conn = null;
  }

  schedule() {
    if (this.paused || this.frame || !this.dirty.size) return;
    const run = () => {
      this.frame = 0;
      this.flush();
    };
    // rAF: at most one render per frame, none while the tab is hidden (the latest state
    // is kept and drawn when it shows again).
    this.frame = globalThis.requestAnimationFrame ? requestAnimationFrame(run) : setTimeout(run, 16);
  }

  resolveWaiters() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  renderAll() {
    for (const s of this.quotes.keys()) this.dirty.add(s);
    this.schedule();
  }

  flush() {
    if (this.paused) {
      this.resolveWaiters();
      return;
    }
    const now = performance.now();
    const motionOk = !reducedMotion.matches;
    let added = false;
    for (const symbol of this.dirty) {
      const q = this.quotes.get(symbol);
      if (!q) continue;
      let r = this.rows.get(symbol);
      if (!r) {
        r = this.makeRow(symbol);
        added = true;
      }
      this.fill(r, q);
      const tick = this.pendingFlash.get(symbol);
      if (tick && motionOk) {
        const last = this.flashedAt.get(symbol) || -Infinity;
        if (now - last >= FLASH_MIN_GAP_MS) {
          this.flashedAt.set(symbol, now);
          const a = r.item.classList.contains('flash-a');
          r.item.classList.remove('flash-a', 'flash-b', 'tick-up', 'tick-down');
          r.item.classList.add(a ? 'flash-b' : 'flash-a', `tick-${tick}`);
        }
      }
    }
    this.dirty.clear();
    this.pendingFlash.clear();
    if (added) this.reorder();
    this.empty.hidden = this.rows.size > 0;
    this.setAttribute('data-count', String(this.rows.size));
    this.updateMotion();
    this.resolveWaiters();
  }

  sortKey(symbol) {
    if (this.wants !== '*') return [this.wants.indexOf(symbol), ''];
    const q = this.quotes.get(symbol);
    return [q && q.kind === 'index' ? 0 : 1, symbol];
  }

  reorder() {
    const keys = [...this.rows.keys()].sort((a, b) => {
      const ka = this.sortKey(a);
      const kb = this.sortKey(b);
      return ka[0] - kb[0] || (ka[1] < kb[1] ? -1 : ka[1] > kb[1] ? 1 : 0);
    });
    let i = 0;
    for (const s of keys) {
      const row = this.rows.get(s).row;
      if (this.list.children[i] !== row) this.list.insertBefore(row, this.list.children[i] || null);
      i += 1;
    }
  }

  makeRow(symbol) {
    const row = el('li', { class: 'row', part: 'row' });
    const item = el('span', { class: 'item', part: 'item' });
    item.setAttribute('data-symbol', symbol);
    row.append(item);
    const r = { row, item, kind: null, parts: null, spark: null };
    if (this.layout() === 'panel') {
      const svg = document.createElementNS(SVG_NS, 'svg');
      svg.setAttribute('class', 'spark');
      svg.setAttribute('viewBox', '0 0 100 26');
      svg.setAttribute('preserveAspectRatio', 'none');
      svg.setAttribute('aria-hidden', 'true');
      svg.setAttribute('focusable', 'false');
      const base = document.createElementNS(SVG_NS, 'line');
      base.setAttribute('class', 'base');
      base.setAttribute('x1', '0');
      base.setAttribute('x2', '100');
      base.setAttribute('vector-effect', 'non-scaling-stroke');
      const line = document.createElementNS(SVG_NS, 'polyline');
      line.setAttribute('class', 'line');
      line.setAttribute('vector-effect', 'non-scaling-stroke');
      svg.append(base, line);
      row.append(svg);
      r.spark = { svg, base, line };
    }
    this.rows.set(symbol, r);
    this.list.append(row);
    return r;
  }

  removeRow(symbol) {
    const r = this.rows.get(symbol);
    if (!r) return;
    r.row.remove();
    this.rows.delete(symbol);
    this.flashedAt.delete(symbol);
    this.empty.hidden = this.rows.size > 0;
    if (this.isConnected) this.setAttribute('data-count', String(this.rows.size));
  }

  /** Build (once per kind) and update the item's text nodes. Data only ever goes in
   * through textContent: a symbol like `<img src=x>` shows as those characters. */
  fill(r, q) {
    const p = formatQuote(q);
    const item = r.item;
    if (r.kind !== p.kind) {
      item.textContent = '';
      const parts = {
        sym: el('b', { class: 'sym' }),
        px: el('span', { class: 'px' }),
        vh: el('span', { class: 'vh' }),
        br: el('span', { class: 'br', 'aria-hidden': 'true' }),
        arw: el('span', { class: p.kind === 'index' ? 'tri' : 'arw', 'aria-hidden': 'true' }),
        chg: el('span', { class: 'chg' }),
        pct: el('span', { class: 'pct' }),
      };
      const space = () => document.createTextNode(' ');
      // stock: SYM␠PRICE[␠words␠]▲␠CHANGE␠(PCT%)   index: SYM␠VALUE[␠words␠]◭CHANGE␠(PCT%)
      // The spaces around the hidden words live inside it (white-space: pre), so no line
      // start or end can swallow them; the visible gap before the arrow is a margin.
      item.append(parts.sym, space(), parts.px, parts.vh, parts.br, parts.arw);
      if (p.kind !== 'index') item.append(space());
      item.append(parts.chg, space(), parts.pct);
      r.parts = parts;
      r.kind = p.kind;
    }
    const { parts } = r;
    const set = (node, text) => {
      if (node.textContent !== text) node.textContent = text;
    };
    set(parts.sym, p.symbol);
    set(parts.px, p.price);
    set(parts.vh, ` ${p.words} `);
    if (p.kind !== 'index') set(parts.arw, p.arrow);
    set(parts.chg, p.change);
    set(parts.pct, p.pct);
    for (const d of ['up', 'down', 'flat']) {
      item.classList.toggle(d, d === p.direction);
      r.row.classList.toggle(d, d === p.direction);
    }
    if (r.spark) this.drawSpark(r.spark, q);
  }

  drawSpark(spark, q) {
    const h = this.history.get(q.symbol) || [];
    const prev = Number(q.prev_close);
    let lo = Math.min(...h);
    let hi = Math.max(...h);
    if (Number.isFinite(prev)) {
      lo = Math.min(lo, prev);
      hi = Math.max(hi, prev);
    }
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) {
      spark.line.setAttribute('points', '');
      return;
    }
    const pad = 2;
    const y = (v) => (hi === lo ? 13 : pad + (1 - (v - lo) / (hi - lo)) * (26 - 2 * pad));
    const pts = h.length === 1 ? [h[0], h[0]] : h;
    const step = 100 / Math.max(1, pts.length - 1);
    spark.line.setAttribute('points', pts.map((v, i) => `${(i * step).toFixed(2)},${y(v).toFixed(2)}`).join(' '));
    if (Number.isFinite(prev)) {
      const yb = y(prev).toFixed(2);
      spark.base.setAttribute('y1', yb);
      spark.base.setAttribute('y2', yb);
    }
  }

  observeSize() {
    if (!globalThis.ResizeObserver) return;
    if (!this.resizeObserver) this.resizeObserver = new ResizeObserver(() => this.updateMotion());
    this.resizeObserver.observe(this.viewport);
  }

  /** The strip scrolls (back and forth, slowly) only when it overflows, is not paused,
   * and the user has not asked for reduced motion; otherwise it is a scrollable row. */
  updateMotion() {
    if (!this.isConnected) return;
    const strip = this.layout() === 'strip';
    const overflow = strip ? this.list.scrollWidth - this.viewport.clientWidth : 0;
    const moving = strip && overflow > 4 && !this.paused && !reducedMotion.matches
      && this.getAttribute('motion') !== 'off';
    if (moving) {
      const m = this.marquee;
      // Re-time only on real changes: a new duration restarts the animation.
      if (m.count !== this.rows.size || Math.abs(overflow - m.shift) > m.shift * 0.15) {
        m.count = this.rows.size;
        m.shift = overflow;
        const speed = parseFloat(getComputedStyle(this).getPropertyValue('--qt-speed')) || 40;
        this.list.style.setProperty('--qt-shift', `${-overflow}px`);
        this.list.style.setProperty('--qt-duration', `${Math.max(8, overflow / speed / 0.88).toFixed(1)}s`);
      }
    } else {
      this.marquee.count = -1;
    }
    const wasMoving = this.wrap.classList.contains('moving');
    if (wasMoving && !moving) {
      // Stop where it is, and let the row be scrolled from there.
      let x = 0;
      try {
        x = new DOMMatrixReadOnly(getComputedStyle(this.list).transform).m41;
      } catch (_) { /* 'none' in an old engine */ }
      this.wrap.classList.remove('moving');
      this.wrap.classList.add('still');
      this.viewport.scrollLeft = -x;
    } else if (!wasMoving && moving) {
      this.viewport.scrollLeft = 0;
      this.wrap.classList.remove('still');
      this.wrap.classList.add('moving');
    } else if (!moving) {
      this.wrap.classList.add('still');
    }
  }
}

if (globalThis.customElements && !customElements.get('quote-ticker')) {
  customElements.define('quote-ticker', QuoteTicker);
}
