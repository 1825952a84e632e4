"""Misbehaving peers for tests: real processes speaking the real ALPNs, announced to the real tracker.

    python tests/liar.py PLAN.json

PLAN: {"tracker": URL, "state": DIR, "name": NAME, "bind": "IP:PORT" (default "127.0.0.1:0"),
       "narinfo": {hash part: narinfo text to answer with},
       "nar": {hash part: file whose bytes to send as its NAR},
       "realisation": {realisation id: realisation text to answer with},
       "references": {hash part: narinfo texts to add to its narinfo answer, as closure prefetch},
       "http": {"mode": "serve"|"break"|"refuse", "nar": {hash part: file}},
       "mute": false}
A liar answers with the narinfo and NAR it is given. A mute peer ("mute": true) announces the same
paths, accepts every stream and never answers; and every second it asks the tracker who else holds
them and opens a NAR request to each of those peers that it never reads.
With "http", a NAR request that allows the fast path is answered with an offer: "serve" sends the
range of the file given under "http" (which may differ from "nar") from its own HTTP listener, which
takes any ticket; "break" sends half the range and closes the connection; "refuse" offers a port
nobody listens on.
It prints its peer id once it has announced, then a line `nar HASH` for every NAR request it is sent
(`nar HASH http` when it allowed the fast path), and serves until terminated.
"""

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import iroh

from peerix.net import wire
from peerix.net.endpoint import EndpointSettings, PeerEndpoint
from peerix.net.tracker_client import PeerAddresses, TrackerClient, TrackerError
from peerix.nix import nix32
from peerix.nix.narinfo import NarInfo
from peerix.swarm.candidates import address_of
from peerix.swarm.derivations import realisation_key

MUTE_STREAMS = 64  # NAR requests a mute peer keeps open (the oldest is dropped for a new one)


def start(root: Path, tracker_url: str, name: str, narinfo: dict[str, str], nar: dict[str, str] | None = None,
          command: Sequence[str] = (), **plan: object) -> subprocess.Popen:
    """Run one (behind `command`, e.g. `ip netns exec NS`), its state in root/name; returns once it announced."""
    (root / name).mkdir()
    plan_file = root / name / "plan.json"
    plan_file.write_text(json.dumps({"tracker": tracker_url, "state": str(root / name), "name": name,
                                     "narinfo": narinfo, "nar": nar or {}, **plan}))
    peer = subprocess.Popen([*command, sys.executable, __file__, str(plan_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).parent.parent)
    assert len(peer.stdout.readline().strip()) == 64, f"{name} did not start"
    return peer


async def main(plan: dict) -> None:
    narinfos: dict[str, str] = plan.get("narinfo", {})
    nars: dict[str, str] = plan.get("nar", {})
    realisations: dict[str, str] = plan.get("realisation", {})
    references: dict[str, list[str]] = plan.get("references", {})
    stop = asyncio.Event()

    async def narinfo(peer_id: str, stream: iroh.BiStream) -> None:
        request = await wire.read_frame(stream.recv())
        text = narinfos.get(request.get("hash"))
        reply = {"status": "ok", "narinfo": text} if text else {"status": "not-found"}
        if text and request.get("references") and request.get("hash") in references:
            reply["references"] = references[request["hash"]]
        await stream.send().write_all(wire.encode_frame(reply))
        await stream.send().finish()
        await stream.send().stopped()

    async def nar(peer_id: str, stream: iroh.BiStream) -> None:
        request = await wire.read_frame(stream.recv())
        print("nar", request.get("hash"), *(["http"] if request.get("http") else []), flush=True)
        path = nars.get(request.get("hash"))
        send = stream.send()
        if path is None:
            await send.write_all(wire.encode_frame({"status": "not-found"}))
        elif request.get("http") and http_port:
            size = Path(path).stat().st_size - request.get("offset", 0)
            size = size if request.get("length") is None else min(size, request["length"])
            offer = {"port": http_port, "ticket": "any"}
            await send.write_all(wire.encode_frame({"status": "ok", "size": size, "http": offer}))
        else:
            whole = Path(path).read_bytes()
            start = request.get("offset", 0)
            data = whole[start:] if request.get("length") is None else whole[start:start + request["length"]]
            await send.write_all(wire.encode_frame({"status": "ok", "size": len(data)}))
            await send.write_all(data)
        await send.finish()
        await send.stopped()

    async def realisation(peer_id: str, stream: iroh.BiStream) -> None:
        request = await wire.read_frame(stream.recv())
        text = realisations.get(request.get("id"))
        reply = {"status": "ok", "realisation": text} if text else {"status": "not-found"}
        await stream.send().write_all(wire.encode_frame(reply))
        await stream.send().finish()
        await stream.send().stopped()

    async def silent(peer_id: str, stream: iroh.BiStream) -> None:
        await stop.wait()  # the stream stays open, unread and unanswered, until the peer gives up on it

    handlers = {wire.NARINFO_ALPN: silent, wire.NAR_ALPN: silent} if plan.get("mute") else {
        wire.NARINFO_ALPN: narinfo, wire.NAR_ALPN: nar, wire.REALISATION_ALPN: realisation}
    http_port = await _http_listener(plan["http"]) if plan.get("http") else 0
    seed = os.urandom(32)
    endpoint = await PeerEndpoint.start(
        seed, EndpointSettings(bind=plan.get("bind", "127.0.0.1:0"), relays=False, discovery=False), handlers)
    tracker = TrackerClient(plan["tracker"], seed, Path(plan["state"]))
    address = endpoint.address()
    hashes = sorted({*narinfos, *nars, *map(realisation_key, realisations)})
    addresses = PeerAddresses(address.endpoint_id, address.direct)
    await tracker.announce(hashes, addresses, plan.get("name", "liar"))
    print(endpoint.peer_id, flush=True)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    jobs = [asyncio.create_task(_heartbeat(tracker, hashes, addresses, plan.get("name", "liar")))]
    if plan.get("mute"):
        jobs.append(asyncio.create_task(_open_and_never_read(endpoint, tracker, narinfos)))
    await stop.wait()
    for job in jobs:
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)
    await tracker.aclose()
    await endpoint.close()


async def _http_listener(plan: dict) -> int:
    """A fast-path listener that behaves as `plan["mode"]` says; its port."""
    files: dict[str, str] = plan["nar"]
    if plan["mode"] == "refuse":
        with socket.socket() as unused:  # a port that was free a moment ago: connections are refused
            unused.bind(("127.0.0.1", 0))
            return unused.getsockname()[1]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        hash_part = re.search(r"[?&]hash=([0-9a-z]+)", head)[1]
        first, last = map(int, re.search(r"(?i)range: bytes=(\d+)-(\d+)", head).groups())
        whole = Path(files[hash_part]).read_bytes()
        data = whole[first:last + 1]
        writer.write(f"HTTP/1.1 206 Partial Content\r\ncontent-length: {len(data)}\r\n"
                     f"content-range: bytes {first}-{last}/{len(whole)}\r\n\r\n".encode())
        writer.write(data[:len(data) // 2] if plan["mode"] == "break" else data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server.sockets[0].getsockname()[1]


async def _heartbeat(tracker: TrackerClient, hashes: list[str], addresses: PeerAddresses, name: str) -> None:
    """Announce again every minute, as a daemon does, so that the tracker keeps us online."""
    while True:
        await asyncio.sleep(60)
        try:
            await tracker.announce(hashes, addresses, name)
        except TrackerError:
            pass  # the tracker is down or frozen: the next beat


async def _open_and_never_read(endpoint: PeerEndpoint, tracker: TrackerClient, narinfos: dict[str, str]) -> None:
    """Every second, a NAR request to each peer the tracker names for one of our paths, never read."""
    requests: deque[asyncio.Task] = deque()
    never = asyncio.Event()
    while True:
        await asyncio.sleep(1)
        hash_part = random.choice(sorted(narinfos))
        info = NarInfo.parse(narinfos[hash_part])
        request = wire.NarRequest(hash_part, nix32.encode(info.nar_hash)).to_frame()
        try:
            records = await tracker.lookup(hash_part)
        except TrackerError:
            continue
        for record in records:  # others only: the tracker leaves the asker out
            opened = asyncio.create_task(
                endpoint.request(address_of(record), wire.NAR_ALPN, request, lambda recv: never.wait()))
            opened.add_done_callback(lambda task: task.cancelled() or task.exception())  # failures are expected
            requests.append(opened)
            while len(requests) > MUTE_STREAMS:
                requests.popleft().cancel()


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
