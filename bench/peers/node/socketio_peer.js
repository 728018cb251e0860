// Peer: socket.io with @socket.io/redis-adapter, set up as the adapter's docs show
// (a pub and a sub client), plus one Redis subscriber on the quotes channel whose
// messages are emitted to everyone: io.emit('quotes', quotes). A socket.io user emits
// objects, so the array is JSON.parse'd once per message; socket.io encodes the packet
// once per broadcast, and the adapter also publishes it to Redis for other nodes.
// Clients: Engine.IO v4 websocket transport, /socket.io/?EIO=4&transport=websocket.
//   PORT=8004 REDIS_URL=redis://127.0.0.1:6379/0 node socketio_peer.js
'use strict';
const { createServer } = require('http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const port = Number(process.env.PORT);
const url = process.env.REDIS_URL;
const channel = process.env.REDIS_CHANNEL || 'quotes';

async function main() {
  const pubClient = createClient({ url });
  const subClient = pubClient.duplicate();
  const quotes = pubClient.duplicate();
  for (const c of [pubClient, subClient, quotes]) c.on('error', (err) => console.error('redis:', err.message));
  await Promise.all([pubClient.connect(), subClient.connect(), quotes.connect()]);
  const httpServer = createServer();
  const io = new Server(httpServer, { adapter: createAdapter(pubClient, subClient) });
  await quotes.subscribe(channel, (message) => {
    io.emit('quotes', JSON.parse(message));
  });
  httpServer.listen(port, '127.0.0.1', () => console.log(`ready on http://127.0.0.1:${port}/socket.io/`));
}

main().catch((err) => { console.error(err); process.exit(1); });
