"""The README is a newcomer's first page: its commands, table and pictures must be true."""

from __future__ import annotations

import re
from dataclasses import fields

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
