// Peer for the viewers scenario (bench/viewers.py --peers uws): uWebSockets.js (npm
// @trufflesuite/uws-js-unofficial) serving max_hz viewers the way the service does, the
// fair native counterpart of the service at max_hz. uws_peer.js relays every Redis
// message to every client, one frame per quote; that is not the service's load at
// max_hz, where a viewer gets at most H frames a second of conflated quotes. This peer
// does the same work as the service, with uWebSockets.js's own pub/sub as its docs show
// (topics, ws.subscribe, app.publish):
//
// - a node-redis subscriber on REDIS_CHANNEL (`quotes:{0}`, the one partition the
//   benchmark runs), each message a JSON array of quotes (bench/publisher.py: one quote
//   per message); `[]`, the publisher's heartbeat, carries nothing and is ignored;
// - a board, symbol -> that symbol's latest quote as the JSON text received, replaced
//   only by a quote with a higher seq (the protocol's per-symbol version);
// - on open, one `{"type":"snapshot","quotes":[...]}` frame of the whole board;
// - per rate H in use (`?max_hz=H` read in the upgrade handler, 0.5 to 50, 50 when
//   absent, as the service's default; anything else is answered 400) one topic and one
//   timer: every 1000/H ms, if any symbol changed since that rate's last tick, ONE frame
//   `{"type":"quotes","quotes":[...]}` of the changed symbols' latest quotes, spliced
//   from the received texts (never re-serialised), app.publish'ed to the topic, so all
//   viewers of one rate share one frame. Latest per symbol: conflated, as the service.
//
// Every viewer gets every symbol (the scenario connects with ?symbols=*; other query
// parameters are ignored). No welcome, ack or heartbeat frames. Library defaults
// otherwise (no compression, maxBackpressure 64 KiB: a slow receiver is skipped by
// publish, idleTimeout 120 s with automatic pings).
//
// The package silently falls back to a JavaScript implementation when its native
// binary does not load; that would not be uWebSockets, so this peer refuses to start
// (exit code 3), as uws_peer.js does.
//   PORT=8005 REDIS_URL=redis://127.0.0.1:6379/0 REDIS_CHANNEL='quotes:{0}' node uws_viewers_peer.js
'use strict';
const uWS = require('./uws_native');  // the native binary, or exit 3
const { createClient } = require('redis');

const port = Number(process.env.PORT);
const url = process.env.REDIS_URL;
const channel = process.env.REDIS_CHANNEL || 'quotes:{0}';
const MIN_HZ = 0.5;
const MAX_HZ = 50;
const DEFAULT_HZ = 50;

// symbol -> {seq, json}: the latest quote of each symbol, its text as received.
const board = new Map();
// One entry per rate in use: its topic, its timer, the symbols changed since its last tick.
const rates = new Map();

// The top-level elements of a JSON array, as substrings of its text (no re-encoding).
// Strings are skipped whole, so a brace or comma inside one is not a boundary.
function elements(text) {
  const out = [];
  let depth = 0;
  let start = -1;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 34) { // "
      for (i++; i < text.length; i++) {
        const d = text.charCodeAt(i);
        if (d === 92) i++; // backslash: skip the escaped character
        else if (d === 34) break;
      }
    } else if (c === 123 || c === 91) { // { [
      depth++;
      if (depth === 2) start = i;
    } else if (c === 125 || c === 93) { // } ]
      if (depth === 2) out.push(text.slice(start, i + 1));
      depth--;
    }
  }
  return out;
}

function ingest(message) {
  let texts;
  try {
    texts = elements(message);
  } catch (err) {
    console.error('bad message:', err.message);
    return;
  }
  for (const json of texts) { // `[]` (the heartbeat) has none
    let quote;
    try {
      quote = JSON.parse(json);
    } catch (err) {
      console.error('bad quote:', err.message);
      continue;
    }
    const symbol = quote && quote.symbol;
    const seq = quote && quote.seq;
    if (typeof symbol !== 'string' || typeof seq !== 'number') continue;
    const held = board.get(symbol);
    if (held !== undefined && held.seq >= seq) continue; // not newer: drop it
    board.set(symbol, { seq, json });
    for (const rate of rates.values()) rate.changed.add(symbol);
  }
}

function snapshot() {
  const quotes = [];
  for (const entry of board.values()) quotes.push(entry.json);
  return '{"type":"snapshot","quotes":[' + quotes.join(',') + ']}';
}

// `?max_hz=` as a rate key ("4", "0.5"), or null when it is not a number in range.
function parseHz(raw) {
  if (raw === '') return String(DEFAULT_HZ);
  if (!/^[0-9]+(\.[0-9]+)?$/.test(raw)) return null;
  const hz = Number(raw);
  if (!(hz >= MIN_HZ && hz <= MAX_HZ)) return null;
  return String(hz);
}

function rateFor(app, key) {
  let rate = rates.get(key);
  if (rate !== undefined) return rate;
  rate = { topic: 'quotes@' + key, changed: new Set(), timer: null };
  rate.timer = setInterval(() => {
    if (rate.changed.size === 0) return;
    const quotes = [];
    for (const symbol of rate.changed) quotes.push(board.get(symbol).json);
    rate.changed.clear();
    app.publish(rate.topic, '{"type":"quotes","quotes":[' + quotes.join(',') + ']}', false);
  }, 1000 / Number(key));
  rates.set(key, rate);
  return rate;
}

async function main() {
  const subscriber = createClient({ url });
  subscriber.on('error', (err) => console.error('redis:', err.message));
  await subscriber.connect();
  const app = uWS.App().ws('/ws', {
    upgrade: (res, req, context) => {
      const key = parseHz(req.getQuery('max_hz') || '');
      if (key === null) {
        res.writeStatus('400 Bad Request').end('max_hz must be a number from 0.5 to 50');
        return;
      }
      res.upgrade({ hz: key },
        req.getHeader('sec-websocket-key'),
        req.getHeader('sec-websocket-protocol'),
        req.getHeader('sec-websocket-extensions'),
        context);
    },
    open: (ws) => {
      const rate = rateFor(app, ws.getUserData().hz);
      ws.send(snapshot(), false);
      ws.subscribe(rate.topic);
    },
    message: () => {},
  });
  await subscriber.subscribe(channel, ingest);
  app.listen('127.0.0.1', port, (token) => {
    if (!token) { console.error(`cannot listen on ${port}`); process.exit(1); }
    console.log(`ready on ws://127.0.0.1:${port}/ws (native uWebSockets.js, viewers at max_hz)`);
  });
}

main().catch((err) => { console.error(err); process.exit(1); });
