"""Where a benchmark's results go: `<stem>.json` (the figures) and `<stem>.md` (the report),
written together and the report printed, so every tool leaves the same pair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, stem: str, data: dict[str, Any], report: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"{stem}.md").write_text(report)
    print(report)
    print(f"wrote {out}/{stem}.md, {stem}.json")
