// The seed's text form of a quote (format.js).

import type { Quote } from './stream.js';

export declare const UP: '\u25B2';
export declare const DOWN: '\u25BC';
export declare const INCREASED: 'Increased By';
export declare const DECREASED: 'Decreased By';
export declare const NO_CHANGE: 'No Change';

/** What formatQuote and tickerText read: a Quote, or any object with these fields. */
export interface QuoteLike {
  symbol: string;
  kind?: 'stock' | 'index' | string;
  price: number | string;
  prev_close?: number | string | null;
  change?: number | string | null;
  change_pct?: number | string | null;
}

/** The parts of a quote's text form, each a plain string. */
export interface QuoteParts {
  symbol: string;
  kind: 'stock' | 'index';
  direction: 'up' | 'down' | 'flat';
  /** `137.75` for a stock, `71,902` for an index. */
  price: string;
  /** `Increased By`, `Decreased By` or `No Change`. */
  words: string;
  /** `▲` or `▼` for a stock, `''` for an index. */
  arrow: string;
  /** `4.88`, `-0.36`; one decimal, trimmed, for an index. */
  change: string;
  /** `(3.67%)`, with the brackets. */
  pct: string;
}

/** The exact seed line, e.g. `OGDC 137.75 Increased By ▲ 4.88 (3.67%)`. */
export declare function tickerText(q: QuoteLike | Quote): string;
/** The parts of tickerText(q). */
export declare function formatQuote(q: QuoteLike | Quote): QuoteParts;
/** Python's `format(x, f".{digits}f")`: round half to even on the exact binary value. */
export declare function pyFixed(value: number | string, digits: number): string;
/** Thousands separators: `71902` -> `71,902`. */
export declare function groupThousands(text: string): string;
/** `4.90` -> `4.9`, `0.00` -> `0`, `-0.0` -> `0`. */
export declare function trimZeros(text: string): string;
/** Python's round(x, 2). */
export declare function round2(value: number | string): number;
