"""Signed tokens and entitlements: the verifier without sockets, then the real service
refusing every bad token with 1008 and its reason before any quote, subscribing only the
entitled symbols, and closing an expired token unless a fresh one comes."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.exceptions import ConnectionClosed

from quote_runtime.settings import ConfigError
from service.auth import Authenticator, AuthError, Grant, bearer
from service.protocol import ALL, Auth, ProtocolError, parse_command
from service.settings import Settings
from tests.service_proc import ServiceProcess, http_fetch
from tests.sseclient import open_sse
from tests.test_asyncapi import check_frame
from tests.wsclient import ClientConnection, connect, recv, recv_type

SECRET = "a-shared-secret-of-32-characters"


def token(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    body = {"exp": int(time.time()) + 600, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


def pem(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def unsigned(claims: dict[str, Any]) -> str:
    """An `alg: none` token, as an attacker would craft it."""
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'exp': int(time.time()) + 600, **claims})}."


# --- the verifier ---------------------------------------------------------------------------

def test_hs256_tokens_carry_their_entitlements() -> None:
    auth = Authenticator(Settings(token_secret=SECRET))
    assert auth.verify(token({})) == Grant(ALL, "realtime", None, auth.verify(token({})).exp)
    grant = auth.verify(token({"sub": "reader-7", "symbols": ["ogdc", "PPL"], "tier": "delayed"}))
    assert (grant.symbols, grant.tier, grant.sub) == (frozenset({"OGDC", "PPL"}), "delayed", "reader-7")
    assert grant.split({"PPL", "HBL", "OGDC"}) == (["OGDC", "PPL"], ["HBL"])


# Tokens signed with HS384/HS512 and our 32-byte secret: PyJWT warns as it signs them.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize(("make", "reason"), [
    (lambda: token({}, key="another-secret-of-32-characters!"), "token signature invalid"),
    (lambda: token({"exp": int(time.time()) - 5}), "token expired"),
    (lambda: jwt.encode({"sub": "x"}, SECRET, algorithm="HS256"), "token lacks the 'exp' claim"),
    (lambda: unsigned({}), "token not signed with HS256"),
    (lambda: token({}, key=SECRET, algorithm="HS512"), "token not signed with HS256"),
    (lambda: "not.a.token", "token malformed"),
    (lambda: token({"symbols": "OGDC"}), 'token\'s symbols claim must be a list or "*"'),
    (lambda: token({"symbols": ["<b>"]}), "token's symbols claim holds an invalid symbol"),
    (lambda: token({"tier": "gold"}), 'token\'s tier claim must be "realtime" or "delayed"'),
])
def test_bad_tokens_are_refused_with_a_reason(make: Any, reason: str) -> None:
    with pytest.raises(AuthError) as refused:
        Authenticator(Settings(token_secret=SECRET)).verify(make())
    assert str(refused.value) == reason


def test_issuer_and_audience_are_checked_when_set() -> None:
    auth = Authenticator(Settings(token_secret=SECRET, token_issuer="https://id.example",
                                  token_audience="quotes"))
    assert auth.verify(token({"iss": "https://id.example", "aud": "quotes"})).symbols == ALL
    for claims in ({"iss": "https://evil.example", "aud": "quotes"},
                   {"iss": "https://id.example", "aud": "other"}, {"aud": "quotes"}):
        with pytest.raises(AuthError):
            auth.verify(token(claims))


def test_rs256_and_es256_follow_the_key_and_refuse_hs_confusion(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    for name, private, algorithm in (("rsa", rsa_key, "RS256"), ("ec", ec_key, "ES256")):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(pem(private.public_key()))
        auth = Authenticator(Settings(token_public_key_file=str(path)))
        assert auth.algorithm == algorithm
        assert auth.verify(token({"symbols": ["OGDC"]}, private, algorithm)).symbols == {"OGDC"}
        # The classic confusion: an HS256 token whose secret is the public key's PEM. PyJWT
        # refuses PEM keys as HMAC secrets, and only the key's algorithm is accepted anyway.
        forged = jwt.api_jws.PyJWS()
        forged._algorithms["HS256"].prepare_key = lambda key: key  # type: ignore[method-assign]
        confused = forged.encode(orjson.dumps({"exp": int(time.time()) + 60}),
                                 path.read_bytes(), algorithm="HS256")
        with pytest.raises(AuthError, match=f"token not signed with {algorithm}"):
            auth.verify(confused)
        with pytest.raises(AuthError, match=f"token not signed with {algorithm}"):
            auth.verify(unsigned({}))


def test_token_settings_are_checked_at_start(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem(rsa_key.public_key()))
    for env, message in [
        ({"ANONYMOUS": "maybe"}, "ANONYMOUS must be"),
        ({"ANONYMOUS": "deny"}, "ANONYMOUS=deny needs"),
        ({"TOKEN_SECRET": "short"}, "at least 32 bytes"),
        ({"TOKEN_SECRET": SECRET, "TOKEN_PUBLIC_KEY_FILE": str(path)}, "not both"),
        ({"TOKEN_SECRET": SECRET, "TOKEN_ALGORITHM": "RS256"}, "does not fit"),
        ({"TOKEN_SECRET": SECRET, "TOKEN_ALGORITHM": "none"}, "TOKEN_ALGORITHM must be"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Settings.from_env(env)
    with pytest.raises(ConfigError, match="does not fit the key"):
        Authenticator(Settings(token_public_key_file=str(path), token_algorithm="ES256"))
    with pytest.raises(ConfigError, match="not a readable PEM"):
        Authenticator(Settings(token_public_key_file=str(tmp_path / "missing.pem")))


def test_the_auth_message_and_the_bearer_header_parse() -> None:
    assert parse_command('{"op": "auth", "id": 3, "token": "abc"}', max_symbols=5) == Auth(3, "abc")
    with pytest.raises(ProtocolError):
        parse_command('{"op": "auth", "token": 7}', max_symbols=5)
    assert bearer("Bearer abc.def") == "abc.def" and bearer("bearer  x ") == "x"
    assert bearer("Basic abc") is None and bearer(None) is None and bearer("Bearer ") is None


# --- the real service ----------------------------------------------------------------------

ENV = {"TOKEN_SECRET": SECRET, "TOKEN_GRACE_S": "2", "SIM_RATE": "50"}


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    proc = ServiceProcess(ENV)
    proc.start("/readyz")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def closed_service() -> Iterator[ServiceProcess]:
    """ANONYMOUS=deny: nothing without a token."""
    proc = ServiceProcess({**ENV, "ANONYMOUS": "deny"})
    proc.start("/readyz")
    try:
        yield proc
    finally:
        proc.stop()


async def closed_with(ws: ClientConnection, timeout: float = 5.0) -> tuple[int | None, str, list[str]]:
    """Read to the close: its code, its reason, and the types of the frames before it."""
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                seen.append(orjson.loads(await ws.recv())["type"])
        except ConnectionClosed as exc:
            frame = exc.rcvd
            return (frame.code if frame else None), (frame.reason if frame else ""), seen


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize(("bad", "reason"), [
    (lambda: token({}, key="another-secret-of-32-characters!"), "token signature invalid"),
    (lambda: token({"exp": int(time.time()) - 1}), "token expired"),
    (lambda: unsigned({}), "token not signed with HS256"),
    (lambda: token({}, key=SECRET, algorithm="HS384"), "token not signed with HS256"),
    (lambda: "garbage", "token malformed"),
])
async def test_a_bad_token_closes_1008_with_its_reason_before_any_frame(
        service: ServiceProcess, bad: Any, reason: str) -> None:
    async with connect(f"{service.ws_url}?symbols=*&token={bad()}") as ws:
        assert await closed_with(ws) == (1008, reason, [])
    async with connect(f"{service.ws_url}?symbols=*",
                       additional_headers={"Authorization": f"Bearer {bad()}"}) as ws:
        assert await closed_with(ws) == (1008, reason, [])


async def test_a_bad_token_as_a_message_closes_too(service: ServiceProcess) -> None:
    async with connect(service.ws_url) as ws:
        await recv_type(ws, "welcome")
        await ws.send(orjson.dumps({"op": "auth", "id": 1, "token": unsigned({})}).decode())
        code, reason, _ = await closed_with(ws)
        assert (code, reason) == (1008, "token not signed with HS256")


async def test_only_entitled_symbols_are_subscribed(service: ServiceProcess) -> None:
    entitled = token({"symbols": ["OGDC", "PPL"]})
    async with connect(f"{service.ws_url}?token={entitled}") as ws:
        await recv_type(ws, "welcome")
        await ws.send(orjson.dumps({"op": "subscribe", "id": 4,
                                    "symbols": ["OGDC", "HBL", "KSE100"]}).decode())
        ack, refused, snapshot = [await recv(ws) for _ in range(3)]
        assert ack["type"] == "ack" and ack["symbols"] == ["OGDC"] and ack["id"] == 4
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        assert refused["id"] == 4 and refused["message"] == "not covered by your token: HBL, KSE100"
        assert snapshot["type"] == "snapshot"
        assert {q["symbol"] for q in snapshot["quotes"]} == {"OGDC"}
        for frame in (ack, refused, snapshot):
            check_frame(frame)  # as docs/asyncapi.yaml says
        # "*" is every entitled symbol, and no other ever arrives.
        await ws.send(orjson.dumps({"op": "subscribe", "id": 5, "symbols": "*"}).decode())
        ack = await recv_type(ws, "ack")
        assert ack["symbols"] == ["OGDC", "PPL"] and "all" not in ack
        async with asyncio.timeout(10):
            seen: set[str] = set()
            while len(seen) < 2:
                frame = orjson.loads(await ws.recv())
                seen |= {q["symbol"] for q in frame.get("quotes", [])}
                assert seen <= {"OGDC", "PPL"}, seen


async def test_an_expiring_token_is_refreshed_or_closed(service: ServiceProcess) -> None:
    soon = int(time.time()) + 2
    async with connect(f"{service.ws_url}?symbols=OGDC&token={token({'exp': soon})}") as ws:
        expired = await recv_type(ws, "error", timeout=10)
        assert expired["code"] == "token_expired" and "within 2s" in expired["message"]
        await ws.send(orjson.dumps({"op": "auth", "id": "r1",
                                    "token": token({"sub": "reader"})}).decode())
        ack = await recv_type(ws, "ack")
        assert (ack["op"], ack["id"], ack["tier"], ack["sub"], ack["symbols"]) == (
            "auth", "r1", "realtime", "reader", ["OGDC"])
        check_frame(expired)
        check_frame(ack)
        await asyncio.sleep(3)  # past the grace: the fresh token holds
        await ws.send(orjson.dumps({"op": "ping", "id": 9}).decode())
        assert (await recv_type(ws, "pong"))["id"] == 9
    soon = int(time.time()) + 1
    async with connect(f"{service.ws_url}?symbols=OGDC&token={token({'exp': soon})}") as ws:
        code, reason, seen = await closed_with(ws, timeout=10)
        assert (code, reason) == (1008, "token expired") and "error" in seen


async def test_anonymous_deny_takes_a_token_as_the_first_message(
        closed_service: ServiceProcess) -> None:
    async with connect(f"{closed_service.ws_url}?symbols=OGDC") as ws:
        welcome = await recv(ws)
        assert welcome["type"] == "welcome"
        await ws.send(orjson.dumps({"op": "auth", "id": 1, "token": token({})}).decode())
        assert (await recv_type(ws, "ack"))["op"] == "auth"
        ack = await recv_type(ws, "ack")  # then the URL's subscription, held until now
        assert ack["op"] == "subscribe" and ack["symbols"] == ["OGDC"]
        await recv_type(ws, "snapshot")
    async with connect(f"{closed_service.ws_url}?symbols=OGDC") as ws:
        await recv(ws)
        await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "symbols": ["OGDC"]}).decode())
        code, reason, seen = await closed_with(ws)
        assert code == 1008 and reason.startswith("authentication required")
        assert "snapshot" not in seen and "quotes" not in seen


def test_rest_takes_the_same_tokens(service: ServiceProcess, closed_service: ServiceProcess) -> None:
    status, headers, body = http_fetch(f"{service.url}/quotes?token={unsigned({})}")
    assert status == 401 and orjson.loads(body) == {
        "error": "unauthorized", "message": "token not signed with HS256"}
    assert headers["www-authenticate"].startswith("Bearer")
    entitled = token({"symbols": ["OGDC", "PPL"]})
    status, _, body = http_fetch(f"{service.url}/quotes",
                                 {"Authorization": f"Bearer {entitled}"})
    assert status == 200 and [q["symbol"] for q in orjson.loads(body)["quotes"]] == ["OGDC", "PPL"]
    status, _, body = http_fetch(f"{service.url}/history?symbols=OGDC,HBL&token={entitled}")
    assert status == 403 and orjson.loads(body) == {
        "error": "forbidden", "message": "not covered by your token: HBL"}
    status, _, body = http_fetch(f"{service.url}/history?token={entitled}")
    assert status == 200 and sorted(orjson.loads(body)["history"]) == ["OGDC", "PPL"]
    assert http_fetch(f"{closed_service.url}/quotes")[0] == 401
    assert http_fetch(f"{closed_service.url}/quotes?token={token({})}")[0] == 200


async def test_sse_takes_the_same_tokens(service: ServiceProcess) -> None:
    status, _, body = http_fetch(f"{service.url}/sse?symbols=OGDC&token={unsigned({})}")
    assert status == 401 and orjson.loads(body)["message"] == "token not signed with HS256"
    entitled = token({"symbols": ["OGDC"]})
    async with await open_sse(f"{service.url}/sse?symbols=OGDC,HBL&token={entitled}") as events:
        assert (await events.event_of("ack")).json["symbols"] == ["OGDC"]
        refused = (await events.event()).json
        assert refused["code"] == "forbidden" and "HBL" in refused["message"]
        snapshot = (await events.event_of("snapshot")).json
        assert [q["symbol"] for q in snapshot["quotes"]] == ["OGDC"]
