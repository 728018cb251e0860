// Peer: uWebSockets.js (npm @trufflesuite/uws-js-unofficial), the practical native limit.
// Its own pub/sub, as its docs show: every socket subscribes to the 'quotes' topic on
// open, and each Redis message is app.publish'ed once, wrapped as the project's
// {"type":"quotes","quotes":[...]} frame. Library defaults (no compression,
// maxBackpressure 64 KiB: a slow receiver is skipped by publish).
//
// The package silently falls back to a JavaScript implementation when its native
// binary does not load; that would not be uWebSockets, so this peer refuses to start.
//   PORT=8005 REDIS_URL=redis://127.0.0.1:6379/0 node uws_peer.js
'use strict';
const uWS = require('./uws_native');  // the native binary, or exit 3
const { createClient } = require('redis');

const port = Number(process.env.PORT);
const url = process.env.REDIS_URL;
const channel = process.env.REDIS_CHANNEL || 'quotes';

async function main() {
  const subscriber = createClient({ url });
  subscriber.on('error', (err) => console.error('redis:', err.message));
  await subscriber.connect();
  const app = uWS.App().ws('/ws', {
    open: (ws) => { ws.subscribe('quotes'); },
    message: () => {},
  });
  await subscriber.subscribe(channel, (message) => {
    app.publish('quotes', '{"type":"quotes","quotes":' + message + '}', false);
  });
  app.listen('127.0.0.1', port, (token) => {
    if (!token) { console.error(`cannot listen on ${port}`); process.exit(1); }
    console.log(`ready on ws://127.0.0.1:${port}/ws (native uWebSockets.js)`);
  });
}

main().catch((err) => { console.error(err); process.exit(1); });
