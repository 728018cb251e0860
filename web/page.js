// The news page's glue. It uses the same /widget.js that other sites embed.
//
// Symbols are set before the widget module runs, so the shared socket subscribes once to
// the right list: every symbol the feed has, or the list in the page's ?symbols= query.
const params = new URLSearchParams(window.location.search);
const symbols = params.get('symbols');
const tickers = [...document.querySelectorAll('quote-ticker')];
if (symbols !== null && symbols.trim() !== '') {
  for (const t of tickers) t.setAttribute('symbols', symbols);
}

// The widget next to this file's folder: /widget.js, or, as the page links this file
// (/v/<version>/static/page.js, service/assets.py), the same version's /v/<version>/widget.js.
await import('../widget.js');

// One Pause for the page: the strip's button also holds the side panel still (WCAG 2.2.2).
const strip = document.getElementById('ticker-strip');
const panel = document.getElementById('ticker-panel');

// The panel's sparklines start from the day's path on the tape (GET /history, reduced
// to about as many points as a sparkline can show, the high and low kept); the widget
// extends them with every quote after. Without it they start from the first quote.
const SPARK_POINTS = 160;
if (panel && typeof panel.setHistory === 'function') {
  const wanted = panel.symbols;
  const query = new URLSearchParams({ points: String(SPARK_POINTS) });
  if (wanted !== '*') query.set('symbols', wanted.join(','));
  if (wanted === '*' || wanted.length) {
    fetch(`/history?${query}`)
      .then((response) => (response.ok ? response.json() : null))
      .then((body) => body && body.history && panel.setHistory(body.history))
      .catch((err) => console.info('[page] no history for the sparklines:', err));
  }
}
if (strip && panel) {
  strip.addEventListener('pausechange', (event) => {
    panel.paused = event.detail.paused;
  });
  panel.paused = strip.paused;
}
