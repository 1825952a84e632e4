"""The daemon's tracker client against a real tracker: delta sync that survives restarts, resync, backoff."""

import asyncio
import os
import socket
import time
from pathlib import Path

import nacl.signing
import pytest

from peerix.net.tracker_client import PeerAddresses, TrackerClient, TrackerError
from peerix.net.tracker_protocol import PEERS_PATH

from trackertools import TrackerProcess, random_hashes, signed


def addresses(client: TrackerClient) -> PeerAddresses:
    return PeerAddresses(client.peer_id, ("127.0.0.1:4433",), None, "http://127.0.0.1:12304")


def announces(tracker: TrackerProcess) -> dict[str, float]:
    return {kind: tracker.metric(f'peerix_tracker_announces_total{{kind="{kind}"}}')
            for kind in ("full", "delta", "heartbeat")}


async def held_by(client: TrackerClient, hashes: list[str], peer_id: str) -> set[str]:
    found = await client.lookup_many(hashes)
    assert set(found) == set(hashes)
    return {hash_part for hash_part, peers in found.items() if peer_id in {peer.peer_id for peer in peers}}


async def test_a_restarted_client_sends_a_delta(start_tracker, tmp_path: Path) -> None:
    tracker = start_tracker()
    seed, state = os.urandom(32), tmp_path / "state"
    hashes = random_hashes(1000)
    client = TrackerClient(tracker.url, seed, state)
    await client.announce(hashes, addresses(client), "host-a")
    await client.announce(hashes[100:] + random_hashes(5), addresses(client), "host-a")
    assert announces(tracker) == {"full": 1, "delta": 1, "heartbeat": 0}
    await client.aclose()

    restarted = TrackerClient(tracker.url, seed, state)
    final = hashes[200:] + random_hashes(50)
    await restarted.announce(final, addresses(restarted), "host-a")
    await restarted.announce(final, addresses(restarted), "host-a")  # unchanged: a heartbeat
    assert announces(tracker) == {"full": 1, "delta": 2, "heartbeat": 1}
    assert 'kind=delta seq=' in tracker.log and "added=50 removed=105" in tracker.log

    observer = TrackerClient(tracker.url, os.urandom(32), tmp_path / "observer")
    assert await held_by(observer, hashes + final, restarted.peer_id) == set(final)
    [record] = await observer.peers()
    assert (record.name, record.paths, record.online) == ("host-a", 850, True)
    assert record.addresses == addresses(restarted)
    await restarted.aclose()
    await observer.aclose()


async def test_the_client_resyncs_when_the_tracker_lost_its_set(start_tracker, tmp_path: Path) -> None:
    tracker = start_tracker()
    seed = os.urandom(32)
    client = TrackerClient(tracker.url, seed, tmp_path)
    hashes = random_hashes(300)
    await client.announce(hashes, addresses(client), "host-a")
    # The tracker forgets the peer (as after its removal for silence).
    key = nacl.signing.SigningKey(seed)
    forget = {"forget": True}
    assert signed(tracker, key, "DELETE", f"{PEERS_PATH}/{client.peer_id}", forget).status_code == 200

    await client.announce(hashes[:250], addresses(client), "host-a")  # delta -> 409 -> full
    assert announces(tracker) == {"full": 2, "delta": 0, "heartbeat": 0}
    assert not client.in_backoff  # a 409 asks for the full set, at once
    assert tracker.metric('peerix_tracker_refusals_total{code="sequence_mismatch"}') == 1
    assert await held_by(client, hashes, "") == set()  # lookups leave the client itself out
    [record] = await client.peers()
    assert record.paths == 250

    assert signed(tracker, key, "DELETE", f"{PEERS_PATH}/{client.peer_id}", forget).status_code == 200
    await client.heartbeat()  # a heartbeat that meets 409 sends the whole set again
    [record] = await client.peers()
    assert record.paths == 250 and announces(tracker)["full"] == 3
    await client.aclose()


async def test_large_sets_go_in_parts(start_tracker, tmp_path: Path) -> None:
    tracker = start_tracker("--max-announce-hashes", "100")
    client = TrackerClient(tracker.url, os.urandom(32), tmp_path, max_hashes_per_request=100)
    hashes = random_hashes(350)
    await client.announce(hashes, addresses(client), "big")
    assert announces(tracker) == {"full": 1, "delta": 3, "heartbeat": 0}
    await client.announce(hashes[150:] + random_hashes(60), addresses(client), "big")  # 210 changes: 3 deltas
    assert announces(tracker) == {"full": 1, "delta": 6, "heartbeat": 0}
    [record] = await client.peers()
    assert record.paths == 260
    await client.aclose()


async def test_state_on_disk(start_tracker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracker = start_tracker()
    seed, state_dir = os.urandom(32), tmp_path / "state"
    client = TrackerClient(tracker.url, seed, state_dir)
    await client.announce(random_hashes(100), addresses(client), "host-a")
    [state] = state_dir.iterdir()  # no temporary file left behind
    header, _, packed = state.read_bytes().partition(b"\n")
    assert state.name.startswith("tracker-") and len(packed) == 100 * 20 and b'"count": 100' in header
    await client.aclose()

    state.write_bytes(header + b"\n" + packed[:-7])  # damaged: ignored, and the set is sent whole
    restarted = TrackerClient(tracker.url, seed, state_dir)
    await restarted.announce(random_hashes(10), addresses(restarted), "host-a")
    assert announces(tracker) == {"full": 2, "delta": 0, "heartbeat": 0}
    assert "ignoring unusable tracker state" in caplog.text

    await restarted.deregister(forget=True)
    assert list(state_dir.iterdir()) == [] and await restarted.peers() == []
    await restarted.deregister(forget=True)  # already gone: fine
    await restarted.announce(random_hashes(10), addresses(restarted), "host-a")
    assert announces(tracker)["full"] == 3
    await restarted.aclose()


async def test_heartbeat_needs_an_announce_first(start_tracker, tmp_path: Path) -> None:
    tracker = start_tracker()
    client = TrackerClient(tracker.url, os.urandom(32), tmp_path)
    with pytest.raises(TrackerError, match="call announce"):
        await client.heartbeat()
    await client.announce([], addresses(client), "empty")
    before = (await client.peers())[0].last_seen
    await asyncio.sleep(0.05)
    await client.heartbeat()
    assert (await client.peers())[0].last_seen > before
    await client.aclose()


async def test_429_puts_the_client_in_backoff(start_tracker, tmp_path: Path) -> None:
    tracker = start_tracker(limits=("--address-rate", "0.5", "--address-burst", "2"))
    client = TrackerClient(tracker.url, os.urandom(32), tmp_path)
    hash_part = random_hashes(1)[0]
    await client.lookup(hash_part)
    await client.lookup(hash_part)
    with pytest.raises(TrackerError) as refused:
        await client.lookup(hash_part)
    assert refused.value.status == 429 and refused.value.retry_after == 2
    assert client.in_backoff and 1.5 < client.backoff_remaining <= 2
    requests = tracker.metric('peerix_tracker_http_requests_total{method="GET",route="unmatched",status="429"}')
    started = time.monotonic()
    with pytest.raises(TrackerError, match="backed off"):
        await client.lookup(hash_part)
    assert time.monotonic() - started < 0.1  # no request waited on (the counters prove none was sent)
    assert tracker.metric('peerix_tracker_http_requests_total{method="GET",route="unmatched",status="429"}') == requests
    await asyncio.sleep(client.backoff_remaining + 0.1)
    assert await client.lookup(hash_part) == []
    await client.aclose()


async def test_a_dead_tracker_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    client = TrackerClient(f"http://127.0.0.1:{port}", os.urandom(32), tmp_path)
    started = time.monotonic()
    with pytest.raises(TrackerError, match="unreachable"):
        await client.lookup(random_hashes(1)[0])
    assert time.monotonic() - started < 0.1
    assert client.in_backoff and 0.5 < client.backoff_remaining <= 1.2
    started = time.monotonic()
    for call in (client.lookup(random_hashes(1)[0]), client.lookup_many(random_hashes(5)),
                 client.announce([], addresses(client), "x")):
        with pytest.raises(TrackerError, match="backed off"):
            await call
    assert time.monotonic() - started < 0.1  # no request waited on (the counters prove none was sent)
    await client.aclose()


async def test_a_hung_tracker_fails_within_the_lookup_timeout(tmp_path: Path) -> None:
    with socket.socket() as hung:  # accepts connections (the kernel's backlog) and never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        client = TrackerClient(f"http://127.0.0.1:{hung.getsockname()[1]}", os.urandom(32), tmp_path,
                               lookup_timeout=0.1)
        started = time.monotonic()
        with pytest.raises(TrackerError, match="unreachable.*Timeout"):
            await client.lookup(random_hashes(1)[0])
        assert time.monotonic() - started < 0.3 and client.in_backoff
        await client.aclose()


async def test_backoff_grows_and_resets(start_tracker, tmp_path: Path) -> None:
    tracker = start_tracker()
    client = TrackerClient(tracker.url, os.urandom(32), tmp_path)
    hash_part = random_hashes(1)[0]

    async def failed_lookup() -> float:
        with pytest.raises(TrackerError, match="unreachable"):
            await client.lookup(hash_part)
        delay = client.backoff_remaining
        client._trackers[0].down_until = 0  # skip the wait, keep the count of failures
        return delay

    tracker.stop()
    delays = [await failed_lookup() for _ in range(4)]
    for failures, delay in enumerate(delays):  # 1 s doubling, with 20 % jitter
        assert 0.79 * 2 ** failures < delay <= 1.2 * 2 ** failures
    tracker.start()
    assert await client.lookup(hash_part) == []
    tracker.stop()
    assert await failed_lookup() <= 1.2  # the success reset the count
    await client.aclose()


async def test_the_client_in_a_private_network(start_tracker, tmp_path: Path) -> None:
    seed = os.urandom(32)
    member_id = bytes(nacl.signing.SigningKey(seed).verify_key).hex()
    allowlist = start_tracker("--allow", member_id)
    tokens = tmp_path / "tokens"
    tokens.write_text("fleet-token-0123456789\n")
    tokens.chmod(0o600)
    token_network = start_tracker("--token-file", str(tokens))
    hashes = random_hashes(20)
    for tracker, token in ((allowlist, None), (token_network, "fleet-token-0123456789")):
        member = TrackerClient(tracker.url, seed, tmp_path / "member", token=token)
        await member.announce(hashes, addresses(member), "member")
        observer = TrackerClient(tracker.url, os.urandom(32), tmp_path / "observer", token=token)
        if token is None:  # an outsider's key may not even read
            with pytest.raises(TrackerError) as refused:
                await observer.lookup(hashes[0])
            assert refused.value.status == 403 and refused.value.code == "not_member"
            assert refused.value.lasting and observer.backoff_remaining > 200  # asking again soon would not help
        else:
            assert [peer.name for peer in await observer.lookup(hashes[0])] == ["member"]
        assert [peer.name for peer in (await member.lookup_many(hashes[:1]))[hashes[0]]] == []  # itself left out
        assert [peer.name for peer in await member.peers()] == ["member"]
        await member.aclose()
        await observer.aclose()


async def test_advice_follows_the_tracker_and_goes_when_it_stops_advising(start_tracker, tmp_path: Path) -> None:
    tracker = start_tracker("--advised-upload-rate", "5M", "--advised-download-rate", "20M")
    limits = tracker.args[:-4]
    client = TrackerClient(tracker.url, os.urandom(32), tmp_path)
    hashes = random_hashes(3)
    await client.announce(hashes, addresses(client), "advised")
    assert client.advice == {"max_upload_rate": 5 << 20, "max_download_rate": 20 << 20}

    tracker.args = (*limits, "--advised-upload-rate", "1M")  # the same database and port
    tracker.restart()
    await client.announce(hashes, addresses(client), "advised")  # a heartbeat
    assert client.advice == {"max_upload_rate": 1 << 20}

    tracker.args = limits
    tracker.restart()
    await client.heartbeat()
    assert client.advice == {}  # an answer without advice withdraws it
    await client.aclose()


async def test_a_lasting_refusal_backs_off_for_minutes(start_tracker, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("fleet-token-0123456789\n")
    tokens.chmod(0o600)
    allowlist = start_tracker("--allow", "ab" * 32)
    token_network = start_tracker("--token-file", str(tokens))
    small = start_tracker("--max-announce-hashes", "10")
    cases = [(allowlist, {}, 403, "not_member"), (token_network, {}, 401, "unauthenticated"),
             (token_network, {"token": "wrong-token-0123456789"}, 403, "not_member"),
             (small, {"max_hashes_per_request": 100}, 413, "too_many_hashes")]
    for number, (tracker, options, status, code) in enumerate(cases):
        client = TrackerClient(tracker.url, os.urandom(32), tmp_path / str(number), **options)
        with pytest.raises(TrackerError) as refused:
            await client.announce(random_hashes(50), addresses(client), "refused")
        assert (refused.value.status, refused.value.code, refused.value.lasting) == (status, code, True)
        assert 0.8 * 300 <= client.backoff_remaining <= 1.2 * 300
        asked = tracker.metric(f'peerix_tracker_refusals_total{{code="{code}"}}')
        started = time.monotonic()
        for call in (client.announce(random_hashes(50), addresses(client), "refused"),
                     client.lookup(random_hashes(1)[0]), client.lookup_many(random_hashes(2))):
            with pytest.raises(TrackerError, match="backed off"):
                await call
        assert time.monotonic() - started < 0.1  # no request waited on (the counters prove none was sent)
        assert tracker.metric(f'peerix_tracker_refusals_total{{code="{code}"}}') == asked  # nothing was sent
        await client.aclose()
    refusals = [record for record in caplog.records if record.getMessage().startswith("tracker refused this peer")]
    assert [record.levelname for record in refusals] == ["ERROR"] * len(cases)  # one error each, not one a call
    assert "code=not_member" in refusals[0].getMessage() and "hint=\"is this peer id on the tracker's allowlist" in (
        refusals[0].getMessage())


async def test_a_wrong_clock_is_corrected_once(start_tracker, tmp_path: Path) -> None:
    tracker = start_tracker()
    client = TrackerClient(tracker.url, os.urandom(32), tmp_path)
    client._clock_offset = -3600.0  # this machine's clock is an hour slow
    await client.announce(random_hashes(3), addresses(client), "late")
    assert abs(client._clock_offset) < 2
    assert tracker.metric('peerix_tracker_refusals_total{code="stale_timestamp"}') == 1
    assert announces(tracker)["full"] == 1
    await client.aclose()
