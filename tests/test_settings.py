"""Every setting is checked at start: a bad value of any variable stops `python -m service`
and `python -m publisher`, each of the settings it reads, with one line naming it and
what it got, exit 2.

The table has a row for every field of either process's Settings, so a variable added
without a row fails `test_every_setting_has_a_row`, and one added without a check fails
its row: its bad value is accepted. Each row goes through the entry function of each
process that reads it, in-process (the code `main` runs before anything starts); a
representative set also as real processes.
"""

from __future__ import annotations

import ast
import asyncio
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

import publisher.__main__ as publisher_cli
import service.__main__ as service_cli
from publisher.settings import Settings as PublisherSettings
from quote_runtime.settings import POSITIVE, ConfigError, SettingsGroup, setting
from service.settings import Settings as ServiceSettings
from tests.redis_server import free_port
from tests.service_proc import ROOT

# A URL no test connects to: the publisher needs one to get as far as the other checks.
SOME_REDIS = "redis://127.0.0.1:1/0"


@dataclass(frozen=True)
class Row:
    bad: str
    # What the line must show of the value: the value itself unless it is a secret.
    shown: str | None = None
    env: dict[str, str] = field(default_factory=dict)


ROWS: dict[str, Row] = {
    "REDIS_URL": Row("redis://127.0.0.1:6379/abc"),
    "HOST": Row("bad_host"),
    "PORT": Row("70000"),
    "WORKERS": Row("0"),
    "DRAIN_S": Row("-1"),
    "FORWARDED_ALLOW_IPS": Row("10.0.0.0/99"),
    "LOOP": Row("fast"),
    "REDIS_PREFIX": Row("a{b}"),
    "REDIS_PARTITIONS": Row("0"),
    "PUBLISHER_HEARTBEAT_S": Row("0"),
    "TAPE_RETENTION_S": Row("nan"),
    "TAPE_MAX_LEN": Row("-5"),
    "EVERY_QUEUE_BYTES": Row("lots"),
    "MAX_RECOVERY": Row("0"),
    "TOKEN_SECRET": Row("too-short", shown="got 9 bytes"),
    "TOKEN_PUBLIC_KEY_FILE": Row("/nonexistent/key.pem"),
    "TOKEN_ALGORITHM": Row("none"),
    "TOKEN_ISSUER": Row(" https://id.example"),
    "TOKEN_AUDIENCE": Row("quotes "),
    "TOKEN_GRACE_S": Row("-1"),
    "ANONYMOUS": Row("maybe"),
    "DELAY_S": Row("0"),
    "HEARTBEAT_S": Row("inf"),
    "MAX_SYMBOLS": Row("0"),
    "MAX_CLIENT_MSGS_PER_S": Row("1.5"),
    "MAX_FRAME_BYTES": Row("-1"),
    "WS_MAX_SIZE": Row("100"),
    "WS_DEFLATE_MIN_BYTES": Row("-1"),
    "FANOUT_INTERVAL_MS": Row("-20"),
    "SEND_TIMEOUT_S": Row("0"),
    "TCP_SEND_BUFFER": Row("4294967296"),
    "REDIS_RETRY_MAX_S": Row("0"),
    "PROBE_INTERVAL_S": Row("0"),
    "PROBE_TIMEOUT_S": Row("-3"),
    "FEED_SILENCE_S": Row("-1"),
    "MAX_CONNECTIONS": Row("0"),
    "MAX_CONNECTS_PER_S": Row("0"),
    "ALLOWED_ORIGINS": Row("news.example.com"),
    "MAX_CONNECTIONS_PER_IP": Row("-1"),
    "MAX_CONNECTS_PER_IP_PER_S": Row("-5"),
    "MAX_CONNECTS_PER_IP_BURST": Row("0"),
    "FRAME_ANCESTORS": Row("'unsafe-inline'"),
    "METRICS_TOKEN": Row("too-short", shown="got 9 characters"),
    "SIM_RATE": Row("fast"),
    "SIM_BAND_PCT": Row("-10"),
    "SIM_BAND_MIN": Row("-1"),
    "SIM_SEED": Row("abc"),
    "LOG_LEVEL": Row("loud"),
    "LOG_FORMAT": Row("xml"),
    # A file where a directory belongs.
    "PROMETHEUS_MULTIPROC_DIR": Row(str(ROOT / "README.md")),
}

# As real processes: the ones that once ended in a traceback or started anyway, and a few more.
SERVICE_PROCESS_ROWS = ["LOG_LEVEL", "LOG_FORMAT", "TOKEN_PUBLIC_KEY_FILE", "FORWARDED_ALLOW_IPS",
                        "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "HOST", "TOKEN_SECRET", "SIM_SEED",
                        "TCP_SEND_BUFFER"]
PUBLISHER_PROCESS_ROWS = ["LOG_LEVEL", "REDIS_URL", "PUBLISHER_HEARTBEAT_S", "SIM_RATE"]

SERVICE_NAMES = sorted(f.name.upper() for f in fields(ServiceSettings))
PUBLISHER_NAMES = sorted(f.name.upper() for f in fields(PublisherSettings))
NAMES = sorted({*SERVICE_NAMES, *PUBLISHER_NAMES})


def test_every_setting_has_a_row() -> None:
    assert sorted(ROWS) == NAMES


def test_the_shared_groups_are_in_both() -> None:
    """The Redis names, the simulated market and the logs: both processes read them."""
    shared = {"REDIS_URL", "REDIS_PREFIX", "REDIS_PARTITIONS", "TAPE_RETENTION_S", "TAPE_MAX_LEN",
              "REDIS_RETRY_MAX_S", "SIM_RATE", "SIM_BAND_PCT", "SIM_BAND_MIN", "SIM_SEED",
              "LOG_LEVEL", "LOG_FORMAT"}
    assert set(SERVICE_NAMES) & set(PUBLISHER_NAMES) == shared
    assert set(PUBLISHER_NAMES) - shared == {"PUBLISHER_HEARTBEAT_S"}


def environ_reads(path: Path) -> set[str]:
    """The variables a module reads from os.environ (a string, or a module constant)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    found: set[str] = set()
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if (isinstance(node, ast.Call) and node.args
                and ast.unparse(node.func).endswith(("environ.get", "getenv"))):
            key = node.args[0]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("environ"):
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            found.add(key.value)
        elif isinstance(key, ast.Name) and key.id in constants:
            found.add(constants[key.id])
    return found


def test_every_variable_read_elsewhere_is_a_setting() -> None:
    """A variable read straight from os.environ would escape the checks at start."""
    read = {name: path
            for package in ("service", "publisher", "quote_bus", "quote_runtime", "quote_sim")
            for path in (ROOT / package).rglob("*.py") for name in environ_reads(path)}
    assert "PROMETHEUS_MULTIPROC_DIR" in read  # the scan sees a read through a constant
    assert {name: str(path) for name, path in read.items() if name not in NAMES} == {}


def the_line(err: str, name: str, row: Row) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    (line,) = lines
    assert name in line, line
    assert (row.shown or row.bad) in line, line
    if row.shown is not None:
        assert row.bad not in line, line  # a secret is not echoed
    assert "Traceback" not in line
    return line


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_a_bad_value_stops_the_service_at_start(name: str, capsys: pytest.CaptureFixture[str]
                                                ) -> None:
    row = ROWS[name]
    with pytest.raises(SystemExit) as stopped:
        service_cli.load([], {**row.env, name: row.bad})
    assert stopped.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert the_line(err, name, row).startswith("configuration error: ")


@pytest.mark.parametrize("name", PUBLISHER_NAMES)
def test_a_bad_value_stops_the_publisher_at_start(name: str, capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    row = ROWS[name]
    with pytest.raises(SystemExit) as stopped:
        publisher_cli.load(["simulate"], {"REDIS_URL": SOME_REDIS, **row.env, name: row.bad})
    assert stopped.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert the_line(err, name, row).startswith("publisher: ")


def test_the_defaults_pass_both_entries() -> None:
    """So each row fails for its own value, not for something every row shares."""
    _, settings = service_cli.load([], {})
    assert settings == ServiceSettings()
    _, published = publisher_cli.load(["simulate"], {"REDIS_URL": SOME_REDIS})
    assert published == PublisherSettings(redis_url=SOME_REDIS)


def test_a_process_leaves_the_others_settings_alone() -> None:
    """What only the other process reads is not checked: its bad value is not this one's."""
    for name in sorted(set(NAMES) - set(PUBLISHER_NAMES)):
        publisher_cli.load(["simulate"], {"REDIS_URL": SOME_REDIS, **ROWS[name].env,
                                          name: ROWS[name].bad})
    for name in sorted(set(NAMES) - set(SERVICE_NAMES)):
        service_cli.load([], {**ROWS[name].env, name: ROWS[name].bad})


@dataclass(frozen=True)
class Declared(SettingsGroup):
    count: int | None = None
    ratio: float = setting(1.0, POSITIVE)
    label: str | None = None


def test_a_value_is_converted_by_its_declared_type_not_its_name() -> None:
    assert Declared.from_env({"COUNT": "7", "RATIO": "0.5", "LABEL": "7"}) == Declared(7, 0.5, "7")
    assert Declared.from_env({"COUNT": "", "LABEL": ""}) == Declared()
    with pytest.raises(ConfigError, match=r"^COUNT must be an integer, got '7.5'$"):
        Declared.from_env({"COUNT": "7.5"})
    with pytest.raises(ConfigError, match=r"^RATIO must be a number, got 'x'$"):
        Declared.from_env({"RATIO": "x"})
    with pytest.raises(ConfigError, match=r"^RATIO must be positive, got 0$"):
        Declared.from_env({"RATIO": "0"})


def test_a_type_without_a_conversion_is_a_mistake_found_at_once() -> None:
    @dataclass(frozen=True)
    class Flagged(SettingsGroup):
        on: bool = False

    with pytest.raises(TypeError, match="setting on"):
        Flagged.from_env({})


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any setting a developer may have exported."""
    return {**{k: v for k, v in os.environ.items() if k not in NAMES}, **extra}


async def run(argv: list[str], env: dict[str, str]) -> tuple[int | None, str]:
    """The process's exit code and stderr; one that is still running after the timeout
    took its bad value and started: it is stopped and reported as such (None)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    except TimeoutError:
        proc.kill()
        _, err = await proc.communicate()
        return None, err.decode()
    return proc.returncode, err.decode()


async def test_real_processes_stop_with_one_line_and_exit_2() -> None:
    cases = [(["service"], name, clean_env(**{"PORT": str(free_port()), name: ROWS[name].bad}))
             for name in SERVICE_PROCESS_ROWS]
    cases += [(["publisher", "simulate"], name,
               clean_env(**{"REDIS_URL": SOME_REDIS, name: ROWS[name].bad}))
              for name in PUBLISHER_PROCESS_ROWS]
    results = await asyncio.gather(*(run(argv, env) for argv, _, env in cases))
    for (argv, name, _), (code, err) in zip(cases, results, strict=True):
        assert code == 2, (argv, name, code, err)
        the_line(err, name, ROWS[name])
