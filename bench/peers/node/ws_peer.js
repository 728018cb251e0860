// Peer: the `ws` package with a Redis subscriber, as ws's README broadcasts
// ("Server broadcast": every open client in wss.clients gets each message).
// Each Redis message (the publisher's JSON array of quotes) is wrapped as the project's
// {"type":"quotes","quotes":[...]} frame by splicing text, never decoded.
//   PORT=8003 REDIS_URL=redis://127.0.0.1:6379/0 node ws_peer.js
'use strict';
const { WebSocketServer, WebSocket } = require('ws');
const { createClient } = require('redis');

const port = Number(process.env.PORT);
const url = process.env.REDIS_URL;
const channel = process.env.REDIS_CHANNEL || 'quotes';

async function main() {
  const subscriber = createClient({ url });
  subscriber.on('error', (err) => console.error('redis:', err.message));
  await subscriber.connect();
  const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/ws' });
  wss.on('connection', (ws) => { ws.on('error', () => {}); });
  await subscriber.subscribe(channel, (message) => {
    const frame = '{"type":"quotes","quotes":' + message + '}';
    wss.clients.forEach((client) => {
      if (client.readyState === WebSocket.OPEN) client.send(frame);
    });
  });
  wss.on('listening', () => console.log(`ready on ws://127.0.0.1:${port}/ws`));
}

main().catch((err) => { console.error(err); process.exit(1); });
