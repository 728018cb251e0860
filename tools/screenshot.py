"""`make screenshot`: the README's pictures, taken from what `make run` shows.

Starts the demo (`python -m service` without REDIS_URL: the simulated session, which opens
at the seed's board) on a free port, opens the page in Debian's Chromium (driven by
Playwright; never a downloaded browser) at desktop and phone sizes once the strip is live
and full, and writes docs/screenshot.png and docs/screenshot-phone.png. Running animations
are held at their start for the picture (Playwright's animations="disabled"), so the strip
shows its first quotes.

    python tools/screenshot.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# As root and without the network Chromium's background services would look for.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = [("screenshot.png", 1280, 900), ("screenshot-phone.png", 390, 844)]
SYMBOLS = 34  # the seed's board: 30 stocks, 4 indices
WAIT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the demo exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the demo was not ready at {url} within {WAIT_S:.0f} s")
        time.sleep(0.1)


def take(url: str, out: Path) -> list[Path]:
    """The page at `url`, live and full, at each size: the files written."""
    if not CHROMIUM.exists():
        raise SystemExit(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for name, width, height in SHOTS:
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(url + "/")
                strip = page.locator("#ticker-strip")
                strip.and_(page.locator(f'[data-feed="live"][data-count="{SYMBOLS}"]')).wait_for(
                    timeout=WAIT_S * 1000)
                page.locator("#ticker-panel").and_(page.locator('[data-feed="live"]')).wait_for(
                    timeout=WAIT_S * 1000)
                path = out / name
                page.screenshot(path=str(path), animations="disabled", caret="hide")
                written.append(path)
                page.close()
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs",
                        help="folder for screenshot.png and screenshot-phone.png (default: docs/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(HOST="127.0.0.1", PORT=str(port), LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        for path in take(url, args.out):
            print(f"wrote {path}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
