"""`peerix demo`: a tracker and three hosts on this machine. Host A has an editor, host B a game;
host C's Nix installs both through C's own peerix, which finds them with the tracker and fetches
them from A and B over iroh, verifies them and re-signs them with C's key.

Hosts are chroot stores in a temporary directory: the demo needs Nix but changes no configuration.
"""

import re
import tempfile
import time
from pathlib import Path

from .localfleet import FleetError, LocalFleet, closure_sizes, run

DEMO_NIX = Path(__file__).with_name("demo.nix")
DemoError = FleetError


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run_demo(keep: bool = False) -> None:
    work = Path(tempfile.mkdtemp(prefix="peerix-demo-"))
    fleet = LocalFleet(work)
    try:
        _step("building an editor and a game (fresh store paths) in the root store")
        seed = str(time.time_ns())
        editor, game = run("nix-build", str(DEMO_NIX), "--no-out-link", "--argstr", "seed", seed,
                           "-A", "editor", "-A", "game").split()

        _step("starting a tracker and three hosts, each with its own store, key and peerix daemon")
        fleet.start_tracker()
        a, b, c = (fleet.host(name) for name in ("host-a", "host-b", "host-c"))
        a.give(editor)
        b.give(game)
        for host in (a, b, c):
            host.start()
        fleet.wait_announced(a, [editor])
        fleet.wait_announced(b, [game])
        for host, top in ((a, editor), (b, game), (c, None)):
            held = closure_sizes(host.store, top) if top else {}
            what = f"{len(held)} paths, {sum(held.values()) / 1e6:.1f} MB" if held else "an empty store"
            print(f"    {host.name}: peer {host.peer_id[:12]}, {what}")
        print(f"    tracker {fleet.tracker_url}")

        _step("host C: nix-store --realise editor game, substituting only from its own peerix")
        started = time.monotonic()
        c.realise(editor, game)
        seconds = time.monotonic() - started
        run("nix", "store", "verify", "--store", str(c.store), "-r", editor, game,
            "--trusted-public-keys", c.key.public.to_text(), "--sigs-needed", "1")
        names = {host.peer_id[:10]: host.name for host in (a, b)}
        moved = 0
        print(f"    {'path':58} {'from':8} {'MB':>6} {'MB/s':>7}")
        for line in c.log.splitlines():
            if match := re.search(r"fetched nar path=(\S+) peers=(\S+) bytes=(\d+) seconds=\S+ mib_per_s=(\S+)", line):
                path, peers, size, rate = match.groups()
                moved += int(size)
                sources = "+".join(names.get(peer[:10], peer[:10]) for peer in peers.split(","))
                print(f"    {path[:58]:58} {sources:8} {int(size) / 1e6:6.1f} "
                      f"{float(rate) * 1.048576:7.0f}")
        print(f"    {moved / 1e6:.1f} MB in {seconds:.2f} s, every path verified by hash and signed by "
              f"{c.key.name} (the only key host C's Nix trusts)")
        for line in run(str(c.store) + editor + "/bin/run").splitlines():
            print("    " + line)

        _step("stopping: each daemon deregisters from the tracker")
        for host in (c, b, a):
            host.stop()
        deregistered = (work / "tracker.log").read_text().count("deregister peer=")
        print(f"    {deregistered} of 3 hosts deregistered")
    finally:
        fleet.close()
        if keep:
            print(f"\nkept {work} (host stores, logs, tracker database)")
        else:
            run("chmod", "-R", "u+w", str(work))
            run("rm", "-rf", str(work))
    print("\ndemo finished")
