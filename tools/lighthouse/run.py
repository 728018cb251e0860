"""`make lighthouse`: the demo on a free port, Lighthouse against its page (mobile and
desktop), the figures that matter printed, the JSON reports kept in tools/lighthouse/reports/.

Lighthouse is the one pinned in package-lock.json next to this file (12.2.3: later versions
need Node 22); Chromium is CHROME_PATH (default /usr/bin/chromium, Debian's). The service is
`python -m service` without REDIS_URL (the simulated market in-process), stopped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
REPORTS = HERE / "reports"
LIGHTHOUSE = HERE / "node_modules" / ".bin" / "lighthouse"
CHROME_FLAGS = ("--headless=new --no-sandbox --disable-gpu --disable-background-networking "
                "--disable-component-update --disable-sync --no-first-run")
PRESETS = ("mobile", "desktop")  # mobile: Lighthouse's default, no --preset
CATEGORIES = ("performance", "accessibility", "best-practices", "seo")
START_TIMEOUT_S = 20.0
RUN_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until /readyz answers 200: the simulated feed is live, so the page has its board."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the service exited with {proc.returncode}; its log: {log}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.1)
    sys.exit(f"the service was not ready on {url} in {START_TIMEOUT_S:.0f}s; its log: {log}")


def run_lighthouse(url: str, preset: str, chrome: str) -> dict[str, Any]:
    out = REPORTS / f"{preset}.json"
    argv = [str(LIGHTHOUSE), url, "--output=json", f"--output-path={out}", "--quiet",
            f"--chrome-flags={CHROME_FLAGS}"]
    if preset != "mobile":
        argv.append(f"--preset={preset}")
    done = subprocess.run(argv, env={**os.environ, "CHROME_PATH": chrome}, cwd=HERE,
                          timeout=RUN_TIMEOUT_S, check=False, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        sys.exit(f"lighthouse ({preset}) failed with {done.returncode}:\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    if report.get("runtimeError"):
        sys.exit(f"lighthouse ({preset}): {report['runtimeError']}")
    return report


def summary(preset: str, report: dict[str, Any]) -> list[str]:
    cats = report["categories"]
    audits = report["audits"]

    def score(name: str) -> str:
        value = cats[name]["score"]
        return "n/a" if value is None else str(round(value * 100))

    def shown(name: str) -> str:
        audit = audits[name]
        value = audit.get("displayValue") or ""
        mark = "pass" if audit.get("score") == 1 else ("n/a" if audit.get("score") is None
                                                       else "FAIL")
        return f"{mark} {value}".strip()

    compression = audits["uses-text-compression"]
    saving = (compression.get("details") or {}).get("overallSavingsBytes", 0)
    cache = audits["uses-long-cache-ttl"]
    short = len((cache.get("details") or {}).get("items", []))
    return [
        f"{preset}: " + " / ".join(f"{c} {score(c)}" for c in CATEGORIES),
        f"  main-thread work {audits['mainthread-work-breakdown']['numericValue']:.0f} ms, "
        f"total blocking time {audits['total-blocking-time']['numericValue']:.0f} ms, "
        f"CLS {audits['cumulative-layout-shift']['numericValue']:.3f}, "
        f"FCP {audits['first-contentful-paint']['numericValue']:.0f} ms, "
        f"LCP {audits['largest-contentful-paint']['numericValue']:.0f} ms",
        f"  text compression: {shown('uses-text-compression')} "
        f"({saving / 1024:.1f} KiB to save)",
        f"  cache policy: {shown('uses-long-cache-ttl')} ({short} resources with a short lifetime)",
    ]


def main() -> None:
    chrome = os.environ.get("CHROME_PATH") or "/usr/bin/chromium"
    if shutil.which(chrome) is None:
        sys.exit(f"CHROME_PATH: no Chromium at {chrome} (apt-get install chromium)")
    if not LIGHTHOUSE.exists():
        sys.exit(f"{LIGHTHOUSE} not found: run `make lighthouse` (it runs npm ci here)")
    REPORTS.mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(HOST="127.0.0.1", PORT=str(port))
    log = REPORTS / "service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_ready(url, proc, log)
        lines: list[str] = []
        for preset in PRESETS:
            print(f"lighthouse {preset} on {url}/ ...", flush=True)
            lines += summary(preset, run_lighthouse(url + "/", preset, chrome))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    print("\n".join(lines))
    print(f"reports: {', '.join(str(REPORTS / f'{p}.json') for p in PRESETS)}")


if __name__ == "__main__":
    main()
