"""Prepared wire bytes equal what the websockets library itself would put on the wire."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from service.wire import Prepared, text_frame, text_of, wire_of


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_text_frame_matches_the_websockets_library(size: int) -> None:
    payload = ("▲" * size).encode()[:size]
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected


def test_prepared_keeps_the_text_and_its_frame() -> None:
    frame = Prepared("quotes", {"OGDC": (7, '{"symbol":"OGDC","seq":7}')})
    assert frame.text == '{"type":"quotes","quotes":[{"symbol":"OGDC","seq":7}]}'
    assert frame.wire == text_frame(frame.text.encode())
    assert (frame.kind, list(frame.seqs())) == ("quotes", [("OGDC", 7)])
    assert wire_of(frame) is frame.wire and text_of(frame) is frame.text


def test_a_control_frame_is_framed_when_written() -> None:
    assert wire_of('{"type":"pong"}') == text_frame(b'{"type":"pong"}')
