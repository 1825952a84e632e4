"""Range headers as Nix, curl and browsers send them, and the ones that get a 400 or a 416."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerix.http.ranges import RangeError, Unsatisfiable, content_range, parse_range


@pytest.mark.parametrize(("header", "wanted"), [
    (None, None), ("bytes=0-0", (0, 1)), ("bytes=0-", (0, 100)), ("bytes=99-99", (99, 100)), ("bytes=-1", (99, 100)),
    ("bytes=-500", (0, 100)), ("bytes=10-1000", (10, 100)), (" bytes = 5 - 9 ", (5, 10)),
])
def test_one_range(header: str | None, wanted: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == wanted


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, 100)


@pytest.mark.parametrize("header", ["bytes=", "bytes=-", "bytes=x-1", "bytes=5-2", "bytes=0-1,3-4", "items=0-1",
                                    "bytes=1e3-", "bytes=" + "9" * 30 + "-", "0-1"])
def test_malformed(header: str) -> None:
    with pytest.raises(RangeError):
        parse_range(header, 100)


def test_content_range() -> None:
    assert content_range(0, 1, 100) == "bytes 0-0/100"


@given(st.text(max_size=40) | st.from_regex(r"bytes=\d{0,4}-\d{0,4}", fullmatch=True), st.integers(1, 5000))
def test_any_header_gives_a_range_inside_the_nar_or_a_refusal(header: str, size: int) -> None:
    try:
        start, end = parse_range(header, size)  # type: ignore[misc]
    except (RangeError, Unsatisfiable):
        return
    assert 0 <= start < end <= size
