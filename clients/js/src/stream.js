// The stream client: the quote service's websocket protocol (docs/PROTOCOL.md) as a small
// API for building your own UI, in the browser or in Node.
//
//   import { connect } from 'quote-stream';
//   const stream = connect('ws://HOST/ws');          // Node 20: connect(url, { WebSocket })
//   stream.on('quote', (q) => console.log(q.symbol, q.price));
//   stream.on('status', (feed) => console.log(feed)); // connecting, live, stale, reconnecting
//   stream.subscribe(['OGDC', 'KSE100']);             // or '*'
//   stream.board.get('OGDC');                         // the latest accepted quote
//   stream.unsubscribe(['KSE100']);
//   stream.close();
//
// Every connect() to the same URL shares one websocket (subscribed to the union of what
// the streams on it want); closing the last stream closes it. The socket reconnects by
// itself with exponential back-off and full jitter, resubscribes and takes the new
// snapshot; a quote whose `seq` is not above the one held is dropped. Types: stream.d.ts.
//
// A rate: connect(url, { maxHz: 4 }) or stream.setMaxHz(4) asks for at most 4 `quotes`
// frames a second (0.5 to 50; quotes stay conflated, so the board is never more than
// 1/maxHz behind). The shared socket runs at the highest rate its streams ask for, and at
// the service's default as soon as one stream asks for none: a stream may get quotes more
// often than it asked, never less often.
//
// Every update: connect(url, { mode: 'every' }) asks for every published quote, in seq
// order, never conflated (PROTOCOL.md, "Every update, recovery and the tape"). Its streams
// share a socket of their own (sockets are keyed by URL and mode: the service gives one
// connection one mode). The socket remembers each symbol's last accepted seq (`positions`,
// seeded by `connect(url, { mode: 'every', since })`) and after any reconnect resubscribes
// with `since` = those seqs, so the service sends what was missed from its tape first; a
// quote whose seq is not above the position is a duplicate and dropped. Each answer to a
// `since` is a `recovery` event ({ recovered, unrecovered }) and `stream.recovered`; a
// symbol the tape could not cover continues from a snapshot (its seq jumps there).

// Without websockets: after SSE_AFTER_FAILURES websocket attempts in a row that never
// opened (a proxy or filter that blocks the upgrade), the socket falls back to the
// service's Server-Sent Events (sse-socket.js), where there is an EventSource (browsers;
// in Node, connect(url, { EventSource })). The same frames, the same reconnects and
// `since`; when that stream drops, the next attempt tries the websocket again.
// `connections()` says which is in use (`transport`).

import { SseSocket } from './sse-socket.js';

export const SSE_AFTER_FAILURES = 3;

export const SYMBOL_RE = /^[A-Z0-9.\-]{1,16}$/;

/** A valid symbol: 1 to 16 characters of A-Z 0-9 . - (as the protocol allows). */
export function isSymbol(value) {
  return typeof value === 'string' && SYMBOL_RE.test(value);
}

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

/** The absolute websocket URL for `url`: http(s) becomes ws(s), a relative URL is taken
 * against the document (in a browser), the fragment is dropped. */
export function socketUrl(url) {
  const base = globalThis.document?.baseURI ?? globalThis.location?.href;
  const u = base === undefined ? new URL(String(url)) : new URL(String(url), base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  u.hash = '';
  return u.href;
}

export const MIN_HZ = 0.5;
export const MAX_HZ = 50;

/** A `maxHz` option: null/undefined (the service's default) or a number from 0.5 to 50. */
export function checkMaxHz(value) {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'number' || !(value >= MIN_HZ && value <= MAX_HZ)) {
    throw new RangeError(`maxHz must be a number from ${MIN_HZ} to ${MAX_HZ}, got ${String(value)}`);
  }
  return value;
}

export const MODES = Object.freeze(['conflated', 'every']);

/** A `mode` option: 'conflated' (the default) or 'every'. */
function checkMode(value) {
  if (value === undefined || value === null) return 'conflated';
  if (!MODES.includes(value)) {
    throw new RangeError(`mode must be 'conflated' or 'every', got ${String(value)}`);
  }
  return value;
}

/** A `since` option (an object or a Map: symbol -> last seq processed) as a Map. */
function checkSince(since) {
  const out = new Map();
  if (since === undefined || since === null) return out;
  const entries = since instanceof Map ? since.entries() : Object.entries(since);
  for (const [raw, seq] of entries) {
    const symbol = typeof raw === 'string' ? raw.toUpperCase() : raw;
    if (!isSymbol(symbol)) throw new TypeError(`not a symbol: ${JSON.stringify(raw)}`);
    if (!Number.isSafeInteger(seq) || seq < 0) {
      throw new RangeError(`since.${symbol} must be an integer >= 0, got ${String(seq)}`);
    }
    out.set(symbol, seq);
  }
  return out;
}

const registry = new Map(); // url (+ ' every' for every-mode sockets) -> Connection
const EVENTS = ['quote', 'quotes', 'status', 'error', 'recovery'];

/**
 * A stream of quotes from the service at `url`. Streams to the same URL share one socket.
 * `options.WebSocket`: the WebSocket class to use where there is no global one (Node 20:
 * the `ws` package); used when this call opens the URL's socket. `options.maxHz`: at most
 * this many `quotes` frames a second for this stream (see above; default: the service's).
 * `options.mode`: 'every' for every update (see above), with `options.since` (symbol ->
 * last seq processed) where to resume; `maxHz` cannot go with it (RangeError).
 */
export function connect(url, options = {}) {
  const href = socketUrl(url);
  const maxHz = checkMaxHz(options.maxHz);
  const mode = checkMode(options.mode);
  if (mode === 'every' && maxHz !== null) {
    throw new RangeError("maxHz cannot go with mode 'every' (a rate conflates)");
  }
  if (mode !== 'every' && options.since !== undefined && options.since !== null) {
    throw new TypeError("since needs mode 'every'");
  }
  const since = checkSince(options.since);
  const key = mode === 'every' ? `${href} every` : href;
  let conn = registry.get(key);
  if (!conn) {
    const WebSocketImpl = options.WebSocket || globalThis.WebSocket;
    if (typeof WebSocketImpl !== 'function') {
      throw new TypeError('no WebSocket here: pass connect(url, { WebSocket }) '
        + "(in Node 20, e.g. `import WebSocket from 'ws'`)");
    }
    conn = new Connection(href, WebSocketImpl, mode, key,
      options.EventSource || globalThis.EventSource || null);
    registry.set(key, conn);
  }
  // A position the socket already holds wins: its quotes up to there were delivered.
  for (const [symbol, seq] of since) if (!conn.positions.has(symbol)) conn.positions.set(symbol, seq);
  const stream = new Stream(conn, maxHz);
  conn.add(stream);
  return stream;
}

/** Diagnostics: the shared connections, as {url, feed, consumers, subscribed, readyState}. */
export function connections() {
  return [...registry.values()].map((c) => ({
    url: c.url,
    feed: c.feed,
    consumers: c.consumers.size,
    subscribed: c.sent === '*' ? '*' : [...(c.sent || [])].sort(),
    maxHz: c.rate(),
    grantedHz: c.grantedHz,
    mode: c.mode,
    recovered: c.recovered,
    transport: c.transport,
    readyState: c.ws ? c.ws.readyState : -1,
  }));
}

function toSymbols(symbols) {
  if (symbols === '*') return '*';
  const list = typeof symbols === 'string' ? [symbols] : symbols;
  if (!list || typeof list[Symbol.iterator] !== 'function') {
    throw new TypeError('symbols must be "*", a symbol, or a list of symbols');
  }
  const out = [];
  for (const raw of list) {
    const s = typeof raw === 'string' ? raw.toUpperCase() : raw;
    if (!isSymbol(s)) throw new TypeError(`not a symbol: ${JSON.stringify(raw)}`);
    out.push(s);
  }
  return out;
}

function report(err) {
  // A listener's exception must not stop the other listeners or the socket: rethrow it
  // on its own (the page's error event, or Node's uncaughtException).
  queueMicrotask(() => {
    throw err;
  });
}

/** One consumer's view of a shared connection: its symbols, its board, its listeners. */
class Stream {
  constructor(conn, maxHz = null) {
    this.conn = conn;
    this.hz = maxHz; // null: the service's default
    this.wants = new Set(); // '*' or Set of symbols
    this.quotes = new Map(); // the board: symbol -> latest accepted quote
    this.listeners = new Map(EVENTS.map((e) => [e, new Set()]));
    this.state = conn.feed;
    this.isClosed = false;
  }

  get url() {
    return this.conn.url;
  }

  get feed() {
    return this.state;
  }

  get board() {
    return this.quotes;
  }

  get symbols() {
    return this.wants === '*' ? '*' : [...this.wants];
  }

  get closed() {
    return this.isClosed;
  }

  get maxHz() {
    return this.hz;
  }

  get mode() {
    return this.conn.mode;
  }

  /** Every mode: the latest answer to a `since` on the socket (null: none yet). */
  get recovered() {
    return this.conn.recovered;
  }

  get unrecovered() {
    return [...this.conn.unrecovered];
  }

  /** Every mode: symbol -> the last seq accepted, for this stream's symbols. */
  get positions() {
    const out = new Map();
    for (const [s, seq] of this.conn.positions) if (this.has(s)) out.set(s, seq);
    return out;
  }

  /** At most this many `quotes` frames a second (null: the service's default). */
  setMaxHz(maxHz) {
    this.ensureOpen();
    const hz = checkMaxHz(maxHz);
    if (hz !== null && this.conn.mode === 'every') {
      throw new RangeError("maxHz cannot go with mode 'every' (a rate conflates)");
    }
    if (hz !== this.hz) {
      this.hz = hz;
      this.conn.queueSync();
    }
    return this;
  }

  subscribe(symbols) {
    this.ensureOpen();
    const add = toSymbols(symbols);
    if (this.wants === '*') return this;
    if (add === '*') this.wants = '*';
    else for (const s of add) this.wants.add(s);
    this.conn.changed(this);
    return this;
  }

  unsubscribe(symbols) {
    this.ensureOpen();
    const drop = toSymbols(symbols);
    if (drop === '*') {
      this.wants = new Set();
    } else if (this.wants === '*') {
      throw new Error('subscribed to "*": unsubscribe("*") first, or use setSymbols(list)');
    } else {
      for (const s of drop) this.wants.delete(s);
    }
    for (const s of [...this.quotes.keys()]) if (!this.has(s)) this.quotes.delete(s);
    this.conn.changed(this);
    return this;
  }

  setSymbols(symbols) {
    this.ensureOpen();
    const next = toSymbols(symbols);
    this.wants = next === '*' ? '*' : new Set(next);
    for (const s of [...this.quotes.keys()]) if (!this.has(s)) this.quotes.delete(s);
    this.conn.changed(this);
    return this;
  }

  has(symbol) {
    return this.wants === '*' || this.wants.has(symbol);
  }

  on(event, listener) {
    const set = this.listeners.get(event);
    if (!set) throw new TypeError(`unknown event ${JSON.stringify(event)}: one of ${EVENTS.join(', ')}`);
    if (typeof listener !== 'function') throw new TypeError('the listener must be a function');
    set.add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this.listeners.get(event)?.delete(listener);
    return this;
  }

  close() {
    if (this.isClosed) return;
    this.isClosed = true;
    this.conn.remove(this);
    for (const set of this.listeners.values()) set.clear();
  }

  ensureOpen() {
    if (this.isClosed) throw new Error('this stream is closed');
  }

  emit(event, ...args) {
    for (const fn of [...this.listeners.get(event)]) {
      try {
        fn(...args);
      } catch (err) {
        report(err);
      }
    }
  }

  listening(event) {
    return this.listeners.get(event).size > 0;
  }

  // --- from the connection -----------------------------------------------------------

  setFeed(feed) {
    if (feed === this.state) return;
    const previous = this.state;
    this.state = feed;
    this.emit('status', feed, previous);
  }

  receive(quotes, snapshot) {
    const info = { snapshot };
    for (const q of quotes) this.quotes.set(q.symbol, q);
    for (const q of quotes) this.emit('quote', q, info);
    this.emit('quotes', quotes, info);
  }
}

/** The shared socket of one URL and mode: refcounted streams, the union of their symbols. */
class Connection {
  constructor(url, WebSocketImpl, mode = 'conflated', key = url, EventSourceImpl = null) {
    this.url = url;
    this.key = key;
    this.mode = mode;
    this.WebSocket = WebSocketImpl;
    this.EventSource = EventSourceImpl;
    this.transport = 'websocket'; // or 'sse', after websockets failed (see above)
    this.wsFailures = 0; // websocket attempts in a row that never opened
    this.positions = new Map(); // every mode: symbol -> the last seq accepted
    this.reset = new Set(); // every mode: symbols whose next snapshot quote is the truth
    this.requests = new Map(); // every mode: id -> the subscribe/unsubscribe sent
    this.recovered = null; // every mode: the latest answer to a `since`
    this.unrecovered = [];
    this.consumers = new Set();
    this.quotes = new Map(); // symbol -> latest accepted quote
    this.feed = 'connecting';
    this.everUp = false;
    this.ws = null;
    this.sent = null; // what we asked the server for on this socket: '*' or Set
    this.sentHz = null; // the rate asked on this socket (null: none, the service's default)
    this.pendingHz = undefined; // a rate to send with the next subscribe
    this.rateOnly = new Set(); // ids of subscribes that only set the rate
    this.grantedHz = null; // the rate the latest ack says is in force
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
      (q) => consumer.has(q.symbol) && isNewer(q, consumer.quotes.get(q.symbol)),
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

  /** The socket's rate: the highest its streams ask for; null (the service's default)
   * if any asks for none. */
  rate() {
    let hz = 0;
    for (const c of this.consumers) {
      if (c.hz === null) return null;
      hz = Math.max(hz, c.hz);
    }
    return this.consumers.size ? hz : null;
  }

  send(message) {
    if (!this.ws || this.ws.readyState !== 1) return;
    const id = this.nextId++;
    if (message.op === 'subscribe' && this.pendingHz !== undefined) {
      // Back to the default: the highest rate a client may ask, which the service's
      // default (50 as shipped) serves.
      message = { ...message, max_hz: this.pendingHz === null ? MAX_HZ : this.pendingHz };
      this.pendingHz = undefined;
    }
    this.ws.send(JSON.stringify({ ...message, id }));
    return id;
  }

  /** Subscribe `symbols` ('*' or a list): in every mode with `since` from the positions,
   * in parts that fit max_frame_bytes (a '*' goes last, so the symbols named before it are
   * held, and recovered, before it adds the rest). */
  subscribeTo(symbols) {
    if (this.mode !== 'every') {
      if (symbols === '*') this.send({ op: 'subscribe', symbols: '*' });
      else this.sendSymbols('subscribe', symbols);
      return;
    }
    const all = symbols === '*';
    const named = all ? [...this.positions.keys()].sort() : [...symbols];
    const message = (chunk) => {
      const m = { op: 'subscribe', symbols: chunk, mode: 'every' };
      const since = {};
      let any = false;
      for (const s of chunk) {
        if (this.positions.has(s)) {
          since[s] = this.positions.get(s);
          any = true;
        }
      }
      if (any) m.since = since;
      return m;
    };
    const sendEvery = (m) => {
      const id = this.send(m);
      if (id !== undefined) this.requests.set(id, m);
    };
    let chunk = [];
    let size = 96;
    for (const s of named) {
      const cost = s.length + 3 + (this.positions.has(s) ? s.length + 4 + String(this.positions.get(s)).length : 0);
      if (chunk.length && size + cost > this.maxFrameBytes) {
        sendEvery(message(chunk));
        chunk = [];
        size = 96;
      }
      chunk.push(s);
      size += cost;
    }
    if (all) sendEvery({ ...message(chunk), symbols: '*' });
    else if (chunk.length) sendEvery(message(chunk));
  }

  unsubscribeFrom(symbols) {
    if (symbols === '*') this.send({ op: 'unsubscribe', symbols: '*' });
    else this.sendSymbols('unsubscribe', symbols);
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
    const hz = this.rate();
    if (hz !== this.sentHz) {
      this.pendingHz = hz; // goes with the first subscribe below, or alone at the end
      this.sentHz = hz;
    }
    this.syncSymbols();
    if (this.pendingHz !== undefined) {
      this.rateOnly.add(this.send({ op: 'subscribe', symbols: [] }));
    }
  }

  syncSymbols() {
    const want = this.union();
    if (want === '*') {
      if (this.sent !== '*') {
        this.subscribeTo('*');
        this.sent = '*';
      }
      return;
    }
    if (this.sent === '*') {
      // Leave "*" for an explicit list: drop everything, then take the list.
      this.unsubscribeFrom('*');
      this.sent = new Set();
      this.dropHeld((s) => !want.has(s));
      this.subscribeTo([...want]);
      for (const s of want) this.sent.add(s);
      return;
    }
    const add = [...want].filter((s) => !this.sent.has(s));
    const drop = [...this.sent].filter((s) => !want.has(s));
    if (drop.length) {
      this.unsubscribeFrom(drop);
      for (const s of drop) this.sent.delete(s);
      this.dropHeld((s) => drop.includes(s));
    }
    if (add.length) {
      this.subscribeTo(add);
      for (const s of add) this.sent.add(s);
    }
  }

  dropHeld(predicate) {
    for (const s of [...this.quotes.keys()]) if (predicate(s)) this.quotes.delete(s);
    // Every mode: forgotten with the board; subscribing again starts from a snapshot.
    for (const s of [...this.positions.keys()]) {
      if (predicate(s)) {
        this.positions.delete(s);
        this.reset.delete(s);
      }
    }
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
    this.transport = this.EventSource && this.wsFailures >= SSE_AFTER_FAILURES ? 'sse' : 'websocket';
    try {
      ws = this.transport === 'sse' ? new SseSocket(this.url, this.EventSource)
        : new this.WebSocket(this.url);
    } catch (err) {
      console.warn('[quote-stream] cannot open', this.url, err);
      this.scheduleReconnect(1006);
      return;
    }
    this.ws = ws;
    this.sent = new Set();
    this.requests = new Map();
    this.reset = new Set();
    this.sentHz = null;
    this.pendingHz = undefined;
    this.rateOnly = new Set();
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
      this.onClose(1006);
    }, ms);
  }

  onMessage(data) {
    this.armWatchdog();
    let msg;
    try {
      msg = JSON.parse(typeof data === 'string' ? data : String(data));
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
        if (typeof msg.max_hz === 'number') this.grantedHz = msg.max_hz;
        if (this.rateOnly.delete(msg.id)) break; // a rate change: says nothing of the board
        if (this.mode === 'every' && this.requests.has(msg.id)) {
          const sent = this.requests.get(msg.id);
          this.requests.delete(msg.id);
          this.everyAck(msg, sent);
          break;
        }
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
      case 'error': {
        const error = { code: msg.code, message: msg.message, id: msg.id };
        const heard = [...this.consumers].filter((c) => c.listening('error'));
        if (!heard.length) console.warn('[quote-stream] server error', msg.code, msg.message);
        for (const c of heard) c.emit('error', error);
        break;
      }
      default: // heartbeat, pong, and types this version does not know
        break;
    }
  }

  /** Every mode: what an ack of our subscribe says of recovery and the snapshot to come. */
  everyAck(msg, sent) {
    if (msg.mode !== 'every') {
      console.warn('[quote-stream] the service did not grant mode every (an older service?): '
        + 'quotes are conflated');
    }
    const since = sent.since ? Object.keys(sent.since) : [];
    let lost = [];
    if (since.length) {
      // Not recovered (or no answer, an older service): its snapshot is the truth.
      if (msg.recovered === false) lost = (Array.isArray(msg.unrecovered) ? msg.unrecovered : []).filter((s) => since.includes(s));
      else if (msg.recovered !== true) lost = since;
      for (const s of lost) this.reset.add(s);
      this.recovered = msg.recovered === true;
      this.unrecovered = msg.recovered === false ? [...lost] : [];
      if (msg.recovered === false) {
        console.warn('[quote-stream] the service could not recover every missed quote of',
          lost.join(', '), 'from its tape: they continue from a snapshot');
      }
      const info = { recovered: this.recovered, unrecovered: [...this.unrecovered] };
      for (const c of [...this.consumers]) c.emit('recovery', info);
    }
    const unknown = new Set(Array.isArray(msg.unknown) ? msg.unknown : []);
    const listed = sent.symbols === '*' ? (Array.isArray(msg.symbols) ? msg.symbols : []) : sent.symbols;
    // A snapshot follows for the known symbols without a position, or whose gap the tape
    // could not cover; the others go on from the tape. (Expecting one that does not come
    // is harmless: quotes make the feed live too.)
    const expect = listed.some((s) => !unknown.has(s) && (!this.positions.has(s) || this.reset.has(s)));
    if (expect) this.pendingSnapshot = true;
    else if (!this.pendingSnapshot) this.goLive();
  }

  /** Every mode: each quote above its symbol's position, in the order sent (several per
   * symbol per frame); anything else is a duplicate. Only a snapshot of a symbol the
   * service could not recover may set a position back (its record restarted). */
  applyEvery(list, snapshot) {
    const accepted = [];
    for (const q of list) {
      if (!q || typeof q !== 'object' || typeof q.symbol !== 'string' || typeof q.seq !== 'number') continue;
      let held = this.positions.get(q.symbol);
      if (snapshot && this.reset.has(q.symbol)) {
        this.reset.delete(q.symbol);
        if (held !== undefined && q.seq < held) held = undefined;
      }
      if (held !== undefined && q.seq <= held) continue;
      this.positions.set(q.symbol, q.seq);
      this.quotes.set(q.symbol, q);
      accepted.push(q);
    }
    return accepted;
  }

  apply(list, snapshot) {
    if (!Array.isArray(list)) return;
    if (this.mode === 'every') {
      this.deliver(this.applyEvery(list, snapshot), snapshot);
      return;
    }
    const accepted = [];
    for (const q of list) {
      if (!q || typeof q !== 'object' || typeof q.symbol !== 'string') continue;
      const fresh = !this.seenOnSocket.has(q.symbol);
      this.seenOnSocket.add(q.symbol);
      if (!isNewer(q, this.quotes.get(q.symbol), fresh)) continue;
      this.quotes.set(q.symbol, q);
      accepted.push(q);
    }
    this.deliver(accepted, snapshot);
  }

  deliver(accepted, snapshot) {
    if (!accepted.length) return;
    for (const c of [...this.consumers]) {
      const mine = accepted.filter((q) => c.has(q.symbol));
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
    this.grantedHz = null;
    if (this.consumers.size === 0) {
      this.shutdown();
      return;
    }
    if (this.openedAt && Date.now() - this.openedAt >= RECONNECT.healthyAfterMs) this.attempt = 0;
    if (this.transport === 'sse') this.wsFailures = 0; // try the websocket again first
    else if (!this.openedAt) this.wsFailures += 1;
    else this.wsFailures = 0;
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
    if (registry.get(this.key) === this) registry.delete(this.key);
  }
}
