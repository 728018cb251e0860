// The <quote-ticker> element's stylesheet: one constructed sheet shared by every element
// (a <style> in each shadow root where constructed sheets are missing).

export const CSS = `
:host {
  --_up: var(--qt-up, #0a7a3c);
  --_down: var(--qt-down, #c1262e);
  --_flat: var(--qt-flat, #5b6169);
  --_bg: var(--qt-bg, #ffffff);
  --_fg: var(--qt-fg, #17191c);
  --_muted: var(--qt-muted, #5b6169);
  --_border: var(--qt-border, #d8dce1);
  --_focus: var(--qt-focus, #1a5fb4);
  display: block;
  box-sizing: border-box;
  min-width: 0;
  color: var(--_fg);
  background: var(--_bg);
  font-family: var(--qt-font, system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif);
  font-size: var(--qt-font-size, 14px);
  line-height: 1.4;
}
:host([hidden]) { display: none; }
*, *::before, *::after { box-sizing: inherit; }

.wrap { display: flex; min-width: 0; height: 100%; container-type: inline-size; }
.wrap.strip { flex-direction: row; align-items: stretch; }
.wrap.panel { flex-direction: column; }

.controls {
  display: flex; align-items: center; gap: .5em; flex: none;
  padding: .35em .6em; color: var(--_muted); font-size: .86em; white-space: nowrap;
}
/* The strip's controls keep one width whatever they say ("Prices at 14:32 UTC" before the
   script runs, then "Connecting…", "Live"), so the quotes beside them never shift. */
.strip .controls { border-right: 1px solid var(--_border); width: 13.5em; }
.panel .controls { justify-content: space-between; border-bottom: 1px solid var(--_border); }
.controls[hidden] { display: none; }
.state { display: inline-flex; align-items: center; gap: .4em; flex: 1 1 auto; min-width: 0; }
.status { overflow: hidden; text-overflow: ellipsis; }
.dot {
  width: .62em; height: .62em; border-radius: 50%; flex: none;
  background: var(--_muted); border: 1px solid transparent;
}
.feed-live .dot { background: var(--_up); }
.feed-stale .dot { background: var(--qt-stale, #b26b00); border-radius: 1px; transform: rotate(45deg); }
.feed-reconnecting .dot, .feed-connecting .dot { background: transparent; border-color: var(--_muted); }

button {
  font: inherit; font-size: 1em; color: var(--_fg); background: var(--_bg);
  border: 1px solid var(--_border); border-radius: 4px; padding: .15em .6em;
  cursor: pointer; display: inline-flex; align-items: center; gap: .35em; min-height: 24px;
  flex: none;
}
button:hover { border-color: var(--_muted); }
button[aria-pressed="true"] { background: var(--_fg); color: var(--_bg); border-color: var(--_fg); }
button:focus-visible, .viewport:focus-visible, .list:focus-visible {
  outline: 2px solid var(--_focus); outline-offset: 2px;
}
.icon {
  display: inline-block; flex: none; width: .62em; height: .72em;
  border-left: .2em solid currentColor; border-right: .2em solid currentColor;
}
[aria-pressed="true"] .icon {
  border: 0; background: currentColor; clip-path: polygon(0 0, 100% 50%, 0 100%);
}
/* A narrow strip (a phone, a sidebar): the Pause button shows its icon only (its name is
   still read) and the status keeps what fits. */
@container (max-width: 34em) {
  .strip .controls { width: 7.4em; padding: .35em .45em; gap: .35em; }
  .strip .pause { padding: .15em .45em; }
  .strip .pause .label, .strip .asof-words {
    position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%);
    white-space: nowrap;
  }
}

.viewport { position: relative; flex: 1 1 auto; min-width: 0; overflow: hidden; }
/* A box of its own size whose inside never changes the page around it (contain: strict),
   so a new price lays out only this row, not the page. One line of items high. */
.strip .viewport { display: flex; align-items: center; contain: strict; height: 2.1em; }
.strip.still .viewport { overflow-x: auto; scrollbar-width: thin; }
/* The belt carries the list and, while the strip scrolls, its echo: a second copy right
   after it, so the loop never shows a gap or jumps back. Only its transform is animated
   (in quote-ticker.js, with the Web Animations API), which the compositor runs: the page's
   main thread does nothing per frame. */
.belt { display: flex; flex: none; width: max-content; }
.panel .belt { display: contents; }
.track {
  list-style: none; margin: 0; padding: 0 .6em; display: flex; gap: 0;
  width: max-content; flex: none; white-space: nowrap;
}
.echo { display: none; }
.moving .echo { display: flex; }
.strip .row { padding: .35em .9em; border-right: 1px solid var(--_border); }
.strip .row:last-child { border-right: 0; }
.moving .row:last-child { border-right: 1px solid var(--_border); }

.panel .viewport { overflow: auto; flex: 1 1 auto; }
.panel .track { display: block; width: auto; padding: 0; white-space: normal; }
.panel .row {
  display: grid; grid-template-columns: minmax(0, 1fr) var(--qt-spark-width, 84px);
  align-items: center; gap: .6em; padding: .4em .6em; border-bottom: 1px solid var(--_border);
}
.panel .row:last-child { border-bottom: 0; }

.item { border-radius: 3px; padding: .05em .2em; font-variant-numeric: tabular-nums; }
.sym { font-weight: 700; }
/* Panel rows read on two lines: symbol and price, then the change. The break is generated
   content on an empty inline span, which innerText leaves out, so the item still reads as
   the one seed line. */
.panel .sym { display: inline-block; min-width: 48%; }
.panel .px { display: inline-block; min-width: 42%; text-align: right; }
.panel .br::before { content: "\\A"; white-space: pre; }
.panel .chg, .panel .pct, .panel .arw { font-size: .9em; }
.panel .arw { font-size: .75em; margin-left: 0; }
.panel .tri { margin-left: 0; }
.panel .item { display: block; }
.px { font-weight: 600; }
/* The numbers keep the most room they have needed (quote-ticker.js fill()), so a shorter
   price or percentage never pulls the items after it. */
.px, .chg, .pct { display: inline-block; }
.px, .chg { text-align: right; }
.w1 { min-width: 1ch; } .w2 { min-width: 2ch; } .w3 { min-width: 3ch; } .w4 { min-width: 4ch; }
.w5 { min-width: 5ch; } .w6 { min-width: 6ch; } .w7 { min-width: 7ch; } .w8 { min-width: 8ch; }
.w9 { min-width: 9ch; } .w10 { min-width: 10ch; } .w11 { min-width: 11ch; } .w12 { min-width: 12ch; }
.w13 { min-width: 13ch; } .w14 { min-width: 14ch; } .w15 { min-width: 15ch; } .w16 { min-width: 16ch; }
.up .chg, .up .pct, .up .arw, .up .tri { color: var(--_up); }
.down .chg, .down .pct, .down .arw, .down .tri { color: var(--_down); }
.flat .chg, .flat .pct, .flat .arw, .flat .tri { color: var(--_flat); }
.arw { font-size: .8em; margin-left: .35em; }
/* Indices carry no arrow text (the seed's form); the shape is drawn, not written. */
.tri {
  display: inline-block; width: .62em; height: .55em; margin: 0 .3em 0 .35em;
  background: currentColor; vertical-align: .05em;
}
.up .tri { clip-path: polygon(50% 0, 100% 100%, 0 100%); }
.down .tri { clip-path: polygon(0 0, 100% 0, 50% 100%); }
.flat .tri { clip-path: polygon(0 35%, 100% 35%, 100% 65%, 0 65%); }

/* Visually hidden but read, and part of innerText. Inline-block (not absolute) so that
   innerText gets no line breaks around it; pre keeps its leading space. */
.vh {
  display: inline-block; width: 1px; height: 1px; margin: 0 -1px 0 0; padding: 0; border: 0;
  overflow: hidden; clip-path: inset(50%); white-space: pre; vertical-align: top;
}

/* An update's flash: a tint behind the item for a moment, set and taken off by
   quote-ticker.js (light/unlight) with the renders it does anyway, so it costs no frame of
   its own. */
.flash-up { background: var(--qt-flash-up, rgba(10, 122, 60, .22)); }
.flash-down { background: var(--qt-flash-down, rgba(193, 38, 46, .2)); }
/* On the tint the figures take a darker shade of their colour, so they keep a contrast of
   4.5:1 (WCAG 1.4.3) while lit: 5.6:1 and more on the default colours. */
:is(.flash-up, .flash-down).up :is(.chg, .pct, .arw, .tri) { color: var(--qt-up-on-flash, #065a2c); }
:is(.flash-up, .flash-down).down :is(.chg, .pct, .arw, .tri) { color: var(--qt-down-on-flash, #961a20); }
:is(.flash-up, .flash-down).flat :is(.chg, .pct, .arw, .tri) { color: var(--qt-flat-on-flash, #464b52); }

.feed-stale .item, .feed-reconnecting .item { opacity: .62; }
.spark { display: block; width: 100%; height: var(--qt-spark-height, 26px); overflow: visible; }
.spark .line { fill: none; stroke-width: 1.5; stroke-linejoin: round; stroke-linecap: round; }
.spark .base { stroke: var(--_border); stroke-width: 1; stroke-dasharray: 3 3; }
.row.up .line { stroke: var(--_up); }
.row.down .line { stroke: var(--_down); }
.row.flat .line { stroke: var(--_flat); }
/* Rendered by the server (service/page.py) and not yet taken over by the script, or with
   no script at all: no status or Pause that cannot work, and no sparkline not drawn yet. */
:host(:not(:defined)) .pause { display: none; }
.spark:not(:has(.line[points])) { visibility: hidden; }
.empty { padding: .35em .9em; color: var(--_muted); }
.empty[hidden] { display: none; }

@media (prefers-reduced-motion: reduce) {
}
@media (forced-colors: active) {
  .dot { forced-color-adjust: none; }
  .tri { background: CanvasText; }
}
`;

let sharedSheet = null;
export function styleFor(root) {
  try {
    if (!sharedSheet) {
      sharedSheet = new CSSStyleSheet();
      sharedSheet.replaceSync(CSS);
    }
    root.adoptedStyleSheets = [sharedSheet];
  } catch (_) {
    const style = document.createElement('style');
    style.textContent = CSS;
    root.appendChild(style);
  }
}
