// The stream client on a test host (tests/test_networks.py runs it with `ip netns exec`):
// `node test/netwatch.mjs WS_URL`, subscribed to everything, printing one JSON line every
// 250 ms: its feed, the age of its newest quote (now - ts, this machine's clock), how
// many times it went reconnecting, and the quotes it took. It runs until killed.
import WebSocket from 'ws';
import { connect } from 'quote-stream';

const stream = connect(process.argv[2], { WebSocket });
let reconnects = 0;
let quotes = 0;
let newest = 0;
stream.on('status', (feed) => { if (feed === 'reconnecting') reconnects += 1; });
stream.on('quote', (q) => {
  quotes += 1;
  if (q.ts > newest) newest = q.ts;
});
stream.subscribe('*');
setInterval(() => {
  const age = newest ? Date.now() - newest : null;
  process.stdout.write(`${JSON.stringify({ feed: stream.feed, age_ms: age, reconnects, quotes })}\n`);
}, 250);
