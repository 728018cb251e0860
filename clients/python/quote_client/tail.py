"""`quote-tail` (or `python -m quote_client tail`): the live ticker in a terminal, built on QuoteClient.

On a terminal it draws the board in place (the alternate screen, as `top` does): one line
per symbol in the seed's text form, green ▲ up and red ▼ down, and a status line with the
feed state and the time of the last update. Piped, it prints one line per update, with no
escape codes, so `grep` and friends see plain text; `--json` prints the wire form of each
quote for scripts, and `--once` prints the board once and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TextIO

from quote_core.protocol import ALL, Symbols
from quote_core.quote import Quote, QuoteError, normalize_symbol
from quote_core.text import format_line

from .client import DEFAULT_URL, QuoteClient, ServerError

GREEN, RED, YELLOW, BOLD, DIM, RESET = "\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[1m", "\x1b[2m", "\x1b[0m"
ENTER_SCREEN = "\x1b[?1049h\x1b[?25l"  # alternate screen, cursor hidden
LEAVE_SCREEN = "\x1b[?25h\x1b[?1049l"
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
FEED_COLOURS = {"live": GREEN, "stale": YELLOW, "reconnecting": RED, "connecting": YELLOW}
# A line stays bold this long after its quote changed, so the eye finds what moved.
FRESH_S = 0.8
MAX_REDRAWS_PER_S = 10


def _symbols(text: str) -> Symbols:
    """`OGDC,PPL` (commas or spaces) or `*`, checked as the service checks them."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts or parts == [ALL]:
        return ALL
    try:
        return frozenset(normalize_symbol(p) for p in parts)
    except QuoteError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ordered(text: str) -> list[str]:
    return [p.upper() for p in re.split(r"[,\s]+", text.strip()) if p and p != ALL]


def build_parser(prog: str = "quote-tail") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print live quotes: an in-place board on a terminal, one line per "
        "update when piped. Reconnects by itself; Ctrl-C quits.",
    )
    parser.add_argument("url", nargs="?", default=DEFAULT_URL,
                        help=f"the service's websocket (default {DEFAULT_URL})")
    parser.add_argument("--symbols", default="*", type=str, metavar="LIST",
                        help="comma separated symbols, or * for all (default)")
    parser.add_argument("--json", action="store_true",
                        help="one quote per line as JSON (the wire form), for scripts")
    parser.add_argument("--once", action="store_true",
                        help="print the board once the snapshot is in, then exit")
    parser.add_argument("--plain", action="store_true",
                        help="one line per update even on a terminal (no in-place board)")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                        help="colour ▲/▼ lines: auto means on a terminal unless NO_COLOR is set")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                        help="give up if the first connection takes longer (default 10)")
    return parser


def paint(quote: Quote, colour: bool, fresh: bool = False) -> str:
    """The seed's line; colour only adds to it, the arrow and sign carry direction too."""
    line = format_line(quote)
    if not colour:
        return line
    tint = GREEN if quote.change > 0 else RED if quote.change < 0 else DIM
    return f"{BOLD if fresh else ''}{tint}{line}{RESET}"


class Board:
    """The in-place view: redrawn whole from the client's board, at most 10 times a
    second, so a burst of updates costs one frame of terminal output."""

    def __init__(self, client: QuoteClient, out: TextIO, order: Sequence[str], colour: bool) -> None:
        self.client = client
        self.out = out
        self.order = {symbol: i for i, symbol in enumerate(order)}
        self.colour = colour
        self.changed_at: dict[str, float] = {}
        self.last_update: float | None = None
        self.dirty = asyncio.Event()

    def lines(self, now: float) -> list[str]:
        width, height = shutil.get_terminal_size()
        board = self.client.board
        symbols = sorted(board, key=lambda s: (self.order.get(s, len(self.order)), s))
        room = max(1, height - 2)
        shown = symbols if len(symbols) <= room else symbols[: room - 1]
        lines = [paint(board[s], self.colour, now - self.changed_at.get(s, -FRESH_S) < FRESH_S)
                 for s in shown]
        if len(shown) < len(symbols):
            lines.append(f"… {len(symbols) - len(shown)} more (a taller terminal shows them)")
        feed = self.client.feed
        updated = time.strftime("%H:%M:%S", time.localtime(self.last_update)) if self.last_update else "–"
        status = f"● {feed}  {len(symbols)} symbols  last update {updated}  {self.client.url}"
        if self.colour:
            status = f"{FEED_COLOURS.get(feed, '')}{status[:width]}{RESET}"
        lines.append("")
        lines.append(status)
        return [line if self.colour else line[:width] for line in lines]

    def draw(self) -> bool:
        """Draw once; True while some line is still shown as fresh."""
        now = time.monotonic()
        # No newline after the last line: on the bottom row it would scroll the screen.
        text = (CLEAR_LINE + "\n").join(self.lines(now))
        self.out.write(HOME + text + CLEAR_LINE + CLEAR_BELOW)
        self.out.flush()
        return any(now - t < FRESH_S for t in self.changed_at.values())

    async def run(self) -> None:
        self.out.write(ENTER_SCREEN)
        try:
            await _together(self._take_quotes(), self._take_statuses(), self._redraw())
        finally:
            self.out.write(LEAVE_SCREEN)
            self.out.flush()

    async def _take_quotes(self) -> None:
        async for quote in self.client.quotes():
            self.changed_at[quote.symbol] = time.monotonic()
            self.last_update = time.time()
            self.dirty.set()

    async def _take_statuses(self) -> None:
        async for _ in self.client.statuses():
            self.dirty.set()

    async def _redraw(self) -> None:
        fading = False
        while True:
            if fading:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FRESH_S / 2):
                        await self.dirty.wait()
            else:
                await self.dirty.wait()
            self.dirty.clear()
            fading = self.draw()
            await asyncio.sleep(1 / MAX_REDRAWS_PER_S)


async def _together(*coros: Coroutine[Any, Any, None]) -> None:
    """Run until the first one ends; its exception comes out as itself (not wrapped in an
    ExceptionGroup), so main() can tell a closed pipe from a failure."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _write_line(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


async def _report_feed(client: QuoteClient, err: TextIO) -> None:
    """Piped output stays quotes only; feed changes go to stderr."""
    first = True
    async for feed in client.statuses():
        if not first:
            _write_line(err, f"tail: feed {feed}")
        first = False


async def tail(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    symbols: Symbols = args.symbols
    order = _ordered(args.raw_symbols)
    colour = args.color == "always" or (
        args.color == "auto" and out.isatty() and not os.environ.get("NO_COLOR"))
    try:
        client = QuoteClient(args.url, symbols=symbols, open_timeout=args.connect_timeout)
        await client.start()
    except (ConnectionError, ServerError, QuoteError, OSError) as exc:
        _write_line(err, f"tail: {exc}")
        return 1
    try:
        if args.once:
            board = client.board
            missing = [s for s in order if s not in board]
            if missing:
                _write_line(err, f"tail: no quote yet for {', '.join(missing)}")
            ranked = sorted(board, key=lambda s: (order.index(s) if s in order else len(order), s))
            for symbol in ranked:
                quote = board[symbol]
                _write_line(out, quote.to_json().decode() if args.json else paint(quote, colour))
            return 0 if board else 1
        if out.isatty() and not (args.json or args.plain):
            await Board(client, out, order, colour).run()
            return 0

        async def lines() -> None:
            async for quote in client.quotes():
                _write_line(out, quote.to_json().decode() if args.json else paint(quote, colour))

        await _together(lines(), _report_feed(client, err))
        return 0
    finally:
        await client.aclose()


async def _main(args: argparse.Namespace) -> int:
    """SIGTERM ends the ticker as Ctrl-C does: the terminal is restored, the exit is 0."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await tail(args, sys.stdout, sys.stderr)
    except asyncio.CancelledError:
        return 0


def main(argv: Sequence[str] | None = None, prog: str = "quote-tail") -> int:
    """Console entry point (`quote-tail`) and `python -m quote_client tail`."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    args.raw_symbols = args.symbols
    try:
        args.symbols = _symbols(args.symbols)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--symbols: {exc}")
    if args.connect_timeout <= 0:
        parser.error("--connect-timeout must be positive")
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Point stdout at devnull so the
        # interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
