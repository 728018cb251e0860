// The service's Server-Sent Events endpoint (GET /sse, docs/PROTOCOL.md) behind the few
// members of a WebSocket that the stream client uses (readyState, send, close, onopen,
// onmessage, onclose), so stream.js falls back to it without a second protocol path.
//
// Why: some networks (proxies, corporate filters) block websockets but pass a plain HTTP
// response. The frames are the websocket's, one per event. What a websocket client sends
// (subscribe, unsubscribe) is kept here as the stream's subscription and becomes the URL:
// each change reopens the stream (`?symbols=...&mode=...&max_hz=...&since=...`), in the
// same microtask for a burst of changes. The EventSource's own retry is turned off: a
// dropped stream is reported as a close, and stream.js reconnects with its back-off and
// its `since`, exactly as for a websocket.
//
// Tokens: an EventSource sends no message and no header of ours, so the token of an `auth`
// goes on the URL as `?token=` (the only way for SSE; such URLs may land in access logs,
// which is why the websocket never does this). A fresh token reopens the stream with it.
//
// The encoding stream.js asks for goes on every URL (`?encoding=compact`); the service's
// frames come as each event's data, and stream.js decodes them as a websocket's. Each
// reopen is a new connection with a welcome of its own, so its indices are learnt anew.

const FRAME_TYPES = ['welcome', 'ack', 'snapshot', 'quotes', 'status', 'heartbeat', 'pong', 'error'];

/** The /sse URL of a service's websocket URL (ws://host/ws -> http://host/sse). */
export function sseUrl(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
  url.pathname = url.pathname.replace(/\/ws\/?$/, '') + '/sse';
  url.search = '';
  url.hash = '';
  return url.toString();
}

export class SseSocket {
  constructor(wsUrl, EventSourceImpl, encoding = null) {
    this.base = sseUrl(wsUrl);
    this.encoding = encoding; // 'compact', 'json', or null to say none
    this.EventSource = EventSourceImpl;
    this.readyState = 0;
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this.symbols = new Set(); // or '*'
    this.mode = 'conflated';
    this.maxHz = null;
    this.since = new Map();
    this.token = null; // the latest `auth`'s token, sent as ?token=
    this.lastId = null; // the subscribe the open stream answers: its ack carries this id
    this.source = null;
    this.reopenQueued = false;
    // "Open" at once: there is nothing to connect until there is something to subscribe.
    queueMicrotask(() => {
      if (this.readyState !== 0) return;
      this.readyState = 1;
      this.onopen?.({});
    });
  }

  send(text) {
    if (this.readyState !== 1) return;
    const m = JSON.parse(text);
    if (m.op === 'auth') {
      if (m.token === this.token) return;
      this.token = m.token;
      if (!this.source) return; // the next subscribe opens the stream with it
    } else if (m.op === 'subscribe') {
      if (m.mode) this.mode = m.mode;
      if (typeof m.max_hz === 'number') this.maxHz = m.max_hz;
      if (m.symbols === '*') this.symbols = '*';
      else if (this.symbols !== '*') for (const s of m.symbols) this.symbols.add(s);
      for (const [s, seq] of Object.entries(m.since || {})) this.since.set(s, seq);
      this.lastId = m.id;
    } else if (m.op === 'unsubscribe') {
      if (m.symbols === '*') this.symbols = new Set();
      else if (this.symbols !== '*') for (const s of m.symbols) this.symbols.delete(s);
    } else {
      return; // ping: the stream's heartbeats stand in for it
    }
    if (!this.reopenQueued) {
      this.reopenQueued = true;
      queueMicrotask(() => {
        this.reopenQueued = false;
        this.reopen();
      });
    }
  }

  url() {
    const symbols = this.symbols === '*' ? '*' : [...this.symbols].sort().join(',');
    const q = new URLSearchParams({ symbols });
    if (this.mode === 'every') {
      q.set('mode', 'every');
      if (this.since.size) {
        q.set('since', [...this.since].sort().map(([s, seq]) => `${s}:${seq}`).join(','));
      }
    } else if (this.maxHz !== null) {
      q.set('max_hz', String(this.maxHz));
    }
    if (this.encoding !== null) q.set('encoding', this.encoding);
    if (this.token !== null) q.set('token', this.token);
    return `${this.base}?${q}`;
  }

  reopen() {
    if (this.readyState !== 1) return;
    this.source?.close();
    this.source = null;
    if (this.symbols !== '*' && this.symbols.size === 0) return;
    const source = new this.EventSource(this.url());
    this.source = source;
    const deliver = (ev) => {
      if (source !== this.source) return;
      let data = ev.data;
      if (ev.type === 'ack' && this.lastId !== null) {
        // The URL's subscription is acked with id null: it answers our latest subscribe.
        const frame = JSON.parse(data);
        frame.id = this.lastId;
        data = JSON.stringify(frame);
      }
      this.onmessage?.({ data });
    };
    for (const type of FRAME_TYPES) {
      source.addEventListener(type, (ev) => {
        // An `error` event without data is the EventSource's own: the stream failed.
        if (type === 'error' && typeof ev.data !== 'string') this.lost(source, 1006);
        else deliver(ev);
      });
    }
    source.addEventListener('quotes', (ev) => this.track(ev));
    source.addEventListener('snapshot', (ev) => this.track(ev));
    source.addEventListener('close', (ev) => {
      let code = 1006;
      let reason = '';
      try {
        const frame = JSON.parse(ev.data);
        code = frame.code || 1006;
        reason = typeof frame.reason === 'string' ? frame.reason : '';
      } catch (_) { /* keep 1006 */ }
      this.lost(source, code, reason);
    });
  }

  /** Every mode: remember where each symbol is, for the next reopen's `since`. */
  track(ev) {
    if (this.mode !== 'every' || typeof ev.lastEventId !== 'string') return;
    for (const part of ev.lastEventId.split(',')) {
      const [s, seq] = part.split(':');
      if (s && /^\d+$/.test(seq || '')) this.since.set(s, Number(seq));
    }
  }

  lost(source, code, reason = '') {
    if (source !== this.source) return;
    this.close(code, reason);
  }

  close(code = 1000, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.source?.close();
    this.source = null;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }
}
