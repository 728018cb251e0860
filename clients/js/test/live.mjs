// The stream client in Node 20 against a real service: `node test/live.mjs WS_URL`, run by
// tests/test_js_client.py (from clients/js, so `quote-stream` is this package by its name).
//
// It prints one JSON object a line: {"step": ...} as it goes, {"step": "restart"} when the
// service should be restarted (the test does it and the client must come back by itself),
// and {"step": "done", ...} with what the test checks against the Python side. Every wait
// is on a condition with a deadline; a failure prints {"error": ...} and exits 1.
import WebSocket from 'ws';
import { connect, connections, tickerText } from 'quote-stream';

const url = process.argv[2];
const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

function until(predicate, ms, what) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + ms;
    const poll = () => {
      let value;
      try {
        value = predicate();
      } catch (err) {
        reject(err);
        return;
      }
      if (value) resolve(value);
      else if (Date.now() > deadline) reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
      else setTimeout(poll, 20);
    };
    poll();
  });
}

function check(ok, what, detail) {
  if (!ok) throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

/** Per symbol, each delivered quote replaces the one before: a higher seq, or (first on a
 * new socket, a restarted service's snapshot) a later ts. */
function bySeq(delivered) {
  const last = new Map();
  for (const q of delivered) {
    const held = last.get(q.symbol);
    check(!held || q.seq > held.seq || q.ts > held.ts, 'a quote went backwards', [held, q]);
    last.set(q.symbol, q);
  }
  return last;
}

async function main() {
  const mine = connect(url, { WebSocket });
  const other = connect(url.replace('ws:', 'http:'), { WebSocket }); // same socket URL
  const statuses = [];
  const delivered = []; // what `mine` got: {symbol, seq, ts, snapshot, quote}
  const batches = [];
  const otherGot = [];
  mine.on('status', (feed, previous) => statuses.push([previous, feed]));
  mine.on('quote', (q, { snapshot }) => delivered.push({ symbol: q.symbol, seq: q.seq, ts: q.ts, snapshot, q }));
  mine.on('quotes', (qs, { snapshot }) => batches.push([qs.length, snapshot]));
  other.on('quote', (q) => otherGot.push(q.symbol));
  mine.subscribe(['OGDC', 'ppl', 'KSE100']);
  other.subscribe('*');

  // 1. Quotes arrive: the snapshot first (the whole board at once), then updates.
  await until(() => mine.feed === 'live', 10_000, 'live');
  check(statuses[0][0] === 'connecting' && statuses[0][1] === 'live', 'first status', statuses);
  check(['KSE100', 'OGDC', 'PPL'].every((s) => mine.board.has(s)), 'the board on live', [...mine.board.keys()]);
  check(delivered.slice(0, 3).every((d) => d.snapshot), 'the snapshot first', delivered.slice(0, 3));
  const conns = connections();
  check(conns.length === 1 && conns[0].consumers === 2 && conns[0].subscribed === '*', 'one socket', conns);
  out({ step: 'live', connections: conns, symbols: mine.symbols });
  await until(() => delivered.filter((d) => !d.snapshot).length >= 10, 15_000, '10 updates');
  check(delivered.every((d) => ['KSE100', 'OGDC', 'PPL'].includes(d.symbol)), 'only what was asked', delivered.map((d) => d.symbol));
  check(batches.reduce((n, [len]) => n + len, 0) === delivered.length, 'quotes events carry the quote events', batches);

  // 2. The board is by seq: each quote newer than the last, the board the last of each.
  const last = bySeq(delivered);
  for (const [symbol, q] of last) check(mine.board.get(symbol).seq === q.seq, 'the board holds the last', symbol);

  // 3. Unsubscribe stops a symbol for this stream (the other stream still gets it).
  mine.unsubscribe('PPL');
  const mark = delivered.length;
  const otherMark = otherGot.length;
  check(!mine.board.has('PPL'), 'PPL left the board', [...mine.board.keys()]);
  await until(() => delivered.slice(mark).filter((d) => d.symbol === 'OGDC').length >= 3
    && otherGot.slice(otherMark).filter((s) => s === 'PPL').length >= 2, 15_000, 'OGDC for mine, PPL for the other');
  check(!delivered.slice(mark).some((d) => d.symbol === 'PPL'), 'no PPL after unsubscribe', delivered.slice(mark));
  check(JSON.stringify(mine.symbols) === '["OGDC","KSE100"]', 'symbols', mine.symbols);
  out({ step: 'unsubscribed', symbols: mine.symbols });

  // Now only this stream: the socket's subscription narrows to its symbols.
  other.close();
  await until(() => JSON.stringify(connections()[0]?.subscribed) === '["KSE100","OGDC"]', 5_000, 'the socket to narrow');

  // 4. The service restarts on the same port: reconnect, resubscribe, snapshot, updates.
  const beforeRestart = delivered.length;
  const statusMark = statuses.length;
  out({ step: 'restart' });
  await until(() => statuses.slice(statusMark).some(([, f]) => f === 'reconnecting'), 30_000, 'reconnecting');
  await until(() => mine.feed === 'live', 30_000, 'live again');
  await until(() => delivered.slice(beforeRestart).filter((d) => !d.snapshot).length >= 3, 15_000, 'updates after the restart');
  const after = delivered.slice(beforeRestart);
  check(after.some((d) => d.snapshot), 'a snapshot on the new socket', after.slice(0, 3));
  check(after.every((d) => d.symbol !== 'PPL'), 'still no PPL', after);
  check(JSON.stringify(connections()[0].subscribed) === '["KSE100","OGDC"]', 'resubscribed', connections());
  bySeq(delivered);
  out({ step: 'reconnected', statuses: statuses.slice(statusMark) });

  // 5. Close: the socket goes, and nothing keeps the process alive (the test sees it exit).
  mine.close();
  check(mine.closed && connections().length <= 1, 'closed', connections());
  await until(() => connections().length === 0, 5_000, 'no connection left');
  out({
    step: 'done',
    // The seed's text form of quotes as they came: the test compares with format_line.
    formatted: delivered.slice(0, 60).map((d) => [d.q, tickerText(d.q)]),
  });
}

main().catch((err) => {
  out({ error: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});
