"""A lying peer for tests: a real process speaking the real ALPNs, announced to the real tracker.

    python tests/liar.py PLAN.json

PLAN: {"tracker": URL, "state": DIR, "name": NAME,
       "narinfo": {hash part: narinfo text to answer with},
       "nar": {hash part: file whose bytes to send as its NAR},
       "realisation": {realisation id: realisation text to answer with},
       "references": {hash part: narinfo texts to add to its narinfo answer, as closure prefetch}}
It prints its peer id once it has announced, then a line `nar HASH` for every NAR request it is sent,
and serves until terminated.
"""

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import iroh

from peerix.net import wire
from peerix.net.endpoint import EndpointSettings, PeerEndpoint
from peerix.net.tracker_client import PeerAddresses, TrackerClient
from peerix.swarm.derivations import realisation_key


async def main(plan: dict) -> None:
    narinfos: dict[str, str] = plan.get("narinfo", {})
    nars: dict[str, str] = plan.get("nar", {})
    realisations: dict[str, str] = plan.get("realisation", {})
    references: dict[str, list[str]] = plan.get("references", {})

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
        print("nar", request.get("hash"), flush=True)
        path = nars.get(request.get("hash"))
        send = stream.send()
        if path is None:
            await send.write_all(wire.encode_frame({"status": "not-found"}))
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

    seed = os.urandom(32)
    endpoint = await PeerEndpoint.start(
        seed, EndpointSettings(bind="127.0.0.1:0", relays=False, discovery=False),
        {wire.NARINFO_ALPN: narinfo, wire.NAR_ALPN: nar, wire.REALISATION_ALPN: realisation},
    )
    tracker = TrackerClient(plan["tracker"], seed, Path(plan["state"]))
    address = endpoint.address()
    hashes = sorted({*narinfos, *nars, *map(realisation_key, realisations)})
    await tracker.announce(hashes, PeerAddresses(address.endpoint_id, address.direct),
                           plan.get("name", "liar"))
    print(endpoint.peer_id, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await tracker.aclose()
    await endpoint.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
