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

// Tokens (PROTOCOL.md, "Tokens and entitlements"): connect(url, { token }) with a signed
// token (a JWT) as a string, or a function returning one or a Promise of one, called on
// every socket (re)open. The token goes as the socket's first message, {"op": "auth"},
// before any subscribe (the subscribes wait for a Promise), never in the websocket's URL
// (URLs end up in logs). When the service says `token_expired` the function is called
// again and its token sent as `auth`; every stream also gets a `token` event ({ reason:
// 'expired' }, or 'refused' when the service closed the socket over its token, or
// 'unavailable' when the function failed), so a page with a string can answer with
// stream.authenticate(fresh). The service's answer to each token is an `auth` event
// ({ tier, entitled, expires, sub, delayS }) and `stream.auth`. Sockets are keyed by URL,
// mode and token source (the same string, or the same function): streams with different
// sources never share a socket. `stream.tier` ('realtime' or 'delayed') and `stream.delayS`
// (seconds every quote is behind; 0 in real time) come from the welcome, or with a token
// from its auth ack; a delayed quote also carries `delayed: true`.
//
// Without websockets: after SSE_AFTER_FAILURES websocket attempts in a row that never
// opened (a proxy or filter that blocks the upgrade), the socket falls back to the
// service's Server-Sent Events (sse-socket.js), where there is an EventSource (browsers;
// in Node, connect(url, { EventSource })). The same frames, the same reconnects and
// `since`; when that stream drops, the next attempt tries the websocket again.
// `connections()` says which is in use (`transport`). An EventSource cannot send a message,
// so there the token goes as `?token=` on the /sse URL (the one place it is in a URL).
//
// The compact encoding (PROTOCOL.md, "Compact encoding"): every socket asks for
// `?encoding=compact` unless connect(url, { encoding: 'json' }); a quote that moved then
// comes as what changed, and compact.js rebuilds the full quote protocol 1 would have
// sent, so streams see the same quotes either way. A welcome without `encoding` (an older
// service) means protocol 1, read as always. `stream.encoding` says what is in force.

import { CompactDecoder, CompactError, checkEncoding } from './compact.js';
import { SseSocket } from './sse-socket.js';

export const SSE_AFTER_FAILURES = 3;

export const SYMBOL_RE = /^[A-Z0-9.\-]{1,16}$/;

/** A valid symbol: 1 to 16 characters of A-Z 0-9 . - (as the protocol allows). */
export function isSymbol(value) {
  return typeof value === 'string' && SYMBOL_RE.test(value);
}

export const RECONNECT = Object.freeze({
  baseMs: 500, capMs: 15000, // ordinary drops: 1001, 1006, 1011, 4008, ...
  // "You, slow down": policy or a connection cap (1008), a flood (4029), and "try again
  // later" (1013: the service's connection cap or its per-address connect rate, when a
  // crowd behind one address comes back at once). Retrying at once would be refused again.
  // The same codes as the Python client's SLOW_DOWN_CODES (a test holds them equal).
  slowBaseMs: 5000, slowCapMs: 60000,
  healthyAfterMs: 10000, // a socket that lived this long resets the backoff
  // A socket not open this long is given up and retried: a path that drops packets
  // (a dead link whose route is still up) holds a handshake for the kernel's SYN retries,
  // about two minutes. The Python client's open_timeout, 10 s, the same.
  openTimeoutMs: 10000,
});
export const SLOW_DOWN_CODES = Object.freeze([1008, 1013, 4029]);
const SLOW_CODES = new Set(SLOW_DOWN_CODES);

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

/** The URL a socket opens: `url` with `?encoding=` (beside any query of the caller's). */
function encodedUrl(url, encoding) {
  const u = new URL(url);
  u.searchParams.set('encoding', encoding);
  return u.href;
}

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

/** A `token` option: null/undefined (none), a non-empty string, or a function. */
function checkToken(value) {
  if (value === undefined || value === null) return null;
  if (typeof value === 'function' || (typeof value === 'string' && value !== '')) return value;
  throw new TypeError('token must be a non-empty string, or a function returning one (or a Promise of one)');
}

// Token sources get a number each, for the socket's key (never the token in it).
const tokenIds = new Map();
const fnTokenIds = new WeakMap();
let lastTokenId = 0;
function tokenKey(token) {
  const ids = typeof token === 'function' ? fnTokenIds : tokenIds;
  if (!ids.has(token)) ids.set(token, (lastTokenId += 1));
  return ids.get(token);
}

/** A close that refused the token (or its absence): 1008 with a reason about a token, or
 * "authentication required". Other 1008s (too many connections) only slow us down. */
export function isTokenRefusal(code, reason) {
  const text = String(reason || '').trim().toLowerCase();
  return code === 1008 && (text.includes('token') || text.startsWith('authentication'));
}

const registry = new Map(); // url (+ ' every', + ' token#N') -> Connection
const EVENTS = ['quote', 'quotes', 'status', 'error', 'recovery', 'auth', 'token'];

/**
 * A stream of quotes from the service at `url`. Streams to the same URL share one socket.
 * `options.WebSocket`: the WebSocket class to use where there is no global one (Node 20:
 * the `ws` package); used when this call opens the URL's socket. `options.maxHz`: at most
 * this many `quotes` frames a second for this stream (see above; default: the service's).
 * `options.mode`: 'every' for every update (see above), with `options.since` (symbol ->
 * last seq processed) where to resume; `maxHz` cannot go with it (RangeError).
 * `options.token`: a token string, or a function returning one or a Promise of one (see
 * above); streams share a socket only with the same URL, mode and token source.
 * `options.encoding`: 'compact' (the default) or 'json' (protocol 1 on the wire); the
 * quotes a stream sees are the same, so only streams asking for 'json' get a socket apart.
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
  const token = checkToken(options.token);
  const encoding = checkEncoding(options.encoding);
  const key = (mode === 'every' ? `${href} every` : href) + (token === null ? '' : ` token#${tokenKey(token)}`)
    + (encoding === 'json' ? ' json' : '');
  let conn = registry.get(key);
  if (!conn) {
    const WebSocketImpl = options.WebSocket || globalThis.WebSocket;
    if (typeof WebSocketImpl !== 'function') {
      throw new TypeError('no WebSocket here: pass connect(url, { WebSocket }) '
        + "(in Node 20, e.g. `import WebSocket from 'ws'`)");
    }
    conn = new Connection(href, WebSocketImpl, mode, key,
      options.EventSource || globalThis.EventSource || null, token, encoding);
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
    token: c.tokenSource !== null,
    tier: c.tier,
    delayS: c.delayS,
    encoding: c.encoding,
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

  /** 'realtime' or 'delayed', as the service said (null before it said anything). */
  get tier() {
    return this.conn.tier;
  }

  /** Seconds every quote is behind real time: 0 in real time (null before it is known). */
  get delayS() {
    return this.conn.delayS;
  }

  /** The encoding in force on the socket, as its welcome said: 'compact', or 'json' for
   * protocol 1 (also an older service's welcome that says none); null before a welcome. */
  get encoding() {
    return this.conn.encoding;
  }

  /** The service's latest answer to the token: { tier, entitled, expires, sub, delayS }. */
  get auth() {
    return this.conn.auth;
  }

  /** Send `auth` now: with `token` (which replaces a string source from then on, or goes
   * once before a function's next one), or with a fresh one from the token function. */
  authenticate(token) {
    this.ensureOpen();
    if (token !== undefined && token !== null && (typeof token !== 'string' || token === '')) {
      throw new TypeError('token must be a non-empty string');
    }
    this.conn.reauthenticate(token ?? null);
    return this;
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
  constructor(url, WebSocketImpl, mode = 'conflated', key = url, EventSourceImpl = null, token = null,
    encoding = 'compact') {
    this.url = url;
    this.asked = encoding; // the encoding every socket asks for
    this.encoding = null; // the one its welcome says is in force (null before one)
    this.decoder = null; // compact: this socket's index table (a new one per socket)
    this.tokenSource = token; // null, a string, or a function (see above)
    this.tokenOnce = null; // a token given to authenticate() for the next open
    this.authSent = true; // this socket's auth is out (or it needs none): subscribes may go
    this.auth = null; // the latest auth ack, as { tier, entitled, expires, sub, delayS }
    this.tier = null;
    this.delayS = null;
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
    if (!this.authSent) return; // the token first: sync runs again once it is out
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
      ws = this.transport === 'sse' ? new SseSocket(this.url, this.EventSource, this.asked)
        : new this.WebSocket(encodedUrl(this.url, this.asked));
    } catch (err) {
      console.warn('[quote-stream] cannot open', this.url, err);
      this.scheduleReconnect(1006);
      return;
    }
    this.ws = ws;
    this.encoding = null;
    this.decoder = null; // indices are learnt anew on every connection
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
    this.authSent = this.tokenSource === null;
    this.armWatchdog(RECONNECT.openTimeoutMs, 'open timeout');
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.openedAt = Date.now();
      this.armWatchdog();
      if (this.tokenSource !== null) {
        const once = this.tokenOnce;
        this.tokenOnce = null;
        this.sendToken(ws, once);
      }
      this.sync();
    };
    ws.onmessage = (ev) => {
      if (ws === this.ws) this.onMessage(ev.data);
    };
    ws.onclose = (ev) => {
      if (ws === this.ws) this.onClose(ev.code, ev.reason);
    };
    ws.onerror = () => {}; // a close event follows
  }

  /** The token (`given`, or the source's: the string, or the function's answer, awaited)
   * as `auth` on `ws`; the socket's first auth lets the subscribes go. */
  sendToken(ws, given = null) {
    let value;
    try {
      value = given ?? (typeof this.tokenSource === 'function' ? this.tokenSource() : this.tokenSource);
    } catch (err) {
      this.noToken(ws, err);
      return;
    }
    const send = (token) => {
      if (ws !== this.ws) return; // that socket is gone; the next open asks again
      if (typeof token !== 'string' || token === '') {
        this.noToken(ws, new TypeError(`the token function gave ${token === '' ? 'an empty string' : typeof token}, not a token`));
        return;
      }
      ws.send(JSON.stringify({ op: 'auth', id: this.nextId++, token }));
      if (!this.authSent) {
        this.authSent = true;
        this.sync();
      }
    };
    if (value && typeof value.then === 'function') value.then(send, (err) => this.noToken(ws, err));
    else send(value);
  }

  /** The token function failed: say so, and drop this socket (back off as after 1008). */
  noToken(ws, err) {
    if (ws !== this.ws) return;
    const message = `no token: ${err && err.message ? err.message : String(err)}`;
    if (!this.emitToken({ reason: 'unavailable', message })) console.warn('[quote-stream]', message);
    if (this.authSent) return; // a refresh failed: the service's grace decides
    this.ws = null;
    try {
      ws.close(1000, 'no token');
    } catch (_) { /* already closing */ }
    this.onClose(1008);
  }

  /** A `token` event to every stream; false when none listens. */
  emitToken(request) {
    const heard = [...this.consumers].filter((c) => c.listening('token'));
    for (const c of heard) c.emit('token', { ...request });
    return heard.length > 0;
  }

  /** stream.authenticate(): a given token replaces a string source (or goes once); sent
   * now on an open socket, else with the next open. */
  reauthenticate(token) {
    if (this.tokenSource === null) {
      throw new Error('this stream was connected without a token: connect(url, { token })');
    }
    if (token !== null && typeof this.tokenSource !== 'function') this.tokenSource = token;
    const ws = this.ws;
    if (ws && ws.readyState === 1) this.sendToken(ws, token);
    else if (token !== null) this.tokenOnce = token;
  }

  takeAuth(msg) {
    const tier = msg.tier === 'delayed' ? 'delayed' : 'realtime';
    const delay = typeof msg.delay_s === 'number' ? msg.delay_s : null;
    this.tier = tier;
    this.delayS = tier === 'delayed' ? (delay ?? this.delayS) : 0;
    this.auth = {
      tier,
      entitled: msg.entitled === '*' ? '*' : (Array.isArray(msg.entitled) ? [...msg.entitled] : []),
      expires: typeof msg.expires === 'number' ? msg.expires : null,
      sub: typeof msg.sub === 'string' ? msg.sub : null,
      delayS: this.delayS,
    };
    for (const c of [...this.consumers]) c.emit('auth', { ...this.auth });
  }

  /** The server speaks at least every heartbeat_s; silence past twice that (plus slack)
   * means a dead path that TCP has not reported yet. Before the socket opens: `ms`. */
  armWatchdog(ms = Math.max(4000, (this.heartbeatS * 2 + 3) * 1000), reason = 'heartbeat timeout') {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => {
      const ws = this.ws;
      if (!ws) return;
      this.ws = null;
      try {
        ws.close(4000, reason);
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
    if (Array.isArray(msg)) {
      // A compact `quotes` frame (protocol 1 sends only objects).
      if (this.decoder !== null) this.onQuotes(this.decode(msg, true));
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'welcome':
        // What is in force from here: a welcome without `encoding` is an older service's,
        // which ignored the parameter and speaks protocol 1.
        this.encoding = msg.encoding === 'compact' ? 'compact' : 'json';
        this.decoder = this.encoding === 'compact' ? new CompactDecoder() : null;
        if (Number(msg.heartbeat_s) > 0) this.heartbeatS = Number(msg.heartbeat_s);
        if (msg.limits && Number(msg.limits.max_frame_bytes) > 256) {
          this.maxFrameBytes = Number(msg.limits.max_frame_bytes);
        }
        // The tier, unless an auth ack will say it (on SSE the token is in the URL, so the
        // welcome is already the token's).
        if (this.tokenSource === null || this.transport === 'sse') {
          this.tier = msg.tier === 'delayed' ? 'delayed' : 'realtime';
          this.delayS = this.tier === 'delayed'
            ? (typeof msg.delay_s === 'number' ? msg.delay_s : this.delayS) : 0;
        }
        this.armWatchdog();
        // Live once the first subscription is answered; this is the fallback.
        clearTimeout(this.liveTimer);
        this.liveTimer = setTimeout(() => this.goLive(), 2000);
        break;
      case 'ack':
        if (msg.op === 'auth') {
          this.takeAuth(msg);
          break;
        }
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
      case 'snapshot': {
        const quotes = this.decode(msg.quotes);
        if (quotes === null) break;
        this.pendingSnapshot = false;
        this.apply(quotes, true);
        this.goLive();
        break;
      }
      case 'quotes':
        this.onQuotes(this.decode(msg.quotes));
        break;
      case 'status':
        this.serverFeed = msg.feed === 'stale' ? 'stale' : 'live';
        if (this.serverFeed === 'stale' || this.everUp) this.goLive();
        break;
      case 'error': {
        if (msg.code === 'token_expired') {
          // Answer within the service's grace: the function's fresh token, or the page's.
          const heard = this.emitToken({ reason: 'expired', message: String(msg.message || '') });
          if (typeof this.tokenSource === 'function') this.sendToken(this.ws);
          else if (!heard) {
            console.warn('[quote-stream] the token expired and a string cannot be refreshed: '
              + "connect(url, { token: () => ... }), or stream.authenticate(fresh) on the 'token' event");
          }
          break;
        }
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

  onQuotes(quotes) {
    if (quotes === null) return; // the socket was dropped
    this.apply(quotes, false);
    if (this.feed === 'connecting' || this.feed === 'reconnecting') this.goLive();
  }

  /** The full quotes of a frame: a compact array (`frame`), or a `quotes` list whose
   * quotes may carry their index; as they are in protocol 1. Null after a frame the
   * decoder refused: the socket is dropped and reopened. */
  decode(payload, frame = false) {
    if (this.decoder === null) return payload;
    try {
      return frame ? this.decoder.frame(payload) : this.decoder.quotes(payload);
    } catch (err) {
      if (!(err instanceof CompactError)) throw err;
      this.protocolError(err.message);
      return null;
    }
  }

  /** A frame no correct service sends (e.g. a delta for an index never learnt): what this
   * socket holds cannot be trusted, so reconnect (a new socket learns its indices anew). */
  protocolError(message) {
    console.warn('[quote-stream] protocol error, reconnecting:', message);
    const ws = this.ws;
    this.ws = null;
    try {
      ws.close(4000, 'protocol error');
    } catch (_) { /* already closing */ }
    this.onClose(1006);
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

  onClose(code, reason = '') {
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
    if (isTokenRefusal(code, reason)) {
      // Back off as after any 1008 (slowly); the next open asks the source again.
      const message = String(reason);
      if (!this.emitToken({ reason: 'refused', message })) {
        console.warn('[quote-stream] the service refused the token:', message);
      }
    }
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
