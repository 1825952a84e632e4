"""Fuzzing harnesses (atheris, libFuzzer) for every parser of untrusted input.

    python fuzz/targets.py TARGET [libFuzzer flags, e.g. -max_total_time=60 -print_final_stats=1]

Each target feeds the fuzzer's bytes to one parser, which must answer or refuse with its own error;
anything else (an uncaught exception, a hang, a crash) is a finding. `scripts/dev fuzz [SECONDS]`
runs them all; the property tests in tests/test_properties.py cover the same parsers in the suite.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
import tomllib

import atheris

with atheris.instrument_imports():
    from peerix.daemon import config as daemon_config
    from peerix.http.ranges import RangeError, Unsatisfiable, parse_range
    from peerix.net import compression, lan, wire
    from peerix.nix import nar, nix32
    from peerix.nix.listing import ListingParser, NarFormatError
    from peerix.nix.narinfo import NarInfo, NarInfoError
    from peerix.nix.realisation import Realisation, RealisationError
    from tracker import config as tracker_config
    from tracker.model import ApiError, parse_announce, parse_deregister, parse_lookup


def narinfo(data: bytes) -> None:
    try:
        info = NarInfo.parse(data.decode("utf-8", "replace"))
    except NarInfoError:
        return
    assert NarInfo.parse(info.to_text()) == info


def nix32_text(data: bytes) -> None:
    text = data.decode("latin-1")
    try:
        decoded = nix32.decode(text)
    except ValueError:
        return
    assert nix32.encode(decoded) == text


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read_exact(self, size: int) -> bytes:
        if size > len(self.data):
            raise EOFError
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def wire_frame(data: bytes) -> None:
    try:
        message = asyncio.run(wire.read_frame(_Bytes(data)))
    except (wire.WireError, EOFError):
        return
    try:
        wire.NarRequest.from_message(message)
    except wire.WireError:
        pass


def zstd_block(data: bytes) -> None:
    if len(data) < compression.BLOCK.size + 4:
        return
    remaining = int.from_bytes(data[:4], "little") % (compression.MAX_BLOCK * 2)
    try:
        _, size = compression.parse_header(data[4:4 + compression.BLOCK.size], remaining)
        out = compression.unpack(data[4 + compression.BLOCK.size:], size)
    except compression.CompressionError:
        return
    assert len(out) == size <= remaining


def lan_packet(data: bytes) -> None:
    for tokens, required in (((), False), ((b"a-fleet-token-for-fuzzing",), True)):  # an open LAN, a fleet's
        try:
            lan.decode(data, time.time(), 300, tokens, required)
        except lan.PacketError:
            pass


def tracker_body(data: bytes) -> None:
    for parse in (lambda: parse_announce(data, "0" * 64, 1000), lambda: parse_lookup(data, 1000, 50),
                  lambda: parse_deregister(data)):
        try:
            parse()
        except ApiError as error:
            assert 400 <= error.status < 500


_CONFIG = os.path.join(tempfile.mkdtemp(prefix="peerix-fuzz-"), "config.toml")


def toml_config(data: bytes) -> None:
    """Both configurations from a fuzzed TOML file: loaded, or refused with ConfigError."""
    try:
        tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return  # not TOML: the TOML parser's business, refused as ConfigError by both loaders (tested)
    with open(_CONFIG, "wb") as file:
        file.write(data)
    for module, argv in ((daemon_config, []), (tracker_config, [])):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        try:
            module.load(parser.parse_args(["--config", _CONFIG, *argv]))
        except module.ConfigError:
            pass


_TREE = None


def nar_range(data: bytes) -> None:
    """Byte ranges of a fixed NAR, cut at fuzzed offsets, against the whole NAR."""
    global _TREE
    if _TREE is None:
        root = tempfile.mkdtemp(prefix="peerix-fuzz-tree-")
        for index in range(20):
            with open(os.path.join(root, f"f{index}"), "wb") as file:
                file.write(os.urandom(index * 97))
        os.symlink("f1", os.path.join(root, "link"))
        _TREE = (os.fsencode(root), b"".join(nar.dump(os.fsencode(root))))
    root, whole = _TREE
    if len(data) < 4:
        return
    start = int.from_bytes(data[:2], "little") % (len(whole) + 1)
    end = start + int.from_bytes(data[2:4], "little") % (len(whole) - start + 1)
    assert b"".join(nar.byte_range(nar.segments(root), start, end, chunk_size=64 + data[0])) == whole[start:end]


def nar_listing(data: bytes) -> None:
    """The NAR parser behind `.ls` listings, fed in chunks whose size the first byte picks."""
    if not data:
        return
    parser = ListingParser()
    step = data[0] + 1
    try:
        for start in range(1, len(data), step):
            parser.feed(data[start:start + step])
        parser.result()
    except NarFormatError:
        pass


def range_header(data: bytes) -> None:
    """HTTP Range headers on a NAR whose size the first two bytes pick: a range inside it, or a refusal."""
    if len(data) < 2:
        return
    size = int.from_bytes(data[:2], "little") + 1
    try:
        wanted = parse_range(data[2:].decode("latin-1"), size)
    except (RangeError, Unsatisfiable):
        return
    assert wanted is not None and 0 <= wanted[0] < wanted[1] <= size


def realisation(data: bytes) -> None:
    try:
        found = Realisation.parse(data)
    except RealisationError:
        return
    assert Realisation.parse(found.to_text()) == found


TARGETS = {f.__name__: f for f in (narinfo, nix32_text, wire_frame, zstd_block, lan_packet, tracker_body,
                                   toml_config, nar_range, nar_listing, range_header, realisation)}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} TARGET [libFuzzer flags]; targets: {', '.join(TARGETS)}")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
