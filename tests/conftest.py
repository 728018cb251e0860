"""Fixtures more than one test module shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from tests.browser import chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module that asks for it."""
    with chromium() as launched:
        yield launched


# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`): most
# tests wait on processes and sockets, not on the CPU. A module stays on one worker (its
# module-scoped service, Redis or browser is started once); the modules that load the
# machine on purpose (the benchmark's, the soak, the storm, the network hosts) form one
# group, so two of them never run at once and each still has a core beside it.
LOAD_MODULES = frozenset({"test_networks"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        heavy = module.startswith("test_bench_") or module in LOAD_MODULES
        item.add_marker(pytest.mark.xdist_group("machine-load" if heavy else module))
