"""The README is a newcomer's first page, and docs/ holds the rest: their commands, tables,
links and pictures must be true."""

from __future__ import annotations

import os
import posixpath
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from urllib.parse import unquote

import pytest

from publisher.settings import Settings as PublisherSettings
from service.settings import Settings
from tests.service_proc import ROOT, ServiceProcess, run_example, run_service

README = (ROOT / "README.md").read_text(encoding="utf-8")
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")


def test_it_leads_with_the_two_commands() -> None:
    head = README[: README.index("\n## ")]
    assert "make run" in head and "make test" in head
    assert "http://127.0.0.1:8000" in head and "no Redis" in head


def test_it_stays_short_with_a_contents_list_and_an_index_of_docs() -> None:
    """A newcomer reads it to the end: the operational detail lives in docs/, each
    document one line of the README's index."""
    assert len(README.splitlines()) <= 250
    contents = section(README, "## Contents")
    for heading in re.findall(r"^## (.+)$", README, re.MULTILINE):
        if heading != "Contents":
            assert f"(#{slug(heading)})" in contents, heading
    index = section(README, "## Documentation")
    for doc in sorted((ROOT / "docs").glob("*.md")):
        lines = [line for line in index.splitlines() if f"(docs/{doc.name})" in line]
        assert len(lines) == 1, f"docs/{doc.name}: one line of the index"


def setting_variables() -> set[str]:
    """The variables of the configuration reference's settings table: its first column, up
    to the next heading (Docker Compose's own variables follow in a table of their own)."""
    start = CONFIGURATION.index("| variable | default | meaning |")
    table = CONFIGURATION[start:CONFIGURATION.index("\n## ", start)]
    rows = [line.split("|")[1] for line in table.splitlines()[2:] if line.startswith("|")]
    return {name for cell in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}


def test_the_configuration_reference_lists_every_setting_and_only_settings() -> None:
    listed = setting_variables()
    real = {f.name.upper() for f in (*fields(Settings), *fields(PublisherSettings))}
    assert not real - listed, f"settings missing from docs/configuration.md: {sorted(real - listed)}"
    assert not listed - real, f"not settings, in docs/configuration.md: {sorted(listed - real)}"


def test_the_widget_table_names_every_attribute_and_custom_property() -> None:
    """What the element observes and the custom properties its styles read are all in the
    README's "Embed the ticker"."""
    embed = section(README, "## Embed the ticker")
    element = (ROOT / "web" / "widget" / "quote-ticker.js").read_text(encoding="utf-8")
    observed = re.search(r"observedAttributes\(\)\s*\{\s*return \[([^\]]*)\]", element)
    assert observed is not None
    attributes = re.findall(r"'([a-z-]+)'", observed.group(1))
    assert "max-hz" in attributes and "token" in attributes
    for name in attributes:
        assert f"| `{name}` |" in embed, name
    styles = (ROOT / "web" / "widget" / "styles.js").read_text(encoding="utf-8") + element
    for prop in sorted(set(re.findall(r"--qt-[a-z-]+", styles))):
        assert f"`{prop}`" in embed, prop
    for part in sorted(set(re.findall(r"\bpart: '([a-z]+)'", element))):
        assert f"`{part}`" in embed, part
    for event in ("feedchange", "pausechange", "tokenrequest"):
        assert f"`{event}`" in embed, event


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_linked_files_exist() -> None:
    """The README's and docs/'s links and pictures (Markdown and <img>), from where each is."""
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#]+)\)", text) + re.findall(r'<img src="([^"]+)"', text):
            if not target.startswith("http"):
                assert (doc.parent / target).exists(), f"{doc.name}: {target}"


def section(text: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same level or above."""
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    level = heading.split()[0]
    end = re.compile(rf"^#{{1,{len(level)}}} ", re.MULTILINE).search(text, start)
    return text[start:end.start() if end else None]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def tracked_files() -> list[str]:
    """The files a clone has: git's index of this checkout."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
                            timeout=30)
    return [path for path in listed.stdout.decode().split("\0") if path]


def test_no_file_cites_what_a_clone_lacks() -> None:
    """The notes gathered before the project and the folder beside the checkout are not in
    a clone: a file says the fact itself and where it comes from instead."""
    lacking = ("FIELD" + "-NOTES", ".." + "/shared")  # split, so that this file does not match
    found = []
    for path in tracked_files():
        file = ROOT / path
        if file.is_file():  # not one deleted in the work tree
            content = file.read_bytes()
            found += [f"{path}: {name}" for name in lacking if name.encode() in content]
    assert not found, found


# [text](target "title") and [label]: target, outside fenced code.
MD_LINK = re.compile(r"\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
MD_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)", re.MULTILINE)
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def test_relative_links_in_the_docs_point_to_files_a_clone_has() -> None:
    """Every relative link of every Markdown file (README.md, docs/*.md, ...) names a
    tracked file or folder; links to other sites and to anchors are not followed."""
    tracked = tracked_files()
    have = set(tracked)
    for path in tracked:  # and every folder that holds one
        while path := posixpath.dirname(path):
            have.add(path)
    documents = [p for p in tracked if p.endswith(".md")]
    assert {"README.md", "docs/PROTOCOL.md"} <= set(documents)
    checked, broken = 0, []
    for doc in documents:
        text = FENCED.sub("", (ROOT / doc).read_text(encoding="utf-8"))
        for target in MD_LINK.findall(text) + MD_DEFINITION.findall(text):
            path = unquote(target.split("#")[0].split("?")[0]).rstrip("/")
            if not path or re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(doc), path))
            checked += 1
            if resolved not in have:
                broken.append(f"{doc}: {target}")
    assert checked > 20 and not broken, broken


def test_anchors_in_the_docs_name_a_heading_of_their_document() -> None:
    """A link to `doc.md#part` (or to `#part` in the same file) lands on a heading there, so
    moving a section out of the README cannot leave a link pointing nowhere."""
    headings: dict[str, set[str]] = {}

    def anchors(doc: str) -> set[str]:
        if doc not in headings:
            text = FENCED.sub("", (ROOT / doc).read_text(encoding="utf-8"))
            headings[doc] = {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}
        return headings[doc]

    have = set(tracked_files())
    checked, broken = 0, []
    for doc in [p for p in sorted(have) if p.endswith(".md")]:
        text = FENCED.sub("", (ROOT / doc).read_text(encoding="utf-8"))
        for target in MD_LINK.findall(text):
            if "#" not in target or re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue
            path, anchor = target.split("#", 1)
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(doc), unquote(path))) \
                if path else doc
            if not resolved.endswith(".md") or resolved not in have:
                continue  # a folder, or a missing file: the link test's business
            checked += 1
            if anchor not in anchors(resolved):
                broken.append(f"{doc}: {target}")
    assert checked >= 10 and not broken, broken


# --- the raw websocket example of docs/consuming.md -----------------------------------------

@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    yield from run_service({"SIM_RATE": "200"}, ready="/readyz")


def test_the_raw_websocket_example_runs(service: ServiceProcess, tmp_path: Path) -> None:
    """docs/consuming.md's Python example with websockets alone, pointed at this test's
    service, prints `SYMBOL price change` lines of the symbols it asked for."""
    consuming = (ROOT / "docs" / "consuming.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```$", section(consuming, "## The websocket in short"),
                        re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONUNBUFFERED": "1"}
    got = run_example(sys.executable, blocks[0], service, tmp_path, 6, env)
    for line in got:
        symbol, price, change = line.split()
        assert symbol in ("OGDC", "KSE100") and float(price) > 0, line
        float(change)
    assert {line.split()[0] for line in got[:2]} == {"OGDC", "KSE100"}, "the snapshot first"


def test_the_layout_names_every_module_of_every_package() -> None:
    """docs/layout.md follows the code: a module added or moved is placed there too."""
    layout = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    packages = ["service", "publisher", "quote_bus", "quote_runtime", "quote_sim",
                "core/quote_core", "clients/python/quote_client"]
    modules = [path for package in packages for path in (ROOT / package).rglob("*.py")
               if path.name not in ("__init__.py", "__main__.py")]
    assert len(modules) > 60
    missing = [str(p.relative_to(ROOT)) for p in modules if f"`{p.name}`" not in layout]
    assert not missing, f"docs/layout.md does not place {missing}"
    for package in ("quote_core", "quote_runtime", "quote_bus", "quote_sim", "quote_client"):
        assert package in layout
