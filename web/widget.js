// <quote-ticker>: a live market ticker. The one-tag entry point:
//   <script type="module" src="https://HOST/widget.js"></script>
//   <quote-ticker symbols="OGDC,PPL,KSE100"></quote-ticker>
//
// No build step: plain ES modules, imported relative to this file, so they come from the
// host that served it (each with CORS, like this one):
//   js/format.js              the seed's text form of a quote  (clients/js/src/format.js)
//   js/stream.js              the stream client: one socket per URL, board by seq,
//                             feed status, reconnect          (clients/js/src/stream.js)
//   js/compact.js             the compact encoding the socket asks for by default
//   widget/quote-ticker.js    the element (Shadow DOM, all feed data inserted as text)
//   widget/styles.js          its stylesheet
//
// Importing this module defines the element (unless a `quote-ticker` is already defined);
// nothing else happens until an element is connected to a document. Its exports are the
// same as before the split (web/README.md), plus the stream client's.

export * from './js/format.js';
export * from './js/stream.js';
export {
  DEFAULT_MAX_HZ, QuoteTicker, parseMaxHz, parseSymbols, resolveSocketUrl,
} from './widget/quote-ticker.js';
