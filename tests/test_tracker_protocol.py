"""The wire agreement between daemon and tracker: packed hash parts and request signatures."""

import random

import pytest

from peerix.net.tracker_protocol import Signature, pack_hash, sign, signed_message, unpack_hash
from peerix.nix import nix32

from trackertools import new_key, random_hashes


def test_pack_hash_is_nix32_decode() -> None:
    hashes = random_hashes(2000, random.Random(7)) + ["0" * 32, "z" * 32, "1" + "0" * 31, "0" * 31 + "1"]
    for text in hashes:
        packed = pack_hash(text)
        assert packed == nix32.decode(text) and len(packed) == 20
        assert unpack_hash(packed) == text
    assert pack_hash("z" * 32) == b"\xff" * 20


@pytest.mark.parametrize("text", ["", "0" * 31, "0" * 33, "e" * 32, "o" * 32, "t" * 32, "u" * 32, "A" * 32,
                                  "0" * 31 + "/", "٣" * 32])
def test_pack_hash_refuses_what_is_not_a_hash_part(text: str) -> None:
    with pytest.raises(ValueError, match="not a store path hash part"):
        pack_hash(text)


def test_signature_round_trip_and_every_field_is_covered() -> None:
    key = new_key()
    headers = sign(key, "POST", "/api/v1/announce", b'{"a":1}', timestamp=1700000000, nonce="ab" * 16)
    signature = Signature.from_headers(headers)
    assert signature is not None and signature.peer_id == bytes(key.verify_key).hex()
    assert signature.verify("POST", "/api/v1/announce", b'{"a":1}')
    assert not signature.verify("DELETE", "/api/v1/announce", b'{"a":1}')
    assert not signature.verify("POST", "/api/v1/peers", b'{"a":1}')
    assert not signature.verify("POST", "/api/v1/announce", b'{"a":2}')
    for field, value in (("timestamp", 1700000001), ("nonce", "cd" * 16)):
        moved = Signature(**{**signature.__dict__, field: value})
        assert not moved.verify("POST", "/api/v1/announce", b'{"a":1}')
    other = Signature(bytes(new_key().verify_key).hex(), signature.timestamp, signature.nonce, signature.signature)
    assert not other.verify("POST", "/api/v1/announce", b'{"a":1}')


def test_signed_message_separates_fields() -> None:
    """Fields are on lines of their own, so no two requests share a message."""
    one = signed_message("POST", "/a", 1, "n", b"")
    two = signed_message("POS", "T/a", 1, "n", b"")
    assert one != two and one.startswith(b"peerix-tracker-request-v1\nPOST\n/a\n1\nn\n")


@pytest.mark.parametrize("change, error", [
    ({"x-peerix-signature": None}, "missing x-peerix-signature"),
    ({"x-peerix-peer": "AB" * 32}, "64 lowercase hex"),
    ({"x-peerix-timestamp": "17e8"}, "whole seconds"),
    ({"x-peerix-timestamp": "-5"}, "whole seconds"),
    ({"x-peerix-nonce": "short"}, "32 lowercase hex"),
    ({"x-peerix-signature": "00" * 63}, "128 lowercase hex"),
])
def test_malformed_signature_headers(change: dict, error: str) -> None:
    headers = {**sign(new_key(), "GET", "/", b""), **change}
    headers = {name: value for name, value in headers.items() if value is not None}
    with pytest.raises(ValueError, match=error):
        Signature.from_headers(headers)


def test_unsigned_request_has_no_signature() -> None:
    assert Signature.from_headers({"content-type": "application/json"}) is None
