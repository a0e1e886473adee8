"""The spotrain TorchX scheduler's log reader: pods/log bytes, in whatever chunks the API server sends them, become
the lines TorchX expects (each with its newline), whatever the chunk boundaries cut (lines, UTF-8 sequences)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from spotrain_operator.torchx_scheduler import log_lines


@st.composite
def chunked(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    text = draw(st.text(alphabet=st.sampled_from(["a", "é", "日", "\n", "\r", " "]), max_size=60))
    data = text.encode()
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return text, [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(chunked())
def test_lines_rebuild_the_text_and_each_ends_with_its_newline(case: tuple[str, list[bytes]]) -> None:
    text, chunks = case
    lines = list(log_lines(chunks))
    assert "".join(lines) == text
    assert all(line.endswith("\n") and "\n" not in line[:-1] for line in lines[:-1])
    assert not lines or "\n" not in lines[-1][:-1]
    assert all(lines)


def test_a_line_is_yielded_once_complete_and_the_reader_is_released() -> None:
    released: list[bool] = []

    def chunks() -> Iterator[bytes]:
        yield b"first li"
        yield b"ne\nsecond"
        raise AssertionError("read past what the consumer needed")

    reader = log_lines(chunks(), lambda: released.append(True))
    assert next(reader) == "first line\n"
    reader.close()  # the consumer stops early (torchx log's tail interrupted, itertools.islice)
    assert released == [True]
