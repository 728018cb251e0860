// A board in Node 20: the `ws` package as the WebSocket, the seed's text form per quote.
import WebSocket from 'ws';
import {
  CompactDecoder, connect, derivedChange, tickerText, type Encoding, type Feed, type Quote,
} from 'quote-stream';

const url = process.argv[2] ?? 'ws://127.0.0.1:8000/ws';
const stream = connect(url, { WebSocket });

stream.on('status', (feed: Feed, previous: Feed) => console.log(`feed ${previous} -> ${feed}`));
stream.on('quote', (q: Quote, { snapshot }) => {
  console.log(snapshot ? 'snapshot' : 'update', q.seq, tickerText(q));
});
stream.on('error', (e) => console.warn(e.code, e.message));
stream.subscribe(['OGDC', 'KSE100']).subscribe('ppl');

setTimeout(() => {
  stream.unsubscribe(['PPL']);
  const prices: Record<string, number> = {};
  for (const [symbol, q] of stream.board) prices[symbol] = q.price;
  const encoding: Encoding | null = stream.encoding; // 'compact' unless the service is older
  console.log(prices, stream.symbols, encoding);
  stream.close();
}, 5_000);

// Protocol 1 on the wire instead (the quotes are the same): a socket of its own.
const plain = connect(url, { WebSocket, encoding: 'json' });
plain.subscribe('OGDC');
setTimeout(() => plain.close(), 5_000);

// The decoder on its own, for a client of your own: frames in, full quotes out.
const decoder = new CompactDecoder();
decoder.quotes([{ symbol: 'OGDC', kind: 'stock', price: 137.75, change: 4.88, change_pct: 3.67,
  prev_close: 132.87, ts: 1_719_216_000_123, seq: 5812, i: 0 }]); // a snapshot: learns i 0
const moved: Quote[] = decoder.frame([1_719_216_000_400, [0, 137.8, 1, 56]]);
const [change, changePct]: [number, number] = derivedChange(137.8, 132.87);
console.log(moved[0]?.seq, change === moved[0]?.change, changePct);
