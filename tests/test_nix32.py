import os

import pytest

from peerix.nix import nix32
from peerix.nix.hash import format_sha256, parse_sha256

from nixtools import nix, why_no_nix


@pytest.mark.parametrize("size", [1, 2, 5, 7, 20, 32, 64])
def test_round_trip(size: int) -> None:
    for _ in range(200):
        data = os.urandom(size)
        text = nix32.encode(data)
        assert len(text) == nix32.encoded_length(size)
        assert set(text) <= set(nix32.ALPHABET)
        assert nix32.decode(text) == data


def test_known_vector_bit_order() -> None:
    # The last byte's high bits come first: this pins the order, not just a round trip.
    assert nix32.encode(bytes([0x1F])) == "0z"
    assert nix32.encode(bytes([0xFF])) == "7z"
    assert nix32.encode(bytes(19) + b"\x80") == "h" + "0" * 31  # as `nix hash to-base32 --type sha1` prints
    assert nix32.encode(b"\x80" + bytes(19)) == "0" * 30 + "40"


@pytest.mark.skipif(why_no_nix() is not None, reason=why_no_nix() or "")
def test_matches_nix() -> None:
    for _ in range(5):
        digest = os.urandom(32)
        expected = nix("hash", "to-base32", "--type", "sha256", digest.hex()).stdout.decode().strip()
        assert nix32.encode(digest) == expected


@pytest.mark.parametrize("bad", ["", "e" * 52, "0" * 51, "0" * 54, "z" + "0" * 51, "ö" * 52, "0/" * 26])
def test_decode_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        nix32.decode(bad)
    if len(bad) == 52:
        with pytest.raises(ValueError):
            parse_sha256("sha256:" + bad)


def test_sha256_notations_agree() -> None:
    digest = os.urandom(32)
    import base64
    forms = [
        format_sha256(digest),
        "sha256:" + digest.hex(),
        "sha256:" + base64.b64encode(digest).decode(),
        "sha256-" + base64.b64encode(digest).decode(),
    ]
    assert {parse_sha256(form) for form in forms} == {digest}
    for bad in ["md5:" + digest.hex(), "sha256:" + digest.hex()[:-1], "sha256-" + "!" * 44, "sha256"]:
        with pytest.raises(ValueError):
            parse_sha256(bad)
