"""Raw iroh stream throughput between two processes on loopback: the ceiling for peer transfers.

    python bench/iroh_raw.py [--megabytes N] [--unpatched]

The sender writes 1 MiB buffers with write_all, the receiver reads until the end; both are
Python, as in peerix, so the figure is what the binding allows. --unpatched measures the wheel's
own byte-by-byte write path (peerix/net/iroh_patch.py explains).
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ALPN = b"/peerix-bench/raw/1"
CHUNK = 1 << 20


async def serve(megabytes: int, patched: bool) -> None:
    import iroh

    from peerix.net import iroh_patch
    from peerix.net.endpoint import EndpointSettings, PeerEndpoint

    async def handler(peer_id: str, stream: iroh.BiStream) -> None:
        await stream.recv().read_to_end(16)
        send, data = stream.send(), os.urandom(CHUNK)
        for _ in range(megabytes):
            await send.write_all(data)
        await send.finish()
        await send.stopped()

    if not patched:
        iroh_patch.install = lambda: False  # keep the wheel's writer
    endpoint = await PeerEndpoint.start(os.urandom(32), EndpointSettings("127.0.0.1:0", False, False),
                                        {ALPN: handler})
    print(json.dumps({"id": endpoint.peer_id, "direct": list(endpoint.address().direct)}), flush=True)
    await asyncio.Event().wait()


async def fetch(address: dict) -> float:
    from peerix.net.endpoint import EndpointAddress, EndpointSettings, PeerEndpoint

    endpoint = await PeerEndpoint.start(os.urandom(32), EndpointSettings("127.0.0.1:0", False, False), {})
    started = time.perf_counter()  # the connection's set-up is a few milliseconds of a 1 GiB transfer
    stream, first = await endpoint.request(EndpointAddress(address["id"], tuple(address["direct"])), ALPN, b"go",
                                           lambda recv: recv.read(4 << 20))
    received = len(first)
    while chunk := await stream.recv().read(4 << 20):
        received += len(chunk)
    seconds = time.perf_counter() - started
    await endpoint.close()
    return received / (1 << 20) / seconds


def measure(megabytes: int, patched: bool = True) -> float:
    """MiB/s of one transfer, sender and receiver in separate processes."""
    sender = subprocess.Popen([sys.executable, __file__, "--serve", "--megabytes", str(megabytes),
                               *([] if patched else ["--unpatched"])], stdout=subprocess.PIPE, text=True)
    try:
        address = json.loads(sender.stdout.readline())
        return asyncio.run(fetch(address))
    finally:
        sender.kill()
        sender.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--unpatched", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.megabytes, not args.unpatched))
    else:
        print(f"{measure(args.megabytes, not args.unpatched):.0f} MiB/s")


if __name__ == "__main__":
    main()
