"""The README is a newcomer's first page: its commands, table and pictures must be true."""

from __future__ import annotations

import posixpath
import re
import subprocess
from dataclasses import fields
from urllib.parse import unquote

from service.settings import Settings
from tests.service_proc import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_it_leads_with_the_two_commands() -> None:
    head = README[: README.index("\n## ")]
    assert "make run" in head and "make test" in head


def test_every_setting_is_in_the_configuration_table() -> None:
    table = README[README.index("## Configuration"):]
    for f in fields(Settings):
        assert f"`{f.name.upper()}`" in table, f.name.upper()


def test_linked_files_exist() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


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
