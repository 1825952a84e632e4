"""Every parser of untrusted input, fed what hypothesis makes up: it answers or refuses with its own
error, never anything else; and what the writers write, the parsers read back unchanged.

The NAR writer is held to `nix-store --dump` itself on random trees.
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import string
import subprocess
import time
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from peerix.daemon import config as daemon_config
from peerix.net import compression, lan, wire
from peerix.net.endpoint import EndpointAddress
from peerix.nix import nar, nix32
from peerix.nix.hash import format_sha256
from peerix.nix.listing import ListingParser, NarFormatError, render, tree_listing
from peerix.nix.narinfo import NarInfo, NarInfoError
from peerix.nix.realisation import Realisation, RealisationError
from peerix.nix.signing import PublicKey
from peerix.nix.storepath import StorePath
from tracker import config as tracker_config
from tracker.model import ApiError, parse_announce, parse_deregister, parse_limit, parse_lookup

from nixtools import why_no_nix

# Correctness, not speed: a busy machine (CI with a worker per core) must not fail an example on time.
settings.register_profile("peerix", deadline=None)
settings.load_profile("peerix")

HASH_PARTS = st.text(nix32.ALPHABET, min_size=32, max_size=32)
NAMES = st.text(string.ascii_letters + string.digits + "+-._?=", min_size=1, max_size=40).filter(
    lambda name: name not in (".", ".."))
STORE_PATHS = st.builds(StorePath, HASH_PARTS, NAMES)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20)


# nix32


@given(st.binary(max_size=64))
def test_nix32_round_trips(data: bytes) -> None:
    assert nix32.decode(nix32.encode(data)) == data if data else nix32.encode(data) == ""


@given(st.text(max_size=60) | st.text(nix32.ALPHABET, max_size=60))
def test_nix32_decodes_or_refuses(text: str) -> None:
    try:
        decoded = nix32.decode(text)
    except ValueError:
        return
    assert nix32.encode(decoded) == text


# narinfo


@st.composite
def narinfos(draw: st.DrawFn) -> NarInfo:
    nar_hash = draw(st.binary(min_size=32, max_size=32))
    size = draw(st.integers(1, 1 << 40))
    signature = st.builds(lambda name, sig: f"{name}:{sig}", NAMES, st.text(string.ascii_letters + "+/=", max_size=88))
    return NarInfo(
        store_path=draw(STORE_PATHS), nar_hash=nar_hash, nar_size=size,
        references=tuple(sorted(draw(st.sets(STORE_PATHS, max_size=5)))),
        deriver=draw(st.none() | STORE_PATHS), sigs=tuple(draw(st.lists(signature, max_size=3))),
        ca=draw(st.none() | st.sampled_from(["fixed:r:sha256:" + nix32.encode(nar_hash), "text:sha256:abc"])),
        url=f"nar/{nix32.encode(nar_hash)}.nar", compression=draw(st.sampled_from(["none", "xz", "zstd", "bzip2"])),
        file_hash=draw(st.none() | st.just(nar_hash)), file_size=draw(st.none() | st.integers(0, 1 << 40)),
    )


@given(narinfos())
def test_narinfo_round_trips(info: NarInfo) -> None:
    assert NarInfo.parse(info.to_text()) == info


def _narinfo_lines() -> st.SearchStrategy[str]:
    keys = st.sampled_from(["StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize",
                            "References", "Deriver", "Sig", "CA", "Other"])
    values = st.text(max_size=80) | st.builds(lambda p: p.full(), STORE_PATHS) | st.integers().map(str) | \
        st.binary(min_size=32, max_size=32).map(format_sha256)
    line = st.builds(lambda k, v: f"{k}: {v}", keys, values) | st.text(max_size=40)
    return st.lists(line, max_size=12).map("\n".join)


@given(_narinfo_lines() | st.text(max_size=300))
@example("StorePath: /nix/store/" + "0" * 32 + "-a\nURL: x\nNarHash: sha256:" + "0" * 52 + "\nNarSize: 1e3\n")
def test_narinfo_parses_or_refuses(text: str) -> None:
    try:
        info = NarInfo.parse(text)
    except NarInfoError:
        return
    assert info.nar_size > 0 and info.url and NarInfo.parse(info.to_text()) == info


# the NAR writer and its byte ranges, against Nix itself


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> dict:
    """A directory: names to file contents (bytes), executables ("x", bytes), symlinks ("l", target)
    and subdirectories (dict)."""
    names = draw(st.sets(st.text(string.ascii_letters + string.digits + " ._-é", min_size=1, max_size=12)
                         .filter(lambda n: n not in (".", "..")), max_size=5))
    node = st.binary(max_size=3000) | st.tuples(st.just("x"), st.binary(max_size=300)) | \
        st.tuples(st.just("l"), st.text(string.ascii_letters + "/.", min_size=1, max_size=20))
    if depth < 2:
        node = node | trees(depth + 1)
    return {name: draw(node) for name in names}


def _make(path: Path, tree: dict) -> None:
    path.mkdir()
    for name, node in tree.items():
        target = path / name
        if isinstance(node, dict):
            _make(target, node)
        elif isinstance(node, tuple) and node[0] == "l":
            target.symlink_to(node[1])
        else:
            executable, data = (True, node[1]) if isinstance(node, tuple) else (False, node)
            target.write_bytes(data)
            target.chmod(0o755 if executable else 0o644)


@pytest.mark.skipif(why_no_nix() is not None, reason=why_no_nix() or "")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees(), cuts=st.lists(st.floats(0, 1), min_size=2, max_size=6))
def test_nar_and_its_ranges_match_nix(tmp_path_factory: pytest.TempPathFactory, tree: dict, cuts: list[float]) -> None:
    root = tmp_path_factory.mktemp("tree") / "root"
    _make(root, tree)
    expected = subprocess.run(["nix-store", "--dump", str(root)], capture_output=True, check=True).stdout
    assert b"".join(nar.dump(os.fsencode(root), chunk_size=512)) == expected
    size = len(expected)
    bounds = sorted(int(cut * size) for cut in cuts)
    for start, end in zip(bounds, bounds[1:], strict=False):
        got = b"".join(nar.byte_range(nar.segments(os.fsencode(root)), start, end, chunk_size=700))
        assert got == expected[start:end]
    cursor = nar.SegmentCursor(nar.segments(os.fsencode(root)))  # consecutive ranges share one walk
    assert b"".join(b"".join(nar.byte_range(cursor, a, b)) for a, b in zip([0, *bounds], [*bounds, size],
                                                                          strict=True)) == expected
    cursor.close()
    # The listing of the tree (nothing read) is the listing of Nix's NAR, fed in any chunks.
    parser = ListingParser()
    for start, end in zip([0, *bounds], [*bounds, size], strict=True):
        parser.feed(expected[start:end])
    assert render(tree_listing(os.fsencode(root))) == render(parser.result())
    index = nar.SegmentIndex(list(nar.segments(os.fsencode(root))))  # later ranges need no walk
    for start, end in zip(bounds, bounds[1:], strict=False):
        assert b"".join(nar.byte_range(index.cursor(start), start, end, chunk_size=700)) == expected[start:end]
    for node in _regular_files(parser.result()["root"]):
        assert expected[node["narOffset"] - 8:node["narOffset"]] == node["size"].to_bytes(8, "little")


def _regular_files(node: dict) -> list[dict]:
    if node["type"] == "directory":
        return [file for child in node["entries"].values() for file in _regular_files(child)]
    return [node] if node["type"] == "regular" else []


_NAR = b"".join(nar.dump(os.fsencode(Path(__file__).parent / "nix")))  # a real NAR to mutate


@given(st.binary(max_size=400) | st.builds(lambda at, junk: _NAR[:at] + junk + _NAR[at + len(junk):],
                                           st.integers(0, len(_NAR)), st.binary(min_size=1, max_size=16))
       | st.integers(0, len(_NAR)).map(lambda at: _NAR[:at]), st.integers(1, 5000))
def test_nar_listings_parse_or_refuse(data: bytes, chunk: int) -> None:
    parser = ListingParser()
    try:
        for start in range(0, len(data), chunk):
            parser.feed(data[start:start + chunk])
        found = parser.result()
    except NarFormatError:
        return
    assert found["version"] == 1 and found["root"]["type"] in ("regular", "symlink", "directory")


# realisations

_IDS = st.builds(lambda digest, output: f"sha256:{digest.hex()}!{output}", st.binary(min_size=32, max_size=32),
                 NAMES.filter(lambda n: len(n) <= 64))


@given(st.builds(Realisation, _IDS, STORE_PATHS, st.lists(st.text(max_size=20), max_size=3).map(tuple),
                 st.dictionaries(_IDS, STORE_PATHS.map(lambda p: p.basename), max_size=3).map(
                     lambda d: tuple(sorted(d.items())))))
def test_realisations_round_trip(realisation: Realisation) -> None:
    assert Realisation.parse(realisation.to_text()) == realisation
    assert "signatures" not in json.loads(realisation.fingerprint())


@given(st.binary(max_size=300) | st.dictionaries(
    st.sampled_from(["id", "outPath", "signatures", "dependentRealisations", "x"]),
    JSON_VALUES | _IDS | STORE_PATHS.map(lambda p: p.basename)).map(lambda d: json.dumps(d).encode()))
def test_realisations_parse_or_refuse(text: bytes) -> None:
    try:
        realisation = Realisation.parse(text)
    except RealisationError:
        return
    assert Realisation.parse(realisation.to_text()) == realisation


# wire frames


class _Bytes:
    """A stream that holds `data`; reading past its end fails as a cut-off iroh stream does."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read_exact(self, size: int) -> bytes:
        if size > len(self.data):
            raise EOFError("stream ended")
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


@given(st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=6))
def test_wire_frames_round_trip(message: dict) -> None:
    assert asyncio.run(wire.read_frame(_Bytes(wire.encode_frame(message)))) == message


@given(st.binary(max_size=64) | st.builds(lambda body: len(body).to_bytes(4, "big") + body, st.binary(max_size=64))
       | st.builds(lambda v: wire.encode_frame({"x": 1})[:4] + json.dumps(v).encode(), JSON_VALUES))
@example(b"\xff\xff\xff\xff")
@example((2001).to_bytes(4, "big") + b"[" * 2000 + b"]" * 1)
def test_wire_frames_parse_or_refuse(data: bytes) -> None:
    try:
        message = asyncio.run(wire.read_frame(_Bytes(data)))
    except (wire.WireError, EOFError):
        return
    assert isinstance(message, dict)


@given(st.dictionaries(st.sampled_from(["hash", "nar_hash", "offset", "length", "zstd", "x"]), JSON_VALUES))
def test_nar_requests_parse_or_refuse(message: dict) -> None:
    try:
        request = wire.NarRequest.from_message(message)
    except wire.WireError:
        return
    assert request.offset >= 0 and (request.length is None or request.length >= 0)
    assert wire.NarRequest.from_message(json.loads(request.to_frame()[4:])) == request


# zstd blocks


@given(st.lists(st.binary(max_size=5000) | st.text(max_size=3000).map(str.encode), max_size=6))
def test_zstd_blocks_round_trip(chunks: list[bytes]) -> None:
    compressor = compression.BlockCompressor(level=1)
    for chunk in chunks:
        for block in compressor.blocks(chunk):
            stored, size = compression.parse_header(block[:compression.BLOCK.size], len(chunk))
            assert compression.unpack(block[compression.BLOCK.size:], size) == chunk[:size] or size < len(chunk)


@given(st.binary(min_size=8, max_size=8), st.binary(max_size=300), st.integers(0, compression.MAX_BLOCK * 2))
def test_zstd_blocks_parse_or_refuse(header: bytes, stored: bytes, remaining: int) -> None:
    try:
        _, size = compression.parse_header(header, remaining)
        data = compression.unpack(stored, size)
    except compression.CompressionError:
        return
    assert len(data) == size <= min(remaining, compression.MAX_BLOCK)


# LAN packets

_KEY = nacl.signing.SigningKey(bytes(range(32)))
_PEER = bytes(_KEY.verify_key).hex()


@given(st.text(max_size=64), st.lists(st.text(max_size=30), max_size=4), st.booleans())
def test_lan_packets_round_trip(name: str, direct: list[str], ask: bool) -> None:
    sent = lan.Announcement(EndpointAddress(_PEER, tuple(direct)), name, time.time(), ask)
    try:
        packet = lan.encode(sent, _KEY)
    except lan.PacketError:
        return  # too large for one datagram: never sent
    assert lan.decode(packet, sent.sent_at, 300) == sent


@st.composite
def lan_packets(draw: st.DrawFn, magic: bytes = lan.MAGIC) -> bytes:
    body = draw(st.dictionaries(st.sampled_from(["v", "id", "name", "direct", "relay", "t", "ask"]), JSON_VALUES))
    body.setdefault("id", _PEER)
    signed = magic + json.dumps(body).encode()
    signature = _KEY.sign(signed).signature if draw(st.booleans()) else draw(st.binary(min_size=64, max_size=64))
    return signed + signature


@given(lan_packets() | st.binary(max_size=1500) | st.binary(max_size=200).map(lambda b: lan.MAGIC + b))
def test_lan_packets_parse_or_refuse(packet: bytes) -> None:
    try:
        announcement = lan.decode(packet, time.time(), 300)
    except lan.PacketError as error:
        assert str(error).split(":", 1)[0] in ("oversized", "malformed", "unsigned", "stale", "replayed")
        return
    assert announcement.peer_id == _PEER and len(announcement.name) <= 64


_FLEET_TOKEN = b"the-fleet-token-of-the-properties"


@given(st.text(max_size=64), st.lists(st.text(max_size=30), max_size=4), st.binary(min_size=16, max_size=64))
def test_lan_packets_proving_a_fleet_token_round_trip(name: str, direct: list[str], other: bytes) -> None:
    sent = lan.Announcement(EndpointAddress(_PEER, tuple(direct)), name, time.time())
    try:
        packet = lan.encode(sent, _KEY, _FLEET_TOKEN)
    except lan.PacketError:
        return
    assert lan.decode(packet, sent.sent_at, 300, (other, _FLEET_TOKEN), require_proof=True) == sent
    assert lan.decode(packet, sent.sent_at, 300) == sent  # a host without the token reads the announcement
    if other != _FLEET_TOKEN:
        with pytest.raises(lan.PacketError, match="^wrong-token"):
            lan.decode(packet, sent.sent_at, 300, (other,))
    with pytest.raises(lan.PacketError, match="^unproven"):
        lan.decode(lan.encode(sent, _KEY), sent.sent_at, 300, (_FLEET_TOKEN,), require_proof=True)


@st.composite
def fleet_packets(draw: st.DrawFn) -> bytes:
    """PXF1 packets: a signed or garbled body, then a proof by the fleet's token, another token, or noise."""
    packet = draw(lan_packets(lan.FLEET_MAGIC))
    proof = draw(st.sampled_from([_FLEET_TOKEN, b"another-token-of-16"]).map(
        lambda token: hmac.new(token, packet, hashlib.sha256).digest()) | st.binary(min_size=32, max_size=32))
    return packet + proof


@given(fleet_packets() | lan_packets() | st.binary(max_size=1500)
       | st.binary(max_size=200).map(lambda b: lan.FLEET_MAGIC + b))
def test_lan_packets_under_a_fleet_token_parse_or_refuse(packet: bytes) -> None:
    try:
        announcement = lan.decode(packet, time.time(), 300, (_FLEET_TOKEN,), require_proof=True)
    except lan.PacketError as error:
        assert str(error).split(":", 1)[0] in ("oversized", "malformed", "unsigned", "stale", "replayed",
                                               "unproven", "wrong-token")
        return
    assert packet.startswith(lan.FLEET_MAGIC) and announcement.peer_id == _PEER


# tracker request bodies


def _bodies(keys: list[str]) -> st.SearchStrategy[bytes]:
    hashes = st.lists(HASH_PARTS | st.text(max_size=34) | JSON_VALUES, max_size=5)
    values = JSON_VALUES | hashes | st.fixed_dictionaries(
        {}, optional={"endpoint_id": st.just("0" * 64) | st.text(max_size=64), "direct": st.lists(
            st.sampled_from(["127.0.0.1:1", "[::1]:80", "1.2.3.4:0", "x:1", "[1.2.3.4]:5"]) | JSON_VALUES,
            max_size=3), "relay_url": JSON_VALUES | st.just("https://r.example"), "http_url": JSON_VALUES})
    structured = st.dictionaries(st.sampled_from(keys), values).map(lambda d: json.dumps(d).encode())
    return structured | st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode())


@given(_bodies(["name", "addresses", "hashes", "since", "added", "removed", "limit", "forget"]))
@example(b'{"name": "a", "addresses": {}, "since": 1, "added": [], "removed": []}')
def test_tracker_bodies_parse_or_refuse(body: bytes) -> None:
    for parse in (lambda: parse_announce(body, "0" * 64, 3), lambda: parse_lookup(body, 3, 10),
                  lambda: parse_deregister(body)):
        try:
            parse()
        except ApiError as error:
            assert 400 <= error.status < 500 and error.code and error.message


@given(JSON_VALUES)
def test_lookup_limits_parse_or_refuse(value: object) -> None:
    try:
        assert 1 <= parse_limit(value, 50) <= 50
    except ApiError as error:
        assert error.status == 400


# TOML configuration

_TOML_VALUES = st.recursive(
    st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3), max_leaves=6)


def _toml(values: dict) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())  # JSON scalars are TOML


def _load(module, parser: argparse.ArgumentParser, path: Path) -> object:
    return module.load(parser.parse_args(["--config", str(path)]))


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(daemon_config.SETTINGS)) | st.text(max_size=8), _TOML_VALUES,
                       max_size=6))
def test_daemon_configuration_loads_or_refuses(tmp_path: Path, values: dict) -> None:
    path = tmp_path / "peerix.toml"
    path.write_text(_toml(values))
    parser = argparse.ArgumentParser()
    daemon_config.add_arguments(parser)
    try:
        loaded = _load(daemon_config, parser, path)
    except daemon_config.ConfigError:
        return
    # What a loaded configuration promises the daemon: nothing it would only trip over at start.
    assert isinstance(loaded, daemon_config.Config)
    assert 0 < loaded.lan_port < 65536 and 0 <= loaded.listen[1] < 65536
    daemon_config.parse_listen(loaded.iroh_listen)
    for name in ("lan_interval", "lan_expiry", "connect_timeout", "peer_timeout", "stall_timeout"):
        assert 0 < getattr(loaded, name) < float("inf"), name
    assert 0 <= loaded.miss_ttl < float("inf") and loaded.max_sources >= 1 and type(loaded.priority) is int
    assert all(isinstance(key, str) and PublicKey.parse(key) for key in loaded.trusted_public_keys)
    assert 1 <= len(loaded.name) <= 64 and loaded.name.isprintable()


_TRACKER_KEYS = sorted(setting.name for setting in tracker_config.SETTINGS)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(_TRACKER_KEYS) | st.text(max_size=8), _TOML_VALUES, max_size=6))
def test_tracker_configuration_loads_or_refuses(tmp_path: Path, values: dict) -> None:
    path = tmp_path / "tracker.toml"
    path.write_text(_toml(values))
    from tracker.cli import build_parser

    try:
        loaded = tracker_config.load(build_parser().parse_args(["serve", "--config", str(path)]))
    except tracker_config.ConfigError:
        return
    assert isinstance(loaded, tracker_config.Config)
