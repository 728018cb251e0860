// quote-stream: the JavaScript client of the PSX quote service.
//   format.js   the seed's text form of a quote (tickerText, formatQuote, ...)
//   stream.js   the stream client (connect: subscribe, board, status, reconnect)
//   compact.js  the compact encoding's decoder (used by stream.js; derivedChange, ...)
export * from './format.js';
export * from './stream.js';
export * from './compact.js';
