// The <quote-ticker> element: a live market ticker in a shadow root, drawn from the
// stream client (../js/stream.js) in the seed's text form (../js/format.js).
//
// Imported by /widget.js, the one-tag entry point. Importing this module defines the
// element (unless a `quote-ticker` is already defined); nothing else happens until an
// element is connected to a document. All feed data goes in as text.

import { formatQuote } from '../js/format.js';
import { MAX_HZ, MIN_HZ, connect, isNewer, isSymbol } from '../js/stream.js';
import { CSS, styleFor } from './styles.js';

// The widget's default socket is ./ws next to /widget.js, wherever that was loaded from:
// from the versioned tree (/v/<12 hex>/widget.js, service/assets.py), the folder above it,
// so also under a proxy's path prefix (https://host/prefix/v/<hash>/ -> /prefix/ws).
const WIDGET_URL = new URL('../widget.js', import.meta.url).href
  .replace(/\/v\/[0-9a-f]{12}\/widget\.js$/, '/widget.js');

/** The `symbols` attribute: '*' (absent, empty or "*") or a list of valid, unique symbols. */
export function parseSymbols(value) {
  if (value === null || value === undefined) return '*';
  const raw = String(value).trim();
  if (raw === '' || raw === '*') return '*';
  const out = [];
  for (const part of raw.split(/[\s,]+/)) {
    const s = part.toUpperCase();
    if (!s) continue;
    if (!isSymbol(s)) {
      console.warn('[quote-ticker] ignoring invalid symbol', JSON.stringify(part.slice(0, 20)));
      continue;
    }
    if (!out.includes(s)) out.push(s);
  }
  return out;
}

/** A person reads a few changes a second: the widget asks for 4 quotes frames a second
 * unless its `max-hz` attribute says otherwise (0.5 to 50; anything else: the default). */
export const DEFAULT_MAX_HZ = 4;

export function parseMaxHz(value) {
  if (value === null || value === undefined || String(value).trim() === '') return DEFAULT_MAX_HZ;
  const hz = Number(value);
  return Number.isFinite(hz) && hz >= MIN_HZ && hz <= MAX_HZ ? hz : DEFAULT_MAX_HZ;
}

/** The websocket URL for a `src` attribute; the default is ./ws next to widget.js. */
export function resolveSocketUrl(src, base = WIDGET_URL) {
  const url = new URL(src || './ws', src ? (globalThis.document ? document.baseURI : base) : base);
  if (url.protocol === 'http:') url.protocol = 'ws:';
  else if (url.protocol === 'https:') url.protocol = 'wss:';
  url.hash = '';
  return url.href;
}

function wants(consumer, symbol) {
  return consumer.wants === '*' || consumer.wants.includes(symbol);
}

const FEED_TEXT = {
  connecting: 'Connecting\u2026',
  live: 'Live',
  stale: 'Feed stale',
  reconnecting: 'Reconnecting\u2026',
};
// Tokens: ask the page for a fresh one this long before the current one expires (at most
// half its remaining life), and wait this long for an answer when one is needed now.
const TOKEN_LEAD_MS = 60000;
const TOKEN_WAIT_MS = 20000;

/** The label of the delayed tier: "Delayed 15 min", "Delayed 30 s" ("Delayed" when the
 * delay is not known). */
export function delayText(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds <= 0) return 'Delayed';
  return seconds < 60 ? `Delayed ${Math.round(seconds)} s` : `Delayed ${Math.round(seconds / 60)} min`;
}

/** A JWT's `exp` in ms (null when it is not a JWT we can read: the service decides then). */
function tokenExpiry(token) {
  try {
    const part = String(token).split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4))).exp;
    return typeof exp === 'number' ? exp * 1000 : null;
  } catch (_) {
    return null;
  }
}

const FLASH_MIN_GAP_MS = 400; // at most 2.5 flashes a second per item (WCAG 2.3.1: < 3)
const FLASH_MS = 700; // how long a changed item stays highlighted
// formatQuote()'s numbers whose room only grows (fill()), and their spans' classes.
const WIDE_PARTS = ['price', 'change', 'pct'];
const WIDE_NODE = { price: 'px', change: 'chg', pct: 'pct' };
const RETIME_MS = 10000; // the strip's loop follows small width changes this often at most
const HISTORY_MAX = 240; // sparkline points kept per symbol (thinned past twice that)
const SVG_NS = 'http://www.w3.org/2000/svg';

/** At most `n` (>= 4) of `points` ([ts, price], oldest first): the first, the last, and
 * the lowest and highest of each bucket between them, in order, so thinning never loses
 * the high or the low (the service's /history reduces the same way: service/history.py). */
export function thinPoints(points, n) {
  if (points.length <= n) return points;
  const out = [points[0]];
  const inner = points.length - 2;
  const buckets = Math.min(Math.floor((n - 2) / 2), inner);
  for (let k = 0; k < buckets; k += 1) {
    const lo = 1 + Math.floor((k * inner) / buckets);
    const hi = 1 + Math.floor(((k + 1) * inner) / buckets);
    let low = lo;
    let high = lo;
    for (let i = lo + 1; i < hi; i += 1) {
      if (points[i][1] < points[low][1]) low = i;
      if (points[i][1] > points[high][1]) high = i;
    }
    if (low === high) out.push(points[low]);
    else if (low < high) out.push(points[low], points[high]);
    else out.push(points[high], points[low]);
  }
  out.push(points[points.length - 1]);
  return out;
}

/** An item's text parts (what fill() builds, and the server renders alike). */
function partsOf(item) {
  const q = (selector) => item.querySelector(selector);
  return {
    sym: q('.sym'), px: q('.px'), vh: q('.vh'), br: q('.br'), arw: q('.arw, .tri'),
    chg: q('.chg'), pct: q('.pct'),
  };
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
    return ['symbols', 'src', 'layout', 'controls', 'paused', 'label', 'motion', 'max-hz', 'token'];
  }

  constructor() {
    super();
    // A declarative shadow root the server rendered is taken over (adopt()), not replaced.
    this.root = this.shadowRoot || this.attachShadow({ mode: 'open' });
    this.wants = '*'; // '*' or the array of symbols of the `symbols` attribute
    this.quotes = new Map(); // latest state, tracked even while paused
    this.history = new Map(); // symbol -> [[ts, price], ...]: setHistory()'s, then received
    this.rows = new Map(); // symbol -> {row, item, parts, spark}
    this.dirty = new Set();
    this.flashedAt = new Map();
    this.lit = new Set(); // symbols highlighted until FLASH_MS after their flashedAt
    this.unlightTimer = 0;
    this.feed = 'connecting';
    this.stream = null; // from connect(): shared with every element of the same src
    this.frame = 0;
    this.waiters = [];
    this.pendingFlash = new Map();
    this.pausedShown = false;
    // The strip's scroll (updateMotion): the belt's animation, the sizes the
    // ResizeObserver last gave (never read from layout on an update), and whether the
    // pointer or the keyboard focus holds it still.
    this.scroll = null;
    this.sizes = { track: 0, view: 0 };
    this.held = { hover: false, focus: false };
    this.onMotion = () => this.updateMotion();
    // Tokens: the one set as a property (else the attribute's), the source handed to the
    // stream (one per element, so its socket is its own), the pages' answers awaited.
    this.tokenValue = null;
    this.tokenSource = () => this.supplyToken();
    this.tokenWaiters = [];
    this.tokenTimer = 0;
    this.tokenAsked = null; // the unanswered tokenrequest: { reason, at }
    this.quotesDelayed = false; // a quote came with `delayed: true`
    this.build();
  }

  // --- public API -------------------------------------------------------------------

  get paused() {
    return this.hasAttribute('paused');
  }

  /** The most quotes frames a second this element asks for (the `max-hz` attribute, 4
   * by default). Elements of one `src` share a socket, which runs at the highest rate. */
  get maxHz() {
    return parseMaxHz(this.getAttribute('max-hz'));
  }

  set maxHz(value) {
    this.setAttribute('max-hz', String(value));
  }

  set paused(value) {
    this.toggleAttribute('paused', Boolean(value));
  }

  /** The token the element authenticates with: set as a property (kept out of the DOM),
   * else the `token` attribute. A fresh one is sent on the open socket at once. */
  get token() {
    return this.tokenValue ?? this.getAttribute('token');
  }

  set token(value) {
    this.tokenValue = value === null || value === undefined || value === '' ? null : String(value);
    this.tokenChanged();
  }

  /** The delay of the quotes shown, in seconds (0: real time; null: delayed by an amount
   * the service did not say). */
  get delayS() {
    const s = this.stream;
    if (s && s.tier === 'delayed') return s.delayS;
    return this.quotesDelayed ? (s && s.delayS > 0 ? s.delayS : null) : 0;
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

  /** The day so far for the sparklines, e.g. the `history` of the service's
   * `GET /history`: `{SYMBOL: [[ts, price], ...]}`, oldest first. Quotes received after
   * its last point are kept after it; later quotes extend it. Resolves once drawn. */
  setHistory(history) {
    for (const [symbol, points] of Object.entries(history || {})) {
      if (!wants(this, symbol) || !Array.isArray(points)) continue;
      const day = [];
      for (const p of points) {
        const ts = Array.isArray(p) ? Number(p[0]) : NaN;
        const price = Array.isArray(p) ? Number(p[1]) : NaN;
        if (Number.isFinite(ts) && Number.isFinite(price)) day.push([ts, price]);
      }
      if (!day.length) continue;
      const last = day[day.length - 1][0];
      const live = (this.history.get(symbol) || []).filter((p) => p[0] > last);
      this.history.set(symbol, thinPoints([...day, ...live], HISTORY_MAX * 2));
      this.dirty.add(symbol);
    }
    this.schedule();
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
    this.attach(); // sets data-feed from the (possibly shared, already live) socket
    if (!this.stream) this.applyFeed('connecting');
    reducedMotion.addEventListener?.('change', this.onMotion);
    this.observeSize();
    this.renderAll();
  }

  disconnectedCallback() {
    this.detach();
    this.stopScroll();
    this.wrap.classList.remove('moving');
    reducedMotion.removeEventListener?.('change', this.onMotion);
    this.resizeObserver?.disconnect();
  }

  attributeChangedCallback(name, oldValue, value) {
    if (oldValue === value) return;
    switch (name) {
      case 'symbols': {
        this.wants = parseSymbols(value);
        for (const s of new Set([...this.quotes.keys(), ...this.rows.keys()])) {
          if (!wants(this, s)) {
            this.quotes.delete(s);
            this.history.delete(s);
            this.removeRow(s);
          }
        }
        this.reorder();
        this.stream?.setSymbols(this.wants); // resubscribe on the shared socket
        break;
      }
      case 'src':
        if (this.isConnected) {
          this.detach();
          this.quotes.clear();
          this.history.clear();
          this.quotesDelayed = false;
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
      case 'max-hz':
        this.stream?.setMaxHz(this.maxHz);
        break;
      case 'token':
        if (this.tokenValue === null) this.tokenChanged();
        break;
      default:
        break;
    }
  }

  // --- from the stream --------------------------------------------------------------

  /** Quotes the stream accepted (or ingest() let through): track them, draw them. */
  receive(quotes, snapshot) {
    if (!this.quotesDelayed && quotes.some((q) => q.delayed === true)) {
      this.quotesDelayed = true;
      this.showStatus();
    }
    for (const q of quotes) {
      const prev = this.quotes.get(q.symbol);
      this.quotes.set(q.symbol, q);
      const price = Number(q.price);
      if (Number.isFinite(price)) {
        let h = this.history.get(q.symbol);
        if (!h) this.history.set(q.symbol, (h = []));
        const ts = Number.isFinite(Number(q.ts)) ? Number(q.ts) : Date.now();
        const last = h[h.length - 1];
        // The same instant as the last point (the snapshot's quote is the last point of
        // /history), or a clock behind it: that point moves to the latest price.
        if (last && ts <= last[0]) last[1] = price;
        else h.push([ts, price]);
        if (h.length > HISTORY_MAX * 2) this.history.set(q.symbol, thinPoints(h, HISTORY_MAX));
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

  // --- internals --------------------------------------------------------------------

  label() {
    return this.getAttribute('label') || (this.layout() === 'panel' ? 'Market prices' : 'Market ticker');
  }

  layout() {
    return this.getAttribute('layout') === 'panel' ? 'panel' : 'strip';
  }

  build() {
    if (!this.adopt()) this.create();
    this.applyLayout();
    this.applyPaused();
  }

  /** Take over what the server rendered into a declarative shadow root (service/page.py
   * writes what create(), makeRow() and fill() make), so the items on screen stay and
   * are updated in place when the snapshot comes: no flash. False if there is none. */
  adopt() {
    const wrap = [...this.root.children].find((e) => e.matches('div.wrap'));
    const find = (selector) => wrap && wrap.querySelector(selector);
    const nodes = {
      controls: find('.controls'), statusText: find('.status'), pauseButton: find('button.pause'),
      pauseIcon: find('button.pause .icon'), viewport: find('.viewport'), belt: find('.belt'),
      list: find('ul.track'), empty: find('.empty'),
    };
    if (!wrap || Object.values(nodes).some((n) => !n)) {
      this.root.replaceChildren();
      return false;
    }
    Object.assign(this, nodes);
    this.wrap = wrap;
    // The server's <style> holds this very stylesheet: keeping it spares the browser
    // restyling the whole tree as the element takes over. Another one (a server of another
    // version) makes way for this module's.
    const styles = [...this.root.children].filter((e) => e.localName === 'style');
    if (styles.length !== 1 || styles[0].textContent !== CSS) {
      for (const e of styles) e.remove();
      styleFor(this.root);
    }
    this.rowsLayout = wrap.classList.contains('panel') ? 'panel' : 'strip';
    for (const row of [...this.list.children]) {
      const item = row.querySelector('.item[data-symbol]');
      const symbol = item && item.getAttribute('data-symbol');
      const parts = item && partsOf(item);
      if (!symbol || this.rows.has(symbol) || Object.values(parts).some((n) => !n)) {
        row.remove();
        continue;
      }
      const svg = row.querySelector('svg.spark');
      const spark = svg && { svg, base: svg.querySelector('.base'), line: svg.querySelector('.line') };
      const kind = parts.arw.classList.contains('tri') ? 'index' : 'stock';
      const wide = {};
      for (const k of WIDE_PARTS) wide[k] = Number((/\bw(\d+)\b/.exec(parts[WIDE_NODE[k]].className) || [])[1]) || 0;
      this.rows.set(symbol, {
        row, item, kind, parts, spark: spark && spark.line ? spark : null, twin: null, wide,
      });
    }
    this.makeEcho();
    if (this.rowsLayout === 'strip') for (const r of this.rows.values()) this.makeTwin(r);
    this.listenPause();
    this.listenHold();
    return true;
  }

  listenPause() {
    this.pauseButton.addEventListener('click', () => {
      this.paused = !this.paused;
    });
  }

  create() {
    styleFor(this.root);
    this.wrap = el('div', { class: 'wrap', part: 'container' });
    this.controls = el('div', { class: 'controls', part: 'controls' });
    const state = el('span', { class: 'state' });
    state.append(el('span', { class: 'dot', 'aria-hidden': 'true' }));
    // A status message (not the quotes): announced politely, and only when it changes.
    this.statusText = el('span', { class: 'status', role: 'status', part: 'status' }, FEED_TEXT.connecting);
    state.append(this.statusText);
    this.pauseButton = el('button', { type: 'button', class: 'pause', part: 'pause', 'aria-pressed': 'false' });
    this.pauseIcon = el('span', { class: 'icon', 'aria-hidden': 'true' }); // drawn by CSS
    this.pauseButton.append(this.pauseIcon, el('span', { class: 'label' }, 'Pause'));
    this.pauseButton.title = 'Pause live updates';
    this.listenPause();
    this.controls.append(state, this.pauseButton);
    // The quotes: a named region, deliberately NOT a live region (no announcement per tick).
    this.viewport = el('div', { class: 'viewport', part: 'viewport', role: 'region', tabindex: '0' });
    this.belt = el('div', { class: 'belt', part: 'belt' });
    this.list = el('ul', { class: 'track', part: 'list', role: 'list' });
    this.belt.append(this.list);
    this.empty = el('div', { class: 'empty', part: 'empty' }, 'Waiting for prices\u2026');
    this.viewport.append(this.belt, this.empty);
    this.wrap.append(this.controls, this.viewport);
    this.root.append(this.wrap);
    this.makeEcho();
    this.listenHold();
  }

  /** The strip's second copy of its rows, shown only while it scrolls: hidden from
   * assistive technology and out of the tab order, without data-symbol, so the quotes
   * are read (and found) once. */
  makeEcho() {
    this.echo = el('ul', { class: 'track echo', part: 'list', 'aria-hidden': 'true' });
    this.echo.inert = true;
    this.belt.append(this.echo);
  }

  /** Hover and keyboard focus hold the scroll where it is (WCAG 2.2.2), as Pause does. */
  listenHold() {
    const hold = (what, on) => {
      if (this.held[what] === on) return;
      this.held[what] = on;
      this.updateMotion();
    };
    this.viewport.addEventListener('pointerenter', () => hold('hover', true));
    this.viewport.addEventListener('pointerleave', () => hold('hover', false));
    this.viewport.addEventListener('focusin', () => hold('focus', this.viewport.matches(':focus-visible')));
    this.viewport.addEventListener('focusout', () => hold('focus', false));
  }

  applyLayout() {
    const layout = this.layout();
    this.wrap.classList.toggle('strip', layout === 'strip');
    this.wrap.classList.toggle('panel', layout === 'panel');
    this.viewport.setAttribute('aria-label', this.label());
    if (layout === this.rowsLayout) return; // e.g. the rows the server rendered
    this.rowsLayout = layout;
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
    // The delayed tier says so next to the status, always: "Live · Delayed 15 min".
    const delay = this.delayS;
    if (this.isConnected && delay !== 0) this.setAttribute('data-delayed', delay === null ? '' : String(delay));
    else if (this.isConnected) this.removeAttribute('data-delayed');
    const text = (FEED_TEXT[this.feed] || this.feed) + (delay !== 0 ? ` \u00B7 ${delayText(delay)}` : '')
      + (this.paused ? ' \u00B7 paused' : '');
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
    if (this.stream) return;
    let stream;
    const options = { maxHz: this.maxHz };
    if (this.token) options.token = this.tokenSource;
    try {
      stream = connect(resolveSocketUrl(this.getAttribute('src')), options);
    } catch (err) {
      console.warn('[quote-ticker] bad src', this.getAttribute('src'), err);
      return;
    }
    this.stream = stream;
    this.streamHasToken = Boolean(options.token);
    stream.on('status', (feed) => this.applyFeed(feed));
    stream.on('auth', (info) => this.onAuth(info));
    stream.on('token', (request) => {
      // Refused (the socket closed): ask the page now, so the next open has a fresh one.
      if (request.reason === 'refused') this.requestToken('refused');
    });
    stream.on('quotes', (quotes, { snapshot }) => {
      // The stream's board starts empty, so it hands over what the shared socket holds;
      // skip what this element already shows (e.g. when it is moved in the document).
      const fresh = quotes.filter((q) => isNewer(q, this.quotes.get(q.symbol), true));
      if (fresh.length) this.receive(fresh, snapshot);
    });
    this.applyFeed(stream.feed);
    stream.setSymbols(this.wants); // the socket's holdings arrive at once, as a snapshot
  }

  detach() {
    clearTimeout(this.tokenTimer);
    for (const w of this.tokenWaiters.splice(0)) w.reject(new Error('the element left the document'));
    if (!this.stream) return;
    this.stream.close();
    this.stream = null;
  }

  // --- tokens -----------------------------------------------------------------------

  /** The stream's token source, on every socket open and on `token_expired`: the token
   * held, unless it is known to have expired; then the page is asked (`tokenrequest`). */
  supplyToken() {
    const token = this.token;
    const expires = token ? tokenExpiry(token) : null;
    if (token && (expires === null || expires > Date.now() + 1000)) return token;
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: 0 };
      waiter.timer = setTimeout(() => {
        this.tokenWaiters = this.tokenWaiters.filter((w) => w !== waiter);
        reject(new Error('no fresh token came: answer the tokenrequest event'));
      }, TOKEN_WAIT_MS);
      this.tokenWaiters.push(waiter);
      this.requestToken('expired');
    });
  }

  /** Ask the page for a token: a `tokenrequest` event (bubbling, composed) whose
   * `detail.respond(token)` (or setting `element.token`) supplies it. One every few
   * seconds at most while unanswered. */
  requestToken(reason) {
    const asked = this.tokenAsked;
    if (asked && asked.reason === reason && Date.now() - asked.at < 5000) return;
    this.tokenAsked = { reason, at: Date.now() };
    let answered = false;
    const respond = (token) => {
      if (answered || typeof token !== 'string' || token === '') return false;
      answered = true;
      this.token = token;
      return true;
    };
    const expires = this.stream?.auth?.expires ?? tokenExpiry(this.token);
    this.dispatchEvent(new CustomEvent('tokenrequest', {
      detail: { reason, expires, respond }, bubbles: true, composed: true,
    }));
  }

  /** A new token (attribute or property): start or stop authenticating, or send it. */
  tokenChanged() {
    this.tokenAsked = null;
    if (!this.stream) return; // attach() takes it
    const token = this.token;
    if (Boolean(token) !== this.streamHasToken) {
      // With a token the element has a socket of its own; without, the shared one.
      this.detach();
      this.attach();
      return;
    }
    if (!token) return;
    const waiters = this.tokenWaiters.splice(0);
    for (const w of waiters) {
      clearTimeout(w.timer);
      w.resolve(token); // the stream is waiting for it: it sends it as `auth`
    }
    if (!waiters.length) this.stream.authenticate(); // asks supplyToken(): this token
  }

  /** The service's answer to a token: ask for the next one before this one expires. */
  onAuth(info) {
    clearTimeout(this.tokenTimer);
    this.showStatus();
    if (typeof info.expires !== 'number') return;
    const left = info.expires - Date.now();
    const lead = Math.min(TOKEN_LEAD_MS, left / 2);
    this.tokenTimer = setTimeout(() => this.requestToken('expiring'), Math.max(0, left - lead));
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
    this.unlight(now);
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
          this.light(r, symbol, tick);
        }
      }
    }
    this.dirty.clear();
    this.pendingFlash.clear();
    if (added) this.reorder();
    this.empty.hidden = this.rows.size > 0;
    this.countRows();
    // No updateMotion() here: a new width reaches it through the ResizeObserver, so an
    // update never makes the browser lay the page out on the spot.
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
    keys.forEach((s, i) => {
      const r = this.rows.get(s);
      if (this.list.children[i] !== r.row) this.list.insertBefore(r.row, this.list.children[i] || null);
      if (r.twin && this.echo.children[i] !== r.twin.row) {
        this.echo.insertBefore(r.twin.row, this.echo.children[i] || null);
      }
    });
  }

  /** Highlight a changed item (and its twin) for FLASH_MS. A class set here and taken
   * off by a later render, not an animation: each animation the browser starts costs the
   * page's main thread several frames of bookkeeping, and with a few quotes every quarter
   * second that kept it 30 frames a second busy. */
  light(r, symbol, tick) {
    for (const copy of r.twin ? [r, r.twin] : [r]) {
      copy.item.classList.toggle('flash-up', tick === 'up');
      copy.item.classList.toggle('flash-down', tick === 'down');
    }
    this.lit.add(symbol);
    this.armUnlight();
  }

  /** Take the highlight off the items lit FLASH_MS ago or more. */
  unlight(now) {
    for (const symbol of this.lit) {
      if (now - (this.flashedAt.get(symbol) ?? -Infinity) < FLASH_MS) continue;
      this.lit.delete(symbol);
      const r = this.rows.get(symbol);
      for (const copy of r ? (r.twin ? [r, r.twin] : [r]) : []) {
        copy.item.classList.remove('flash-up', 'flash-down');
      }
    }
    this.armUnlight();
  }

  /** While items are lit, a timer makes sure they go dark even when no render comes:
   * renders (a few a second while prices move) usually do it first. */
  armUnlight() {
    if (this.unlightTimer || !this.lit.size) return;
    this.unlightTimer = setTimeout(() => {
      this.unlightTimer = 0;
      const run = () => this.unlight(performance.now());
      if (globalThis.requestAnimationFrame) requestAnimationFrame(run);
      else run();
    }, FLASH_MS);
  }

  countRows() {
    const count = String(this.rows.size);
    if (this.isConnected && this.getAttribute('data-count') !== count) this.setAttribute('data-count', count);
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

  /** The row's copy in the strip's echo (a clone of the filled row), then filled as the
   * row is (fill()). */
  makeTwin(r) {
    const row = r.row.cloneNode(true);
    const item = row.querySelector('.item');
    item.removeAttribute('data-symbol');
    r.twin = { row, item, kind: r.kind, parts: r.parts && partsOf(item) };
    this.echo.append(row);
  }

  removeRow(symbol) {
    const r = this.rows.get(symbol);
    if (!r) return;
    r.row.remove();
    r.twin?.row.remove();
    this.rows.delete(symbol);
    this.flashedAt.delete(symbol);
    this.lit.delete(symbol);
    this.empty.hidden = this.rows.size > 0;
    this.countRows();
  }

  /** Show quote q in row r (and in its twin in the strip's echo). */
  fill(r, q) {
    const p = formatQuote(q);
    // The numbers' widths only ever grow (in characters, `w<n>` classes, as the server
    // renders them): a price of fewer digits leaves its room, so the items after it do not
    // move (no layout shift), and the echo stays exactly as wide as the row.
    r.wide ||= {};
    for (const k of WIDE_PARTS) r.wide[k] = Math.max(r.wide[k] || 0, p[k].length);
    this.fillItem(r, p, r.wide);
    if (r.twin) this.fillItem(r.twin, p, r.wide);
    else if (this.layout() === 'strip') this.makeTwin(r);
    if (r.spark) this.drawSpark(r.spark, q);
  }

  /** Build (once per kind) and update an item's text nodes, touching only what changed.
   * Data only ever goes in through textContent: a symbol like `<img src=x>` shows as
   * those characters. */
  fillItem(copy, p, wide) {
    const { item } = copy;
    if (copy.kind !== p.kind) {
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
      copy.parts = parts;
      copy.kind = p.kind;
    }
    const { parts } = copy;
    const set = (node, text) => {
      if (node.textContent !== text) node.textContent = text;
    };
    set(parts.sym, p.symbol);
    for (const k of WIDE_PARTS) {
      const node = parts[WIDE_NODE[k]];
      const cls = `${WIDE_NODE[k]} w${wide[k]}`;
      if (node.className !== cls) node.className = cls;
    }
    set(parts.px, p.price);
    set(parts.vh, ` ${p.words} `);
    if (p.kind !== 'index') set(parts.arw, p.arrow);
    set(parts.chg, p.change);
    set(parts.pct, p.pct);
    for (const d of ['up', 'down', 'flat']) {
      item.classList.toggle(d, d === p.direction);
      copy.row.classList.toggle(d, d === p.direction);
    }
  }

  /** The day's path, by time (by order where every point has the same ts). */
  drawSpark(spark, q) {
    const h = this.history.get(q.symbol) || [];
    const prev = Number(q.prev_close);
    let lo = Infinity;
    let hi = -Infinity;
    for (const p of h) {
      if (p[1] < lo) lo = p[1];
      if (p[1] > hi) hi = p[1];
    }
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
    const t0 = pts.length ? pts[0][0] : 0;
    const span = pts.length ? pts[pts.length - 1][0] - t0 : 0;
    const step = 100 / Math.max(1, pts.length - 1);
    const x = span > 0 ? (p) => ((p[0] - t0) / span) * 100 : (p, i) => i * step;
    spark.line.setAttribute('points', pts.map((p, i) => `${x(p, i).toFixed(2)},${y(p[1]).toFixed(2)}`).join(' '));
    if (Number.isFinite(prev)) {
      const yb = y(prev).toFixed(2);
      spark.base.setAttribute('y1', yb);
      spark.base.setAttribute('y2', yb);
    }
  }

  /** The strip's sizes come from a ResizeObserver, after layout, so finding out whether
   * it overflows never forces one. */
  observeSize() {
    if (!globalThis.ResizeObserver) return;
    if (!this.resizeObserver) {
      this.resizeObserver = new ResizeObserver((entries) => {
        for (const entry of entries) {
          const box = entry.borderBoxSize && entry.borderBoxSize[0];
          const width = box ? box.inlineSize : entry.contentRect.width;
          if (entry.target === this.list) this.sizes.track = width;
          else if (entry.target === this.viewport) this.sizes.view = width;
        }
        this.updateMotion();
      });
    }
    this.resizeObserver.observe(this.viewport);
    this.resizeObserver.observe(this.list);
  }

  /** The strip scrolls like a news ticker: one way, at --qt-speed px/s (40 by default),
   * its rows followed by their echo so the loop is seamless, when they overflow its box
   * and the reader has neither paused it, nor asked for reduced motion (or motion="off").
   * Otherwise it is a still row, from the left edge, that the reader can scroll. */
  updateMotion() {
    if (!this.isConnected) return;
    const { track, view } = this.sizes;
    const moving = this.layout() === 'strip' && track > view + 1 && !this.paused
      && !reducedMotion.matches && this.getAttribute('motion') !== 'off';
    const wasMoving = this.wrap.classList.contains('moving');
    if (moving) {
      const speed = parseFloat(getComputedStyle(this).getPropertyValue('--qt-speed')) || 40;
      if (!wasMoving) {
        // Go on from where the reader left the still row (0 on a fresh strip).
        const from = this.viewport.scrollLeft;
        this.viewport.scrollLeft = 0;
        this.wrap.classList.remove('still');
        this.wrap.classList.add('moving');
        this.runScroll(track, speed, from);
      } else {
        this.runScroll(track, speed, null);
      }
      const hold = this.held.hover || this.held.focus;
      if (hold && this.scroll.playState === 'running') this.scroll.pause();
      else if (!hold && this.scroll.playState === 'paused') this.scroll.play();
      return;
    }
    if (wasMoving) {
      // Stop where it is, and let the row be scrolled from there.
      const at = this.scrollOffset();
      this.stopScroll();
      this.wrap.classList.remove('moving');
      this.wrap.classList.add('still');
      this.viewport.scrollLeft = at;
    } else {
      this.wrap.classList.add('still');
    }
  }

  /** Run (or re-time) the belt's loop over `period` px at `speed` px/s, keeping its place
   * on screen (or starting `from` px in): a new width never makes it jump. */
  runScroll(period, speed, from, now = false) {
    const s = this.scroll;
    if (s && s.period === period && s.speed === speed) return;
    if (s && !now && from === null && s.speed === speed && Math.abs(period - s.period) < s.period * 0.1) {
      // A price or a percentage of another width: the loop is a few px off, which only its
      // wrap (minutes away) could show. Re-timing restarts the compositor's animation,
      // which costs the main thread a few frames, so do it at most every RETIME_MS.
      this.retime ||= setTimeout(() => {
        this.retime = 0;
        if (this.scroll) this.runScroll(this.sizes.track, this.scroll.speed, null, true);
      }, RETIME_MS);
      return;
    }
    const at = from ?? (s ? this.scrollOffset() : 0);
    const frames = [{ transform: 'translateX(0)' }, { transform: `translateX(${-period}px)` }];
    const duration = (period / speed) * 1000;
    if (s) {
      s.effect.setKeyframes(frames);
      s.effect.updateTiming({ duration });
    } else {
      this.scroll = this.belt.animate(frames, { duration, iterations: Infinity, easing: 'linear' });
    }
    this.scroll.period = period;
    this.scroll.speed = speed;
    this.scroll.currentTime = ((at % period) / speed) * 1000;
  }

  stopScroll() {
    clearTimeout(this.retime);
    this.retime = 0;
    this.scroll?.cancel();
    this.scroll = null;
  }

  /** How far the loop has carried the belt, in px (0 when it is not scrolling). */
  scrollOffset() {
    const s = this.scroll;
    if (!s || s.currentTime === null) return 0;
    return ((Number(s.currentTime) / 1000) * s.speed) % s.period;
  }
}

if (globalThis.customElements && !customElements.get('quote-ticker')) {
  customElements.define('quote-ticker', QuoteTicker);
}
