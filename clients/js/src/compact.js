// The compact encoding (docs/PROTOCOL.md, "Compact encoding"): how the frames of a socket
// that asked for `?encoding=compact` turn back into the full quotes protocol 1 would have
// sent. Shared by the websocket and the SSE fallback (both hand stream.js the same frames).
//
// Why: a quote that moved carries only what changed (index, price, seq and ts steps, and
// the fields that changed); `change` and `change_pct` are derived here exactly as the
// service derives them, so a compact client holds, field for field, what a protocol-1
// client holds.
//
// The wire, in short: a protocol-1-form `snapshot` or `quotes` frame whose quotes carry
// `"i"` (the symbol's index on this connection), or an array frame
// `[TS0, ENTRY, ...]` where an entry is a full quote (an object with `"i"`) or a delta
// `[i, price, dseq, dts]` / `[i, price, dseq, dts, CHANGES]`.

import { round2 } from './format.js';

/** The encodings connect() asks for: 'compact' (the default) or 'json' (protocol 1). */
export const ENCODINGS = Object.freeze(['compact', 'json']);

/** An `encoding` option: null/undefined ('compact'), 'compact' or 'json'. */
export function checkEncoding(value) {
  if (value === undefined || value === null) return 'compact';
  if (!ENCODINGS.includes(value)) {
    throw new RangeError(`encoding must be 'compact' or 'json', got ${String(value)}`);
  }
  return value;
}

/** [change, change_pct] of `price` against `prevClose`, as the service derives them
 * (quote_core.quote.derived_change): the same operations in the same order, each
 * rounded by round2 (Python's round(x, 2)). */
export function derivedChange(price, prevClose) {
  return [round2(price - prevClose), round2((100 * (price - prevClose)) / prevClose)];
}

/** A frame a correct service cannot send (e.g. a delta for an index never learnt): the
 * connection's state is not to be trusted, so the client reconnects. */
export class CompactError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CompactError';
  }
}

const isIndex = (v) => Number.isSafeInteger(v) && v >= 0;

/** One connection's decoding state: each index learnt, with the quote last sent under it
 * (what the next delta is applied to). A new connection needs a new decoder: indices are
 * the server process's, and a reconnect may land on another one. */
export class CompactDecoder {
  constructor() {
    this.held = new Map(); // index -> the latest full quote (without "i")
  }

  /** A quote object as sent (protocol-1 form, maybe with "i"): learn its index and return
   * it without "i". Anything that is not a quote is returned as it is (the caller skips it). */
  full(raw) {
    if (!raw || typeof raw !== 'object' || Array.isArray(raw) || !('i' in raw)) return raw;
    const { i, ...quote } = raw;
    if (!isIndex(i)) throw new CompactError(`a quote with index ${JSON.stringify(i)}`);
    this.held.set(i, quote);
    return quote;
  }

  /** The `quotes` list of a protocol-1-form `snapshot` or `quotes` frame, without "i". */
  quotes(list) {
    return Array.isArray(list) ? list.map((q) => this.full(q)) : list;
  }

  /** A compact `quotes` frame (an array) as the full quotes it stands for, in order. */
  frame(array) {
    if (!Array.isArray(array) || !Number.isSafeInteger(array[0])) {
      throw new CompactError('a compact frame starts with its time (an integer)');
    }
    let t = array[0];
    const out = [];
    for (let k = 1; k < array.length; k += 1) {
      const entry = array[k];
      let quote;
      if (Array.isArray(entry)) quote = this.delta(entry, t);
      else if (entry && typeof entry === 'object' && 'i' in entry) quote = this.full(entry);
      else throw new CompactError(`entry ${k} is neither a full quote with "i" nor a delta`);
      if (typeof quote.ts === 'number') t = quote.ts;
      out.push(quote);
    }
    return out;
  }

  /** [i, price, dseq, dts, CHANGES?] applied to the quote held under i; `t` the running time. */
  delta(entry, t) {
    const [i, price, dseq, dts, changes] = entry;
    if (entry.length < 4 || entry.length > 5 || !isIndex(i) || typeof price !== 'number'
        || !Number.isSafeInteger(dseq) || !Number.isSafeInteger(dts)
        || (entry.length === 5 && (!changes || typeof changes !== 'object' || Array.isArray(changes)))) {
      throw new CompactError(`a malformed delta ${JSON.stringify(entry)}`);
    }
    const held = this.held.get(i);
    if (held === undefined) throw new CompactError(`a delta for index ${i}, never sent in full`);
    const [change, changePct] = derivedChange(price, held.prev_close);
    const quote = { ...held, price, change, change_pct: changePct, seq: held.seq + dseq, ts: t + dts };
    if (changes) {
      for (const [field, value] of Object.entries(changes)) {
        if (value === null) delete quote[field];
        else quote[field] = value;
      }
    }
    this.held.set(i, quote);
    return quote;
  }
}
