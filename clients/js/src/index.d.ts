// quote-stream: the JavaScript client of the PSX quote service.
export * from './format.js';
export * from './stream.js';
export * from './compact.js';
