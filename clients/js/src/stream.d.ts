// The stream client (stream.js): the quote service's websocket protocol as a small API.

import type { Encoding } from './compact.js';

/** One quote as the service sends it (docs/PROTOCOL.md): the symbol's full latest state. */
export interface Quote {
  symbol: string;
  kind: 'stock' | 'index';
  price: number;
  change: number;
  change_pct: number;
  prev_close: number;
  /** The publisher's time, milliseconds since the Unix epoch. */
  ts: number;
  /** The symbol's version: rises by one with every update. */
  seq: number;
  open?: number;
  high?: number;
  low?: number;
  volume?: number;
  bid?: number;
  ask?: number;
  state?: 'trading' | 'halted' | 'closed' | 'upper_lock' | 'lower_lock';
  /** True on every quote of the delayed tier: it is the board as it stood `delayS` ago. */
  delayed?: boolean;
  /** Fields this version does not know are passed through. */
  [field: string]: unknown;
}

/** `connecting` (never up yet), `live`, `stale` (the service cannot hear the feed), or
 * `reconnecting` (the socket dropped; the board is kept and shown as it was). */
export type Feed = 'connecting' | 'live' | 'stale' | 'reconnecting';

/** `'*'` for every symbol the feed has, one symbol, or a list (lower case is upper-cased). */
export type Symbols = '*' | string | Iterable<string>;

export interface QuoteInfo {
  /** True when the quote came in a snapshot (the board on subscribe or after reconnect). */
  snapshot: boolean;
}

/** How a socket asks for quotes: `conflated` (the latest per symbol; the default) or
 * `every` (every published quote, in seq order, recovered after a gap). */
export type Mode = 'conflated' | 'every';

/** Every mode: the service's answer to a `since` (after a reconnect, or connect's since). */
export interface Recovery {
  /** True when the tape covered every gap. */
  recovered: boolean;
  /** The symbols it could not cover: they continue from a snapshot (their seq jumps). */
  unrecovered: string[];
}

/** 'realtime', or 'delayed' (every quote `delayS` seconds behind real time). */
export type Tier = 'realtime' | 'delayed';

/** The service's answer to a token (the ack of `auth`). */
export interface AuthInfo {
  tier: Tier;
  /** The symbols the token covers: `'*'` or a list. */
  entitled: '*' | string[];
  /** When the token expires, milliseconds since the epoch (null: not said). */
  expires: number | null;
  /** The token's subject (null without a `sub` claim). */
  sub: string | null;
  /** Seconds every quote is behind real time: 0 in real time. */
  delayS: number | null;
}

/** A token is needed: the service said it expired (answer within its grace), refused it
 * and closed the socket (the next open asks the source again, after a slow back-off), or
 * the token function failed. Answer with stream.authenticate(token). */
export interface TokenRequest {
  reason: 'expired' | 'refused' | 'unavailable';
  message: string;
}

/** A token, or where to get one: a function called on every socket (re)open and on
 * `token_expired`, returning the token or a Promise of it. */
export type TokenSource = string | (() => string | PromiseLike<string>);

/** An `error` frame from the service (a request it refused). */
export interface ServerError {
  code: string;
  message: string;
  id?: number | string;
}

export interface StreamEvents {
  /** Each accepted quote (newer `seq` than the one held), one call per quote. */
  quote: (quote: Quote, info: QuoteInfo) => void;
  /** The accepted quotes of one frame together (at most one per symbol; in every mode
   * several per symbol may come, in seq order). */
  quotes: (quotes: Quote[], info: QuoteInfo) => void;
  /** The feed state changed. */
  status: (feed: Feed, previous: Feed) => void;
  /** The service refused a request (without a listener: a console warning). */
  error: (error: ServerError) => void;
  /** Every mode: the service answered a `since` (each resubscription after a reconnect). */
  recovery: (info: Recovery) => void;
  /** The service answered a token (on each socket open, and each refresh). */
  auth: (info: AuthInfo) => void;
  /** A token is needed (see TokenRequest); without a listener, a console warning. */
  token: (request: TokenRequest) => void;
}

/** The part of the WHATWG WebSocket the client uses (the browser's, Node 22's, or `ws`):
 * it reads `event.data` (text) of a message and `event.code` of a close. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ConnectOptions {
  /** The WebSocket class, where there is no global one (Node 20: `import WebSocket from 'ws'`). */
  WebSocket?: WebSocketConstructor;
  /** The EventSource class for the SSE fallback, where there is no global one. */
  EventSource?: unknown;
  /** At most this many `quotes` frames a second for this stream, 0.5 to 50 (default: the
   * service's, 50 as shipped). Quotes stay conflated, so the board is never more than
   * 1/maxHz behind. The shared socket runs at the highest rate of its streams, or at the
   * service's default if any stream asks for none. RangeError when out of range, or with
   * mode 'every'. */
  maxHz?: number | null;
  /** 'every': every published quote, in seq order, none repeated, recovered from the
   * service's tape after a reconnect. Every-mode streams share a socket of their own
   * (sockets are keyed by URL and mode). Default 'conflated'. */
  mode?: Mode;
  /** Every mode: symbol -> the last seq already processed (e.g. persisted by a previous
   * run), where to resume: the quotes after it come first. A position the socket already
   * holds for a symbol wins. */
  since?: Readonly<Record<string, number>> | ReadonlyMap<string, number>;
  /** A signed token (a JWT), or a function returning one or a Promise of one: sent as the
   * first message (`auth`) on every socket (re)open, before the subscribes, and again, from
   * the function, when the service says it expired. Never in the websocket's URL; the SSE
   * fallback can only put it in its URL (`?token=`). Streams share a socket only with the
   * same URL, mode and token source (the same string or the same function). */
  token?: TokenSource | null;
  /** 'compact' (the default: `?encoding=compact`, quotes that moved carry only what
   * changed) or 'json' (protocol 1 on the wire). Streams see the same quotes either way;
   * streams asking for 'json' share a socket only among themselves. RangeError otherwise. */
  encoding?: Encoding | null;
}

export interface Stream {
  /** The socket's URL (absolute, `ws:` or `wss:`). */
  readonly url: string;
  /** The feed state now. */
  readonly feed: Feed;
  /** The board: symbol -> latest accepted quote, for the symbols this stream wants. */
  readonly board: ReadonlyMap<string, Quote>;
  /** `'*'` or the symbols this stream wants. */
  readonly symbols: '*' | string[];
  readonly closed: boolean;
  /** The rate this stream asked for (null: the service's default). */
  readonly maxHz: number | null;
  /** The socket's mode. */
  readonly mode: Mode;
  /** Every mode: the socket's latest answer to a `since` (null before one). */
  readonly recovered: boolean | null;
  /** Every mode: the symbols that latest answer could not recover. */
  readonly unrecovered: string[];
  /** Every mode: symbol -> the last seq accepted, for this stream's symbols (a copy);
   * the `since` of the next resubscription. */
  readonly positions: Map<string, number>;
  /** 'realtime' or 'delayed', from the welcome or (with a token) its auth ack; null before. */
  readonly tier: Tier | null;
  /** Seconds every quote is behind real time (0 in real time; null before it is known). */
  readonly delayS: number | null;
  /** The service's latest answer to the token (null: no token, or no answer yet). */
  readonly auth: AuthInfo | null;
  /** The encoding in force on the socket, from its welcome ('json' also when the welcome
   * says none: an older service); null before a welcome. */
  readonly encoding: Encoding | null;
  /** Send `auth` now on the socket: with `token` (which from then on replaces a string
   * source, or goes once before a function's next token), or a fresh one from the function.
   * Error for a stream connected without a token. */
  authenticate(token?: string | null): this;
  /** Ask for at most this many `quotes` frames a second (null: the service's default);
   * see ConnectOptions.maxHz. */
  setMaxHz(maxHz: number | null): this;
  /** Add symbols (or `'*'`); what the shared socket already holds is delivered at once. */
  subscribe(symbols: Symbols): this;
  /** Remove symbols (or `'*'` for all); their quotes stop and leave the board. While
   * subscribed to `'*'` only `unsubscribe('*')` is allowed (or use setSymbols). */
  unsubscribe(symbols: Symbols): this;
  /** Replace the subscription with exactly these symbols (or `'*'`). */
  setSymbols(symbols: Symbols): this;
  /** Listen; returns a function that removes the listener. */
  on<E extends keyof StreamEvents>(event: E, listener: StreamEvents[E]): () => void;
  off<E extends keyof StreamEvents>(event: E, listener: StreamEvents[E]): this;
  /** Stop this stream; the last one on a URL closes the socket. */
  close(): void;
}

/** A stream from the service at `url` (`ws:`, `wss:`, `http:`, `https:`, or relative in a
 * browser). Streams to the same URL share one socket. */
export declare function connect(url: string | URL, options?: ConnectOptions): Stream;

/** The absolute websocket URL that connect() uses for `url`. */
export declare function socketUrl(url: string | URL): string;

export interface ConnectionInfo {
  url: string;
  feed: Feed;
  /** How many streams share the socket. */
  consumers: number;
  /** What the socket is subscribed to. */
  subscribed: '*' | string[];
  /** The rate the socket asks for: the highest of its streams' (null: the default). */
  maxHz: number | null;
  /** The rate in force, from the service's latest ack (null before one). */
  grantedHz: number | null;
  /** The socket's mode. */
  mode: Mode;
  /** Every mode: the latest answer to a `since` (null before one). */
  recovered: boolean | null;
  /** 'sse' after SSE_AFTER_FAILURES websocket attempts in a row never opened. */
  transport: 'websocket' | 'sse';
  /** Whether the socket authenticates with a token (never the token itself). */
  token: boolean;
  tier: Tier | null;
  delayS: number | null;
  /** The encoding in force, from the socket's welcome (null before one). */
  encoding: Encoding | null;
  /** The socket's readyState, or -1 between sockets. */
  readyState: number;
}

/** Diagnostics: the shared sockets. */
export declare function connections(): ConnectionInfo[];

export declare const SYMBOL_RE: RegExp;
/** Websocket attempts in a row that never opened before the SSE fallback. */
export declare const SSE_AFTER_FAILURES: number;
export declare const MIN_HZ: number;
export declare const MAX_HZ: number;
/** The modes connect() takes. */
export declare const MODES: readonly Mode[];
/** A maxHz option as the client takes it: null, or a number from MIN_HZ to MAX_HZ (else RangeError). */
export declare function checkMaxHz(value: unknown): number | null;
export declare function isSymbol(value: unknown): value is string;
/** Does a close (code, reason) refuse the token: 1008 with a reason about a token, or
 * "authentication required"? */
export declare function isTokenRefusal(code: number, reason?: string): boolean;

export declare const RECONNECT: Readonly<{
  baseMs: number;
  capMs: number;
  slowBaseMs: number;
  slowCapMs: number;
  healthyAfterMs: number;
  /** A socket not open this long is closed and retried (10 s, as the Python client's open_timeout). */
  openTimeoutMs: number;
}>;
/** Close codes after which the reconnect backs off slowly (slowBaseMs, slowCapMs): 1008,
 * 1013, 4029. */
export declare const SLOW_DOWN_CODES: readonly number[];
/** The reconnect delay after `attempt` failures, closed with `code` (full jitter). */
export declare function backoffDelay(attempt: number, code?: number, random?: () => number): number;
/** Does `q` replace `held`? (seq above; or, first on a new socket, a later ts). */
export declare function isNewer(q: Pick<Quote, 'seq' | 'ts'>, held?: Pick<Quote, 'seq' | 'ts'> | null,
  fresh?: boolean): boolean;
