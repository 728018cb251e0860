"""GET /: the news page with the current board already written into its tickers.

web/index.html is the template. Into each <quote-ticker> it holds, the server writes a
declarative shadow root (<template shadowrootmode="open">) holding the widget's own
stylesheet (web/widget/styles.js) and the markup the widget itself builds
(web/widget/quote-ticker.js: build, makeRow, fill), so the prices show with JavaScript
disabled and to crawlers, and when the widget's module runs it takes those nodes over and
updates them in place, without a flash.

Each item reads as the seed's line (docs/PROTOCOL.md, "How the ticker reads") exactly as
quote_core.text.format_line writes it, the formatter the JS one is held equal to
(tests/test_web_format.py); this module only cuts that line into the widget's parts.
Everything from the feed or the request is escaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from html.parser import HTMLParser
from pathlib import Path

from quote_core.quote import Quote, QuoteError, normalize_symbol
from quote_core.text import DECREASED, INCREASED, NO_CHANGE, format_line

from .compact import Entry

# A second: the page carries the board of that moment, and the widget brings it up to
# date at once; a burst of visitors costs one render a second per URL behind a cache.
CACHE_CONTROL = "public, max-age=1"

# The widget's texts (quote-ticker.js: FEED_TEXT.connecting, the empty state, Pause).
CONNECTING = "Connecting\u2026"
WAITING = "Waiting for prices\u2026"
DIRECTION = {INCREASED: "up", DECREASED: "down", NO_CHANGE: "flat"}


@dataclass(frozen=True, slots=True)
class Parts:
    """A quote's text form in the widget's pieces (clients/js/src/format.js formatQuote)."""

    symbol: str
    kind: str
    direction: str
    price: str
    words: str
    arrow: str
    change: str
    pct: str


def parts(quote: Quote) -> Parts:
    """format_line's line, cut where the widget's spans are."""
    line = format_line(quote)
    rest = line.removeprefix(quote.symbol + " ")
    price, _, rest = rest.partition(" ")
    words = next((w for w in DIRECTION if rest.startswith(w + " ")), None)
    if words is None:
        raise ValueError(f"not a ticker line: {line!r}")
    rest = rest[len(words) + 1:]
    arrow = ""
    if quote.kind != "index":
        arrow, _, rest = rest.partition(" ")
    change, _, pct = rest.partition(" ")
    cut = Parts(quote.symbol, quote.kind, DIRECTION[words], price, words, arrow, change, pct)
    if line_of(cut) != line:
        raise ValueError(f"cannot cut the ticker line {line!r}")
    return cut


def line_of(p: Parts) -> str:
    """The line the parts read as (an item's innerText)."""
    if p.kind == "index":
        return f"{p.symbol} {p.price} {p.words} {p.change} {p.pct}"
    return f"{p.symbol} {p.price} {p.words} {p.arrow} {p.change} {p.pct}"


def item_html(p: Parts) -> str:
    """quote-ticker.js fill(): SYM␠PRICE[␠words␠]▲␠CHANGE␠(PCT%), indices ◭ without text
    and without the space after it; each number's room in characters (w<n>) as fill()
    starts it."""
    arrow = ('<span class="tri" aria-hidden="true"></span>' if p.kind == "index"
             else f'<span class="arw" aria-hidden="true">{escape(p.arrow)}</span> ')
    return (f'<span class="item {p.direction}" part="item" data-symbol="{escape(p.symbol)}">'
            f'<b class="sym">{escape(p.symbol)}</b> '
            f'<span class="px w{len(p.price)}">{escape(p.price)}</span>'
            f'<span class="vh"> {escape(p.words)} </span><span class="br" aria-hidden="true"></span>'
            f'{arrow}<span class="chg w{len(p.change)}">{escape(p.change)}</span> '
            f'<span class="pct w{len(p.pct)}">{escape(p.pct)}</span></span>')


# quote-ticker.js makeRow(): the panel's sparkline, drawn by the widget from /history.
SPARK = ('<svg class="spark" viewBox="0 0 100 26" preserveAspectRatio="none" aria-hidden="true" '
         'focusable="false"><line class="base" x1="0" x2="100" vector-effect="non-scaling-stroke">'
         '</line><polyline class="line" vector-effect="non-scaling-stroke"></polyline></svg>')


def row_html(p: Parts, layout: str) -> str:
    spark = SPARK if layout == "panel" else ""
    return f'<li class="row {p.direction}" part="row">{item_html(p)}{spark}</li>'


@dataclass(frozen=True, slots=True)
class Ticker:
    """A <quote-ticker> of the template, by its attributes."""

    layout: str
    label: str
    controls: bool
    symbols: str | None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, str | None]) -> Ticker:
        layout = "panel" if attrs.get("layout") == "panel" else "strip"
        label = attrs.get("label") or ("Market prices" if layout == "panel" else "Market ticker")
        return cls(layout, label, attrs.get("controls") != "none", attrs.get("symbols"))


def widget_symbols(value: str | None) -> list[str] | None:
    """The widget's parseSymbols: None for every symbol (absent, empty or "*"), else the
    valid symbols in their order, upper-cased, once each; invalid ones are left out."""
    if value is None or value.strip() in ("", "*"):
        return None
    out: list[str] = []
    for part in re.split(r"[\s,]+", value.strip()):
        try:
            symbol = normalize_symbol(part.upper())
        except QuoteError:
            continue
        if symbol not in out:
            out.append(symbol)
    return out


def ordered(board: Mapping[str, Quote], wants: list[str] | None) -> list[Quote]:
    """The widget's order: a list's own, or indices first and then by symbol."""
    if wants is not None:
        return [board[s] for s in wants if s in board]
    return sorted(board.values(), key=lambda q: (0 if q.kind == "index" else 1, q.symbol))


def as_of_html(quotes: Sequence[Quote]) -> str:
    """When the prices shown were taken (the newest quote's time), for a reader without
    JavaScript: "Prices at 14:32 UTC" (a narrow strip shows the time only)."""
    if not quotes:
        return CONNECTING
    taken = datetime.fromtimestamp(max(q.ts for q in quotes) / 1000, tz=UTC)
    return (f'<span class="asof-words">Prices at </span><time datetime="'
            f'{taken.isoformat(timespec="seconds").replace("+00:00", "Z")}">'
            f'{taken:%H:%M} UTC</time>')


def shadow_html(ticker: Ticker, quotes: Sequence[Quote], css: str) -> str:
    """What quote-ticker.js build() makes, with a row per quote, as a declarative shadow
    root: the state the widget starts in (connecting), before its script ran, its status
    saying when the prices were taken."""
    rows = "".join(row_html(parts(q), ticker.layout) for q in quotes)
    controls = "" if ticker.controls else " hidden"
    empty = " hidden" if quotes else ""
    return (
        f'<template shadowrootmode="open"><style>{css}</style>'
        f'<div class="wrap {ticker.layout} feed-connecting still" part="container">'
        f'<div class="controls" part="controls"{controls}><span class="state">'
        '<span class="dot" aria-hidden="true"></span>'
        f'<span class="status" role="status" part="status">{as_of_html(quotes)}</span></span>'
        '<button type="button" class="pause" part="pause" aria-pressed="false" '
        'title="Pause live updates"><span class="icon" aria-hidden="true"></span>'
        '<span class="label">Pause</span></button></div>'
        f'<div class="viewport" part="viewport" role="region" tabindex="0" '
        f'aria-label="{escape(ticker.label)}"><div class="belt" part="belt">'
        f'<ul class="track" part="list" role="list">{rows}</ul></div>'
        f'<div class="empty" part="empty"{empty}>{WAITING}</div></div></div></template>'
    )


_STYLES = re.compile(r"export const CSS = `(?P<css>[^`]*)`;")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def widget_css(styles_js: str) -> str:
    """The CSS template literal of web/widget/styles.js, as JavaScript reads it."""
    m = _STYLES.search(styles_js)
    if m is None or "${" in m["css"]:
        raise ValueError("web/widget/styles.js: no plain `export const CSS = `...`;` found")
    raw = m["css"]
    if any(c not in "\\`$" for c in re.findall(r"\\(.)", raw, re.DOTALL)):
        raise ValueError("web/widget/styles.js: an escape other than \\\\ \\` \\$ in CSS")
    css = _ESCAPE.sub(lambda e: e[1], raw)
    if "</" in css:
        raise ValueError("web/widget/styles.js: '</' in CSS would end the <style>")
    return css


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.attrs: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attrs = dict(attrs)


_TICKER_TAG = re.compile(r"<quote-ticker\b[^>]*>", re.IGNORECASE)
# A <link href="/..."> or <script src="/..."> of the template: one of this origin's files.
_ASSET_REF = re.compile(r'(<(?:link|script)\b[^>]*?\s(?:href|src)=")(?=/[^/])', re.IGNORECASE)


class Page:
    """The template, cut at each <quote-ticker> start tag, and the widget's CSS. `assets`
    goes before the template's own files' URLs: the versioned tree (service/assets.py)."""

    def __init__(self, template: str, css: str, assets: str = "") -> None:
        self.css = css
        template = _ASSET_REF.sub(lambda m: m[1] + assets, template)
        self.text: list[str] = []
        self.tickers: list[Ticker] = []
        at = 0
        for m in _TICKER_TAG.finditer(template):
            tags = _Tags()
            tags.feed(m[0])
            tags.close()
            self.text.append(template[at:m.end()])
            self.tickers.append(Ticker.from_attrs(tags.attrs))
            at = m.end()
        self.text.append(template[at:])

    def render(self, board: Mapping[str, Entry], query_symbols: str | None = None
               ) -> str:
        """The page with `board` (the hub's: symbol -> (seq, quote JSON, quote)) in every
        ticker; `query_symbols`, the page's ?symbols=, applies to each as page.js applies it."""
        quotes: dict[str, Quote] = {symbol: entry[2] for symbol, entry in board.items()}
        override = query_symbols if query_symbols is not None and query_symbols.strip() else None
        out = [self.text[0]]
        for ticker, text in zip(self.tickers, self.text[1:], strict=True):
            wants = widget_symbols(override if override is not None else ticker.symbols)
            out.append(shadow_html(ticker, ordered(quotes, wants), self.css))
            out.append(text)
        return "".join(out)


_loaded: dict[tuple[Path, Path], tuple[tuple[int, int, str], Page]] = {}


def load(template: Path, styles_js: Path, assets: str = "") -> Page:
    """The page for these files and assets' prefix, read again when any of them changes."""
    stamp = (template.stat().st_mtime_ns, styles_js.stat().st_mtime_ns, assets)
    held = _loaded.get((template, styles_js))
    if held is None or held[0] != stamp:
        page = Page(template.read_text(encoding="utf-8"),
                    widget_css(styles_js.read_text(encoding="utf-8")), assets)
        held = _loaded[template, styles_js] = (stamp, page)
    return held[1]
