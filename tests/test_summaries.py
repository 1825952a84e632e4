"""Store summaries: the filter's bounds (size, false positives), its safety against a corrupt or
hostile one, and the asking host's rule that a summary only ever saves questions (real iroh
endpoints on loopback; the LAN's packets are set in as LanDiscovery keeps them)."""

import os
import secrets
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerix.net import wire
from peerix.net.endpoint import EndpointSettings, PeerEndpoint
from peerix.net.lan import Announcement, LanDiscovery, LanPeer, LanSettings
from peerix.net.store_filter import FilterError, StoreFilter
from peerix.nix import nix32
from peerix.nix.narinfo import NarInfo
from peerix.nix.signing import SecretKey, sign_info
from peerix.swarm.candidates import LanSource
from peerix.swarm.peers import Peers
from peerix.swarm.policy import Accept, Policy
from peerix.swarm.remote import RemoteSettings, RemoteStore
from peerix.swarm.reputation import Reputation
from peerix.swarm.summaries import PeerSummaries
from peerix.telemetry.metrics import Metrics


def hashes(count: int) -> list[str]:
    """Stand-ins for hash parts: 32 random characters (the filter keys on the text)."""
    return [secrets.token_hex(16) for _ in range(count)]


def test_a_100k_path_store_fits_in_128_kib_with_under_half_a_percent_false_positives() -> None:
    held = hashes(100_000)
    summary = StoreFilter.build(held)
    assert len(summary.data) <= 128 << 10 and summary.size == 100_000
    assert all(h in summary for h in held)  # never a false negative
    others = hashes(200_000)
    assert sum(h in summary for h in others) / len(others) <= 0.005
    again = StoreFilter.parse(summary.data)  # as a peer receives it
    assert again.generation == summary.generation and all(h in again for h in held[:1000])
    assert StoreFilter.build(held[:-1]).generation != summary.generation


def test_an_empty_store_has_a_summary_too() -> None:
    empty = StoreFilter.parse(StoreFilter.build([]).data)
    assert empty.size == 0 and sum(h in empty for h in hashes(10_000)) <= 50  # its false positives only


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 39), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(-40, 40))
def test_a_corrupt_filter_is_refused_or_harmless(edits: list[tuple[int, int]], cut: int) -> None:
    """Bytes flipped in the header (or anywhere) and the length changed: parse refuses it, or what it
    accepts is consistent enough that every lookup stays inside the bytes received (no crash)."""
    data = bytearray(StoreFilter.build(hashes(50)).data)
    for position, value in edits:
        data[position] = value
    data = data[:cut] if cut < 0 else data + bytes(cut)
    try:
        summary = StoreFilter.parse(bytes(data))
    except FilterError:
        return
    assert all(isinstance(h in summary, bool) for h in hashes(200))


def test_a_header_that_would_read_past_the_end_is_refused() -> None:
    data = StoreFilter.build(hashes(50)).data
    seed, size, segment, segments, length, array = struct.unpack_from("<QIIIII", data)
    for header in ((seed, size, segment, segments + 1000, (segments + 1000) * segment, array),  # lookups past the end
                   (seed, size, segment * 2 + 1, segments, length, array),  # not a power of two
                   (seed, size, segment, segments, length, 1 << 31)):  # a huge copy
        with pytest.raises(FilterError):
            StoreFilter.parse(struct.pack("<QIIIII", *header) + data[28:])
    for junk in (b"", b"\0" * 27, os.urandom(4096)):
        with pytest.raises(FilterError):
            StoreFilter.parse(junk)


OFFLINE = EndpointSettings(bind="127.0.0.1:0", relays=False, discovery=False, connect_timeout=1.0)


def absent(*filters: StoreFilter) -> str:
    """A random hash that none of the filters claims: a filter has false positives, one in 256."""
    while True:
        hash_part = nix32.encode(os.urandom(20))
        if not any(hash_part in summary for summary in filters):
            return hash_part


async def test_a_summary_that_claims_too_little_never_makes_a_path_unreachable() -> None:
    """Two LAN peers: `holder` has the path but its summary (older than the path) claims nothing,
    `empty` has an accurate empty one. The likely holders (none) are asked first, then both: the
    path is found, and the miss of a path neither has costs no more than without summaries."""
    key = SecretKey.generate("cluster-1")

    def signed(hash_part: str) -> str:
        text = (f"StorePath: /nix/store/{hash_part}-hello\nURL: nar/x.nar\nCompression: none\n"
                f"NarHash: sha256:{nix32.encode(os.urandom(32))}\nNarSize: 100\nReferences: \n")
        return sign_info(NarInfo.parse(text), key).to_text()

    first, second = nix32.encode(os.urandom(20)), nix32.encode(os.urandom(20))
    asked: list[tuple[str, str]] = []  # (peer, hash): a question of an earlier lookup may arrive late

    def who(hash_part: str) -> list[str]:
        return sorted(name for name, asked_for in asked if asked_for == hash_part)

    def answering(name: str, held: dict[str, str]):
        async def narinfo_handler(peer_id, stream) -> None:
            request = await wire.read_frame(stream.recv())
            asked.append((name, request["hash"]))
            text = held.get(request["hash"])
            await stream.send().write_all(wire.encode_frame({"status": "ok", "narinfo": text} if text else
                                                            {"status": "not-found"}))
            await stream.send().finish()
            await stream.send().stopped()
        return {wire.NARINFO_ALPN: narinfo_handler}

    holder = await PeerEndpoint.start(os.urandom(32), OFFLINE,
                                      answering("holder", {first: signed(first), second: signed(second)}))
    empty = await PeerEndpoint.start(os.urandom(32), OFFLINE, answering("empty", {}))
    asker = await PeerEndpoint.start(os.urandom(32), OFFLINE, {})
    metrics = Metrics()
    try:
        lan = LanDiscovery(os.urandom(32), LanSettings(), asker.address, "asker")
        summaries = PeerSummaries(asker, metrics)
        for peer in (holder, empty):
            lan.peers[peer.peer_id] = LanPeer(Announcement(peer.address(), "peer", time.time()), "lan",
                                              time.monotonic(), time.time(), ("127.0.0.1", 12304))
            summaries.filters[peer.peer_id] = nothing = StoreFilter.build([])
            summaries.announced[peer.peer_id] = nothing.generation
        peers = Peers(asker, [LanSource(lan, summaries)], Reputation(), metrics)
        remote = RemoteStore(peers, Policy([key.public], Accept.SIGNATURE), RemoteSettings(miss_ttl=0.001))
        found = await remote.path_info(first)
        assert found is not None and found.info.store_path.hash_part == first
        assert "holder" in who(first)  # and maybe `empty`: asked at once, it may lose the race to be cancelled
        assert metrics.summary_questions.labels("claimed-too-little")._value.get() == 2
        # an accurate summary: the holder alone is asked
        summaries.filters[holder.peer_id] = accurate = StoreFilter.build([first, second])
        summaries.announced[holder.peer_id] = accurate.generation
        remote = RemoteStore(peers, Policy([key.public], Accept.SIGNATURE), RemoteSettings(miss_ttl=0.001))
        assert await remote.path_info(second) is not None and who(second) == ["holder"]
        assert metrics.summary_questions.labels("saved")._value.get() == 1
        # a path nobody has: both asked anyway (a miss costs what it did without summaries)
        other = absent(accurate, nothing)
        assert await remote.path_info(other) is None and who(other) == ["empty", "holder"]
        assert metrics.summary_questions.labels("asked-anyway")._value.get() == 2
        # a summary the packets no longer name is not used: the holder is a likely one again
        summaries.announced[holder.peer_id] = accurate.generation + 1  # a newer one, not fetched yet
        another = absent(nothing)
        assert await remote.path_info(another) is None and who(another) == ["empty", "holder"]
        assert metrics.summary_questions.labels("asked-anyway")._value.get() == 3
    finally:
        for endpoint in (asker, holder, empty):
            await endpoint.close()
