"""quote_client.QuoteClient with tokens, against the real service as a subprocess: the token
as the first message (so ANONYMOUS=deny lets it in), the grant it reports, a callable
refreshing the token on `token_expired` while the feed stays live, a refused token failing
start() with its reason, a refusal later backed off long, and subscribes cut to the token's
symbols returning their ack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from quote_client.client import AuthenticationError, AuthInfo, QuoteClient, auth_refusal
from quote_core.protocol import ALL
from tests.service_proc import ServiceProcess, run_service
from tests.test_auth import SECRET, token
from tests.test_client import wait_until

ENV = {"TOKEN_SECRET": SECRET, "TOKEN_GRACE_S": "2", "SIM_RATE": "150"}


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    yield from run_service(ENV, ready="/readyz")


@pytest.fixture(scope="module")
def closed_service() -> Iterator[ServiceProcess]:
    """ANONYMOUS=deny: nothing without a token, and only as the first message (or URL)."""
    yield from run_service({**ENV, "ANONYMOUS": "deny"}, ready="/readyz")


def expiring(seconds: int, **claims: Any) -> str:
    return token({"exp": int(time.time()) + seconds, **claims})


def test_what_closes_count_as_a_refused_token() -> None:
    assert auth_refusal(1008, "token expired") and auth_refusal(1008, "token signature invalid")
    assert auth_refusal(1008, 'authentication required: send {"op": "auth", "token": ...} first')
    assert auth_refusal(1008, "no token came")
    assert not auth_refusal(1008, "too many connections from this address")
    assert not auth_refusal(1011, "token expired") and not auth_refusal(None, "")


async def test_a_token_string_opens_a_closed_service_and_reports_the_grant(
        closed_service: ServiceProcess) -> None:
    exp = int(time.time()) + 600
    signed = token({"exp": exp, "sub": "reader-42", "symbols": ["OGDC", "PPL", "KSE100"]})
    async with QuoteClient(closed_service.ws_url, symbols=["OGDC", "KSE100"], token=signed) as client:
        assert "token" not in client.url, "never in the URL: URLs end up in logs"
        assert set(client.board) == {"OGDC", "KSE100"} and client.feed == "live"
        assert client.tier == "realtime" and client.delay_s == 0
        assert client.entitled == frozenset({"OGDC", "PPL", "KSE100"})
        assert client.auth == AuthInfo("realtime", frozenset({"OGDC", "PPL", "KSE100"}),
                                       exp * 1000, "reader-42", None)
        # The feed goes on: quotes after the snapshot.
        async with contextlib.aclosing(client.quotes()) as quotes, asyncio.timeout(10):
            seen = {(await anext(quotes)).symbol for _ in range(10)}
        assert seen <= {"OGDC", "KSE100"}
        # authenticate() sends a token now (here the same grant, with another subject).
        info = await client.authenticate(token({"sub": "reader-43", "symbols": "*"}))
        assert info.sub == "reader-43" and info.entitled == ALL and client.entitled == ALL
        assert client.subscriptions == frozenset({"OGDC", "KSE100"})


async def test_a_callable_token_in_every_mode(closed_service: ServiceProcess) -> None:
    calls: list[float] = []

    def fresh() -> str:
        calls.append(time.monotonic())
        return token({"sub": "recorder"})

    async with QuoteClient(closed_service.ws_url, symbols=["OGDC"], mode="every", token=fresh) as client:
        assert len(calls) == 1 and client.auth is not None and client.auth.sub == "recorder"
        async with contextlib.aclosing(client.quotes()) as quotes, asyncio.timeout(10):
            seqs = [(await anext(quotes)).seq for _ in range(5)]
        assert seqs == sorted(seqs)


async def test_a_subscribe_cut_to_the_token_returns_its_ack(
        closed_service: ServiceProcess, caplog: pytest.LogCaptureFixture) -> None:
    signed = token({"symbols": ["OGDC", "PPL"]})
    caplog.set_level(logging.WARNING, logger="quote_client")
    # The opening subscribe too: cut, not fatal.
    async with QuoteClient(closed_service.ws_url, symbols=["OGDC", "HBL"], token=signed) as client:
        assert set(client.board) == {"OGDC"} and client.subscriptions == frozenset({"OGDC"})
        await wait_until(lambda: client.forbidden == frozenset({"HBL"}), 5, "HBL noted as forbidden")
        ack = await client.subscribe(["PPL", "KSE100"])
        assert ack.symbols == ("OGDC", "PPL") and ack.forbidden == ("KSE100",)
        assert client.forbidden == frozenset({"HBL", "KSE100"})
        await wait_until(lambda: "not covered by your token: KSE100" in caplog.text, 5,
                         "the forbidden error logged")
        # "*" is every entitled symbol: nothing forbidden, and no other symbol arrives.
        ack = await client.subscribe("*")
        assert ack.symbols == ("OGDC", "PPL") and ack.forbidden == () and not ack.all
        assert (await client.ping()) < 5, "the connection is still fine"
        assert client.reconnects == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_callable_refreshes_the_token_and_the_feed_stays_live(
        service: ServiceProcess, kind: str) -> None:
    """Tokens of 2-3 s against TOKEN_GRACE_S=2: each `token_expired` is answered with a
    fresh one, so the connection lives on well past several expiries and graces."""
    calls: list[float] = []

    def sync_token() -> str:
        calls.append(time.monotonic())
        return expiring(3, sub=f"call-{len(calls)}")

    async def async_token() -> str:
        await asyncio.sleep(0.05)  # e.g. asking an identity service
        return sync_token()

    async with QuoteClient(service.ws_url, symbols=["OGDC", "PPL"],
                           token=sync_token if kind == "sync" else async_token) as client:
        node = client.welcome.node if client.welcome else None
        started = time.monotonic()
        arrivals: list[float] = []
        async with contextlib.aclosing(client.quotes()) as quotes:
            async with asyncio.timeout(20):
                while time.monotonic() - started < 9:
                    await anext(quotes)
                    arrivals.append(time.monotonic() - started)
        assert len(calls) >= 3, f"refreshed on each expiry: {len(calls)} calls"
        assert client.auth is not None and client.auth.sub in (f"call-{len(calls)}", f"call-{len(calls) - 1}")
        assert client.reconnects == 0 and client.last_close_code is None, "the same connection"
        assert client.welcome is not None and client.welcome.node == node
        assert client.feed == "live"
        # Quotes all along, the last seconds (past several graces) included.
        for second in range(9):
            assert any(second <= t < second + 1 for t in arrivals), f"no quote in second {second}"


async def test_a_string_token_that_expires_is_backed_off_long(
        service: ServiceProcess, caplog: pytest.LogCaptureFixture) -> None:
    """A string cannot be refreshed: a warning, the service's close after its grace, and
    then the client comes back only after auth_backoff_s (refused again: still expired)."""
    caplog.set_level(logging.WARNING, logger="quote_client")
    refusals: list[float] = []
    async with QuoteClient(service.ws_url, symbols=["OGDC"], token=expiring(2),
                           auth_backoff_s=4) as client:
        await wait_until(lambda: "a string token cannot be refreshed" in caplog.text, 10,
                         "the warning about the string token")
        for count in (1, 2):
            await wait_until(lambda: client.auth_refusals >= count, 15, f"refusal {count}")  # noqa: B023
            refusals.append(time.monotonic())
        assert client.last_close_code == 1008 and client.last_close_reason == "token expired"
        assert isinstance(client.last_error, AuthenticationError)
        assert client.feed == "reconnecting" and client.reconnects == 0
        await asyncio.sleep(1.5)
        assert client.auth_refusals == 2, "no tight loop"
    assert 1.9 <= refusals[1] - refusals[0] <= 6, refusals


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize(("make", "reason"), [
    (lambda: token({}, key="another-secret-of-32-characters!"), "token signature invalid"),
    (lambda: expiring(-5), "token expired"),
    (lambda: "garbage", "token malformed"),
])
async def test_a_bad_token_fails_start_with_the_reason(
        service: ServiceProcess, make: Callable[[], str], reason: str) -> None:
    client = QuoteClient(service.ws_url, symbols=["OGDC"], token=make(), open_timeout=10)
    started = time.monotonic()
    with pytest.raises(AuthenticationError) as refused:
        await client.start()
    assert refused.value.reason == reason and refused.value.code == 1008
    assert reason in str(refused.value)
    assert time.monotonic() - started < 3, "at once, not after retries"
    assert client.auth_refusals == 1


async def test_no_token_for_a_closed_service_fails_start(closed_service: ServiceProcess) -> None:
    with pytest.raises(AuthenticationError, match="authentication required"):
        async with QuoteClient(closed_service.ws_url, symbols=["OGDC"]):
            pass


async def test_a_failing_callable_is_retried_until_it_gives_a_token(
        closed_service: ServiceProcess) -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise OSError("the identity service is down")
        return token({})

    async with QuoteClient(closed_service.ws_url, symbols=["OGDC"], token=flaky,
                           open_timeout=15) as client:
        assert calls == 3 and "OGDC" in client.board


def test_token_arguments_are_checked() -> None:
    for bad in ("", 42, b"abc"):
        with pytest.raises(TypeError):
            QuoteClient("ws://127.0.0.1:1/ws", token=bad)  # type: ignore[arg-type]


async def test_the_delayed_tier_is_reported(closed_service: ServiceProcess) -> None:
    """Without a token under ANONYMOUS=delayed, from the welcome; with a delayed token, from
    its auth ack (the closed service: DELAY_S as shipped, 900)."""
    proc = ServiceProcess({**ENV, "ANONYMOUS": "delayed", "DELAY_S": "2"})
    proc.start("/readyz")
    try:
        async with QuoteClient(proc.ws_url, symbols=["OGDC"], open_timeout=15) as client:
            assert (client.tier, client.delay_s, client.auth) == ("delayed", 2.0, None)
    finally:
        proc.stop()
    async with QuoteClient(closed_service.ws_url, symbols=["OGDC"],
                           token=token({"tier": "delayed"})) as client:
        assert (client.tier, client.delay_s) == ("delayed", 900.0)
        assert client.auth is not None and client.auth.delay_s == 900.0


async def test_a_delayed_token_as_the_first_message_of_a_realtime_service(
        service: ServiceProcess) -> None:
    async with QuoteClient(service.ws_url, symbols=["OGDC"], token=token({"tier": "delayed"})) as client:
        assert client.tier == "delayed"
