// The compact encoding (compact.js): frames of a socket that asked for `?encoding=compact`
// back into the full quotes protocol 1 would have sent.

import type { Quote } from './stream.js';

/** 'compact' (quotes that moved carry what changed) or 'json' (protocol 1). */
export type Encoding = 'compact' | 'json';

/** The encodings connect() asks for. */
export declare const ENCODINGS: readonly Encoding[];
/** An encoding option as the client takes it: null/undefined is 'compact' (else RangeError). */
export declare function checkEncoding(value: unknown): Encoding;
/** [change, change_pct] of `price` against `prevClose`, exactly as the service derives them
 * (round2 of the difference, and of 100 * difference / prevClose). */
export declare function derivedChange(price: number, prevClose: number): [number, number];

/** A frame no correct service sends (e.g. a delta for an index never sent in full). */
export declare class CompactError extends Error {
  constructor(message: string);
}

/** One compact entry of a delta: [i, price, dseq, dts] or [i, price, dseq, dts, CHANGES]
 * (CHANGES: each field set to its value, or removed when null). */
export type DeltaEntry =
  | [number, number, number, number]
  | [number, number, number, number, Record<string, unknown>];

/** A compact `quotes` frame: the time (ms), then full quotes (with `i`) and deltas. */
export type CompactFrame = [number, ...(Quote | DeltaEntry)[]];

/** One connection's decoding state: each index learnt, and the quote last sent under it.
 * A new connection needs a new decoder. Methods throw CompactError on what a correct
 * service cannot send. */
export declare class CompactDecoder {
  constructor();
  /** A quote as sent (maybe with `i`): its index learnt, returned without `i`. */
  full(raw: Quote | Record<string, unknown>): Quote;
  /** The `quotes` of a protocol-1-form `snapshot` or `quotes` frame, without `i`. */
  quotes(list: readonly Quote[]): Quote[];
  /** A compact `quotes` frame as the full quotes it stands for, in order. */
  frame(frame: CompactFrame | readonly unknown[]): Quote[];
  /** A delta applied to the quote held under its index; `t` the frame's running time. */
  delta(entry: DeltaEntry | readonly unknown[], t: number): Quote;
}
