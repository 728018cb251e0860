"""The compact encoding and shared deflate, without sockets: a compact client rebuilds,
field for field, what a protocol-1 client is sent (PROTOCOL.md, "Compact encoding")."""

from __future__ import annotations

import random
import zlib
from typing import Any

import orjson
import pytest
from websockets.exceptions import NegotiationError, PayloadTooBig
from websockets.frames import Frame, Opcode

from quote_core.compact import CompactError, Decoder
from quote_core.quote import Quote
from service.compact import INDEX, Reference
from service.deflate import RESPONSE, SharedDeflate, SharedDeflateFactory
from service.hub import Hub
from service.outbox import PROTOCOL_1, Form, Outbox
from service.protocol import ALL, Symbols
from service.wire import DEFLATE_MIN_BYTES, Prepared, deflated_frame, text_frame

from .test_hub import FakeTimers

COMPACT: Form = (True, False)
COMPACT_DEFLATE: Form = (True, True)


def inflate(wire: bytes) -> bytes:
    """A server frame's payload, inflated when RSV1 says it is compressed."""
    n = wire[1] & 0x7F
    at = 2 if n < 126 else 4 if n == 126 else 10
    payload = wire[at:]
    if wire[0] & 0x40:
        return zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
    return payload


class Client:
    """A subscriber that reads what it is sent as a client would, into a board."""

    def __init__(self, form: Form) -> None:
        self.outbox = Outbox(form=form)
        self.form = form
        self.decoder = Decoder()
        self.board: dict[str, dict[str, Any]] = {}
        self.deltas = 0
        self.compressed = 0

    def wake(self) -> None:
        pass

    def overflow(self, reason: str) -> None:
        raise AssertionError(f"overflowed: {reason}")

    def drain(self) -> None:
        for frame in self.outbox.take():
            text = frame if isinstance(frame, str) else frame.text
            if isinstance(frame, Prepared):
                assert inflate(frame.wire) == text.encode(), "the wire bytes are the text"
                self.compressed += frame.wire[0] == 0xC1
                assert frame.wire[0] == 0x81 or self.form[1], "only deflate members get RSV1"
            message = orjson.loads(text)
            if isinstance(message, list):
                assert self.form[0], "a protocol-1 client never gets a compact frame"
                self.deltas += sum(isinstance(entry, list) for entry in message[1:])
            elif message["type"] not in ("quotes", "snapshot"):
                continue
            elif not self.form[0]:
                assert all("i" not in quote for quote in message["quotes"])
            snapshot = isinstance(message, dict) and message["type"] == "snapshot"
            for quote in self.decoder.quotes(message):
                held = self.board.get(quote["symbol"])
                # As the clients keep a board: by seq, a snapshot being the record.
                if snapshot or held is None or quote["seq"] > held["seq"]:
                    self.board[quote["symbol"]] = quote


class Market:
    """Random quotes: prices walk, optional fields come and go, a new day moves
    prev_close, new symbols appear."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.state: dict[str, dict[str, Any]] = {}
        self.ts = 1_700_000_000_000
        for _ in range(8):
            self.listing()

    def listing(self) -> str:
        symbol = f"S{len(self.state)}"
        prev = round(self.rng.uniform(5, 500), 2)
        self.state[symbol] = {"seq": 0, "price": prev, "prev_close": prev,
                              "kind": self.rng.choice(["stock", "index"])}
        return symbol

    def quote(self) -> Quote:
        rng = self.rng
        symbol = self.listing() if rng.random() < 0.004 else rng.choice(sorted(self.state))
        s = self.state[symbol]
        s["seq"] += rng.choice([1, 1, 1, 2, 5])  # a publisher's seqs may skip
        s["price"] = round(max(0.01, s["price"] * (1 + rng.uniform(-0.01, 0.01))), 2)
        if rng.random() < 0.005:  # a new day
            s["prev_close"] = s["price"]
        optional: dict[str, Any] = {}
        for name in ("volume", "high", "state"):
            if rng.random() < 0.05:
                s[name] = None if rng.random() < 0.3 else (
                    rng.randrange(10**6) if name == "volume"
                    else round(s["price"] * 1.01, 2) if name == "high"
                    else rng.choice(["trading", "halted", "upper_lock"]))
            if s.get(name) is not None:
                optional[name] = s[name]
        self.ts += rng.choice([0, 1, 7, 40, 250, -3])
        return Quote.make(symbol, s["price"], s["prev_close"], kind=s["kind"], ts=self.ts,
                          **optional).with_seq(s["seq"])


def differences(p1: Client, other: Client) -> list[tuple[str, str, object, object]]:
    """(symbol, field, protocol 1's value, the other's) wherever they differ."""
    out = []
    for symbol in sorted(p1.board.keys() | other.board.keys()):
        a, b = p1.board.get(symbol, {}), other.board.get(symbol, {})
        out += [(symbol, k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
                if a.get(k) != b.get(k)]
    return out


def run(seed: int, mark: str, steps: int) -> list[tuple[Client, ...]]:
    rng = random.Random(seed)
    timers = FakeTimers()
    hub = Hub(max_symbols=100, default_hz=50.0, clock=timers.clock,
              call_later=timers.call_later, mark=mark)
    market = Market(rng)
    hub.publish([market.quote() for _ in range(30)])
    twins: list[tuple[Client, ...]] = []
    slow: dict[int, bool] = {}

    def join() -> None:
        symbols: Symbols = ALL if rng.random() < 0.5 else frozenset(
            rng.sample(sorted(market.state), 4))
        rate = rng.choice([None, 4.0, 10.0])
        trio = (Client(PROTOCOL_1), Client(COMPACT), Client(COMPACT_DEFLATE))
        for client in trio:
            hub.add(client)
            hub.subscribe(client, None, symbols, rate)
        twins.append(trio)

    for _ in range(4):
        join()
    for step in range(steps):
        hub.publish([market.quote() for _ in range(rng.randrange(1, 12))])
        timers.advance(rng.choice([0.0, 0.01, 0.05, 0.12, 0.3]))
        roll = rng.random()
        if roll < 0.01:
            join()
        elif roll < 0.03:  # a subscription changes, the same for all three
            trio = rng.choice(twins)
            more = frozenset(rng.sample(sorted(market.state), 2))
            leave = rng.random() < 0.5 or hub.subscriptions(trio[0]) == ALL
            for client in trio:
                if leave:
                    hub.unsubscribe(client, None, more)
                else:
                    hub.subscribe(client, None, more)
        elif roll < 0.035:  # the feed reloads the board (a reconnect) and comes back live
            board = [Quote.from_dict(orjson.loads(e[1])) for e in hub.board.values()]
            moved = [q for q in board if rng.random() < 0.3]
            hub.load([Quote.make(q.symbol, round(q.price * 1.02, 2), q.prev_close, kind=q.kind,
                                 ts=q.ts + 5).with_seq((q.seq or 0) + 1) for q in moved])
            hub.set_feed("stale")
            hub.set_feed("live")
        for n, trio in enumerate(twins):
            if rng.random() < 0.05:
                slow[n] = not slow.get(n, False)
            if slow.get(n) and step < steps - 1:
                continue  # falls behind: catches up from merged generations later
            for client in trio:
                client.drain()
            p1, compact, deflate = trio
            assert compact.board == p1.board, f"step {step}: {differences(p1, compact)}"
            assert deflate.board == p1.board, f"step {step}: {differences(p1, deflate)}"
    timers.advance(1.0)
    truth = {s: orjson.loads(e[1]) for s, e in hub.board.items()}
    for trio in twins:
        for client in trio:
            client.drain()
            mine = hub.subscriptions(client)
            held = truth.keys() if mine == ALL else mine
            assert client.board.keys() >= held
            assert {s: client.board[s] for s in held} == {s: truth[s] for s in held}
    return twins


@pytest.mark.parametrize(("seed", "mark"), [(1, ""), (2, ',"delayed":true'), (3, "")])
def test_a_compact_client_holds_what_a_protocol_1_client_holds_over_a_long_run(
        seed: int, mark: str) -> None:
    twins = run(seed, mark, steps=2000)
    deltas = sum(trio[1].deltas for trio in twins)
    full = sum(len(trio[1].board) for trio in twins)
    assert deltas > 20 * full, "most quotes went as deltas"
    assert sum(trio[2].compressed for trio in twins) > 0, "some shared frames went compressed"


def test_a_delta_carries_price_seq_ts_and_only_the_fields_that_changed() -> None:
    reference = Reference()
    first = Quote.make("OGDC", 100.0, 99.0, ts=1_000).with_seq(7)
    second = Quote.make("OGDC", 100.5, 99.0, ts=1_250, state="halted").with_seq(8)
    third = Quote.make("OGDC", 100.25, 99.0, ts=1_200).with_seq(10)
    texts = [orjson.loads(reference.encode({"OGDC": (q.seq or 0, q.to_json().decode(), q)}))
             for q in (first, second, third)]
    i = INDEX("OGDC")
    assert texts[0] == [1_000, {**first.to_dict(), "i": i}], "unknown to the group: in full"
    assert texts[1] == [1_250, [i, 100.5, 1, 0, {"state": "halted"}]]
    assert texts[2] == [1_200, [i, 100.25, 2, 0, {"state": None}]]
    decoder = Decoder()
    got = [decoder.quotes(t) for t in texts]
    assert [g[0] for g in got] == [first.to_dict(), second.to_dict(), third.to_dict()]


def test_a_new_day_and_a_member_joining_between_seals_get_full_entries() -> None:
    reference = Reference()
    day1 = Quote.make("PPL", 120.0, 118.0, ts=5).with_seq(1)
    reference.encode({"PPL": (1, day1.to_json().decode(), day1)})
    day2 = Quote.make("PPL", 121.0, 120.0, ts=9).with_seq(2)
    (_, entry) = orjson.loads(reference.encode({"PPL": (2, day2.to_json().decode(), day2)}))
    assert isinstance(entry, dict) and entry["prev_close"] == 120.0
    reference.joined(["PPL"])
    later = Quote.make("PPL", 122.0, 120.0, ts=11).with_seq(3)
    (_, entry) = orjson.loads(reference.encode({"PPL": (3, later.to_json().decode(), later)}))
    assert isinstance(entry, dict), "a member may hold a newer PPL than the group's last"
    (_, entry) = orjson.loads(reference.encode({"PPL": (3, later.to_json().decode(), later)}))
    assert isinstance(entry, list), "and the seal after that is a delta again"


def test_the_decoder_refuses_what_it_cannot_apply() -> None:
    decoder = Decoder()
    with pytest.raises(CompactError):
        decoder.quotes([5, [99_999, 1.0, 1, 0]])
    with pytest.raises(CompactError):
        decoder.quotes(["x"])
    with pytest.raises(CompactError):
        decoder.quotes([5, "nonsense"])


def test_shared_frames_are_compressed_once_and_only_when_it_pays() -> None:
    small = b'[1700000000000,[3,101.5,1,0]]'
    assert len(small) < DEFLATE_MIN_BYTES
    quotes = {f"S{n}": (n, Quote.make(f"S{n}", 100 + n, 100.0, ts=1).with_seq(n).to_json()
                        .decode(), Quote.make(f"S{n}", 100 + n, 100.0, ts=1).with_seq(n))
              for n in range(1, 10)}
    shared = Prepared("quotes", quotes, deflate_from=DEFLATE_MIN_BYTES)
    assert shared.wire[0] == 0xC1 and len(shared.wire) < len(shared.text) / 2
    assert inflate(shared.wire) == shared.text.encode()
    plain = Prepared("quotes", quotes)
    assert plain.wire == text_frame(plain.text.encode()), "protocol 1's bytes, unchanged"
    assert Prepared("quotes", {}, small.decode(), deflate_from=DEFLATE_MIN_BYTES).wire[0] == 0x81
    assert deflated_frame(random.Random(1).randbytes(600)) is None, "incompressible: as it is"


def test_the_extension_inflates_what_a_client_compressed() -> None:
    params, extension = SharedDeflateFactory().process_request_params(
        [("client_max_window_bits", None)], [])
    assert params == RESPONSE
    compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(b'{"op":"ping","id":1}') + compressor.flush(zlib.Z_SYNC_FLUSH)
    message = Frame(Opcode.TEXT, data[:-4], rsv1=True)
    assert extension.decode(message, max_size=1 << 20).data == b'{"op":"ping","id":1}'
    plain = Frame(Opcode.TEXT, b"{}")
    assert extension.decode(plain) is plain
    # Fragmented: RSV1 on the first frame only.
    compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(b"x" * 3000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    head = extension.decode(Frame(Opcode.TEXT, data[:5], fin=False, rsv1=True))
    tail = extension.decode(Frame(Opcode.CONT, data[5:-4]))
    assert head.data + tail.data == b"x" * 3000 and not tail.rsv1
    with pytest.raises(PayloadTooBig):
        extension.decode(Frame(Opcode.TEXT, data[:-4], rsv1=True), max_size=100)
    assert extension.encode(plain) is plain, "the server's own frames go as they are"


def test_an_offer_that_limits_the_server_window_is_declined() -> None:
    factory = SharedDeflateFactory()
    with pytest.raises(NegotiationError):
        factory.process_request_params([("server_max_window_bits", "10")], [])
    with pytest.raises(NegotiationError):
        factory.process_request_params([("x_unknown", None)], [])
    with pytest.raises(NegotiationError):
        factory.process_request_params([], [SharedDeflate()])
    factory.process_request_params([("server_max_window_bits", "15"),
                                    ("server_no_context_takeover", None)], [])
