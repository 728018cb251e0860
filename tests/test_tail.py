"""`python -m quote_client tail` as a subprocess against the real service: the seed's
text form, JSON lines, no escape codes unless asked for or on a terminal, and a clean
exit on Ctrl-C, SIGTERM and a closed pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator

import orjson
import pytest

from quote_client.tail import ENTER_SCREEN, LEAVE_SCREEN
from quote_core.quote import Quote
from quote_core.text import TickerLine, parse_line
from tests.redis_server import free_port
from tests.service_proc import ROOT, ServiceProcess, run_service

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STOCK_LINE = re.compile(r"[A-Z0-9.\-]{1,16} \d+\.\d\d (Increased By ▲|Decreased By ▼|No Change ▼) "
                        r"-?\d+\.\d\d \(-?\d+(\.\d+)?%\)")
INDEX_LINE = re.compile(r"[A-Z0-9.\-]{1,16} \d{1,3}(,\d{3})* (Increased By|Decreased By|No Change) "
                        r"-?\d+(\.\d)? \(-?\d+(\.\d+)?%\)")


def seed_line(line: str) -> TickerLine:
    """The seed's text form, checked by shape and read back with parse_line."""
    assert STOCK_LINE.fullmatch(line) or INDEX_LINE.fullmatch(line), f"not the text form: {line!r}"
    return parse_line(line)


SEED_SYMBOLS = 34
# LINES and COLUMNS would override the pty's size (pytest-xdist's workers have them set).
ENV = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "REDIS_URL", "LINES", "COLUMNS")}


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    yield from run_service({"SIM_RATE": "100"}, ready="/readyz")


def tail(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quote_client", "tail", *args], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "quote_client", "tail", *args], cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def read_lines(proc: subprocess.Popen[str], count: int, timeout: float = 10) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count:
        assert time.monotonic() < deadline, f"only {len(lines)} lines in {timeout}s"
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            assert line, f"tail ended early: {proc.wait(5)} {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line.rstrip("\n"))
    return lines


def test_once_prints_the_board_in_the_seeds_text_form(service: ServiceProcess) -> None:
    result = tail("--once", "--symbols", "OGDC,KSE100", service.ws_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "\x1b" not in result.stdout, "no escape codes when not on a terminal"
    assert [seed_line(line).symbol for line in lines] == ["OGDC", "KSE100"], "in the asked order"
    ogdc, kse = (seed_line(line) for line in lines)
    assert ogdc.kind == "stock" and re.fullmatch(r"OGDC \d+\.\d\d (Increased By ▲|Decreased By ▼|"
                                                 r"No Change ▼) -?\d+\.\d\d \(-?[\d.]+%\)", lines[0])
    assert kse.kind == "index" and re.fullmatch(r"KSE100 \d{1,3}(,\d{3})* [A-Za-z ]+ -?[\d.]+ "
                                                r"\(-?[\d.]+%\)", lines[1])


def test_once_json_prints_the_wire_form(service: ServiceProcess) -> None:
    result = tail("--once", "--json", "--symbols", "ogdc, PPL , KSE100", service.ws_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        raw = orjson.loads(line)
        assert Quote.from_dict(raw, require_seq=True).to_dict() == raw
    assert [orjson.loads(line)["symbol"] for line in lines] == ["OGDC", "PPL", "KSE100"]


def test_once_with_every_symbol(service: ServiceProcess) -> None:
    result = tail("--once", service.ws_url)
    assert result.returncode == 0, result.stderr
    symbols = [seed_line(line).symbol for line in result.stdout.splitlines()]
    assert len(symbols) == SEED_SYMBOLS and symbols == sorted(symbols)


def test_colour_can_be_forced_and_is_only_added(service: ServiceProcess) -> None:
    result = tail("--once", "--color", "always", "--symbols", "OGDC,PPL,KSE100", service.ws_url)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" in result.stdout
    for line in result.stdout.splitlines():
        quote = seed_line(ANSI.sub("", line))
        colour = "\x1b[32m" if quote.change > 0 else "\x1b[31m" if quote.change < 0 else "\x1b[2m"
        assert line.startswith(colour), line


def test_unknown_symbols_are_reported(service: ServiceProcess) -> None:
    result = tail("--once", "--symbols", "OGDC,NOPE", service.ws_url)
    assert result.returncode == 0
    assert [seed_line(line).symbol for line in result.stdout.splitlines()] == ["OGDC"]
    assert "no quote yet for NOPE" in result.stderr
    result = tail("--once", "--symbols", "NOPE", service.ws_url)
    assert result.returncode == 1 and result.stdout == ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_streams_the_board_then_updates_and_stops_cleanly(
    service: ServiceProcess, sig: signal.Signals
) -> None:
    proc = spawn("--symbols", "*", service.ws_url)
    try:
        lines = read_lines(proc, SEED_SYMBOLS + 10)
        board = [seed_line(line).symbol for line in lines[:SEED_SYMBOLS]]
        assert len(set(board)) == SEED_SYMBOLS, "the whole board comes first"
        for line in lines[SEED_SYMBOLS:]:
            seed_line(line)
        assert not any("\x1b" in line for line in lines)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=5)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        proc.kill()
        proc.wait(5)


def test_json_stream_and_a_closed_pipe(service: ServiceProcess) -> None:
    """`tail --json | head -3`: the reader leaving is a normal end, not a traceback."""
    proc = spawn("--json", "--symbols", "OGDC,PPL", service.ws_url)
    try:
        for line in read_lines(proc, 5):
            Quote.from_dict(orjson.loads(line), require_seq=True)
        assert proc.stdout is not None
        proc.stdout.close()
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(5)


def test_on_a_terminal_the_board_is_drawn_in_place(service: ServiceProcess) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 12, 80, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "quote_client", "tail", service.ws_url],
                            cwd=ROOT, env={**ENV, "TERM": "xterm"}, stdin=slave, stdout=slave,
                            stderr=slave)
    os.close(slave)

    def read_for(seconds: float) -> bytes:
        out = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
        return out

    try:
        shown = read_for(2.0).decode("utf-8", errors="replace")
        proc.send_signal(signal.SIGINT)
        shown += read_for(2.0).decode("utf-8", errors="replace")
        assert proc.wait(5) == 0
    finally:
        proc.kill()
        proc.wait(5)
        os.close(master)
    assert shown.startswith(ENTER_SCREEN) and shown.rstrip().endswith(LEAVE_SCREEN)
    frames = shown.split("\x1b[H")[1:]
    assert len(frames) >= 3, "redrawn in place as updates arrive"
    last = [ANSI.sub("", line) for line in frames[-1].split("\r\n")]
    assert len(last) <= 12, "the board fits the terminal"
    board = [line for line in last if line and not line.startswith(("●", "…"))]
    assert len(board) == 12 - 3
    for line in board:
        seed_line(line)
    assert any(line.startswith("● live") and "34 symbols" in line for line in last)
    assert "… 25 more" in "".join(last)
    for raw in frames[-1].split("\r\n"):
        text = ANSI.sub("", raw)
        if text and not text.startswith(("●", "…")):
            change = seed_line(text).change
            colour = "\x1b[32m" if change > 0 else "\x1b[31m" if change < 0 else "\x1b[2m"
            assert colour in raw.split(text)[0], f"green ▲, red ▼: {raw!r}"


def test_nothing_listening_exits_1_with_a_message() -> None:
    result = tail("--connect-timeout", "1", f"ws://127.0.0.1:{free_port()}/ws", timeout=10)
    assert result.returncode == 1
    assert "could not connect" in result.stderr and "Traceback" not in result.stderr


def test_usage_errors_exit_2() -> None:
    result = tail("--symbols", "OGDC,<b>")
    assert result.returncode == 2 and "invalid symbol" in result.stderr
    result = subprocess.run([sys.executable, "-m", "quote_client"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and "tail" in result.stderr
