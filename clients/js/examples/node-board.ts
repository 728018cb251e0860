// A board in Node 20: the `ws` package as the WebSocket, the seed's text form per quote.
import WebSocket from 'ws';
import { connect, tickerText, type Feed, type Quote } from 'quote-stream';

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
  console.log(prices, stream.symbols);
  stream.close();
}, 5_000);
