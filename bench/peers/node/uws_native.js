// uWebSockets.js, refusing the package's silent JavaScript fallback: without its native
// binary it would not be uWebSockets, so a peer exits (code 3) naming what did not load.
'use strict';
const uWS = require('@trufflesuite/uws-js-unofficial');

const native = Object.keys(require.cache).some((k) => /uws_[^/]*\.node$/.test(k));
if (!native) {
  console.error('uWebSockets.js native binary did not load (the package fell back to JavaScript); '
    + `node ${process.version}, modules ${process.versions.modules}, ${process.platform}-${process.arch}`);
  process.exit(3);
}

module.exports = uWS;
