"""Benchmark: one large NAR from several peers at once, against the same NAR from one peer, in one run.

  one peer      host C1 (--max-sources 1) fetches the NAR from peers capped at --cap each: the reference
  three peers   host C3 (default settings) fetches it from the three capped peers at once
  peer killed   as three peers, with the peer sending the most killed once half the NAR has arrived
  zstd          a compressible NAR (a hex dump, ~2.7x) from one peer capped at --zstd-cap, fetched with
                compression off and with the default (the capped sender compresses)

The client is curl on the fetching host's HTTP port. Targets: three peers >= 100 MiB/s and >= 2.5x
one peer; killed <= 1.3x the undisturbed time; zstd >= 2x the effective rate without. Each figure
is the median of --runs runs.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peerix.cli.localfleet import Host, LocalFleet, wait_until  # noqa: E402

from harness import BENCH, curl, median, run, workdir  # noqa: E402


def nar_url(host: Host, hash_part: str) -> str:
    narinfo = httpx.get(f"{host.url}/{hash_part}.narinfo", timeout=30).text
    return f"{host.url}/" + next(line[5:] for line in narinfo.splitlines() if line.startswith("URL: "))


def killed_run(url: str, fetcher: Host, senders: list[Host], size: int) -> tuple[float, Host]:
    """Seconds for the whole NAR when the busiest sender dies halfway (it is started again after)."""
    before = fetcher.metric("peerix_peer_received_bytes_total")
    started = time.perf_counter()
    client = subprocess.Popen(["curl", "-sS", "--fail", "-o", "/dev/null", url])
    wait_until(lambda: fetcher.metric("peerix_peer_received_bytes_total") - before >= size / 2, "half", 120)
    victim = max(senders, key=lambda h: h.metric("peerix_peer_sent_bytes_total"))
    victim.process.kill()
    if client.wait(300) != 0:
        raise SystemExit("curl failed after the peer was killed; the fetching host's log ends:\n"
                         + "\n".join(fetcher.log.splitlines()[-30:]))
    seconds = time.perf_counter() - started
    victim.process.wait()
    return seconds, victim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=1024, help="size of the path")
    parser.add_argument("--cap", default="40M", help="upload cap of each sending peer")
    parser.add_argument("--zstd-cap", default="20M", help="upload cap of the peer sending the compressible NAR")
    parser.add_argument("--zstd-megabytes", type=int, default=80, help="random input of the compressible NAR")
    args = parser.parse_args()

    path = run("nix-build", str(BENCH / "big.nix"), "--no-out-link", "--argstr", "megabytes",
               str(args.megabytes)).strip()
    hash_part = Path(path).name[:32]
    text = run("nix-build", str(BENCH.parent / "tests" / "nix" / "compressible.nix"), "--no-out-link",
               "--argstr", "megabytes", str(args.zstd_megabytes)).strip()
    work = workdir("swarm")
    fleet = LocalFleet(work, log_level="warning")
    results: dict[str, list[float]] = {}
    try:
        fleet.start_tracker()
        senders = [fleet.host(name) for name in ("a", "b", "d")]
        sender_args = ("--max-upload-rate", args.cap, "--nar-cache-size", "0")
        for sender in senders:
            sender.give(path)
            sender.start(*sender_args)
        one, three = fleet.host("c1"), fleet.host("c3")
        one.start("--max-sources", "1", "--nar-cache-size", "0")
        three.start("--nar-cache-size", "0")
        for sender in senders:
            fleet.wait_announced(sender, [path])
        slow = fleet.host("z")
        slow.give(text)
        slow.start("--max-upload-rate", args.zstd_cap, "--nar-cache-size", "0")
        raw_fetcher, zstd_fetcher = fleet.host("zn"), fleet.host("za")
        raw_fetcher.start("--compression", "never", "--nar-cache-size", "0")
        zstd_fetcher.start("--nar-cache-size", "0")
        fleet.wait_announced(slow, [text])
        text_mib = os.path.getsize(text) / 2**20  # one file: its NAR is a hundred bytes more
        size = args.megabytes * 2**20
        for run_number in range(args.runs):
            print(f"run {run_number + 1}/{args.runs}...", flush=True)
            for name, host in (("one peer", one), ("three peers", three)):
                seconds, fetched = curl([nar_url(host, hash_part)])
                assert fetched >= size
                results.setdefault(name, []).append(seconds)
            seconds, victim = killed_run(nar_url(three, hash_part), three, senders, size)
            results.setdefault("peer killed", []).append(seconds)
            victim.start(*sender_args)
            fleet.wait_announced(victim, [path])
            three.stop()  # every run starts with no peer in backoff
            three.start("--nar-cache-size", "0")
            for name, host in (("zstd off", raw_fetcher), ("zstd", zstd_fetcher)):
                seconds, _ = curl([nar_url(host, text[len("/nix/store/"):][:32])])
                results.setdefault(name, []).append(seconds)
    finally:
        fleet.close()
        run("chmod", "-R", "u+w", str(work))
        shutil.rmtree(work, ignore_errors=True)

    mib = args.megabytes
    single, swarm, killed = (median(results[name]) for name in ("one peer", "three peers", "peer killed"))
    print(f"\nmedians of {args.runs} runs; a {mib} MiB NAR; each sending peer capped at {args.cap}B/s")
    print(f"{'one peer':14} {mib / single:7.0f} MiB/s  {single:6.1f} s")
    verdict = "ok" if mib / swarm >= 100 and single / swarm >= 2.5 else "MISSED"
    print(f"{'three peers':14} {mib / swarm:7.0f} MiB/s  {swarm:6.1f} s  {single / swarm:4.2f}x one peer  "
          f"target >= 100 MiB/s and >= 2.5x: {verdict}")
    print(f"{'peer killed':14} {mib / killed:7.0f} MiB/s  {killed:6.1f} s  {killed / swarm:4.2f}x undisturbed  "
          f"target <= 1.3x: {'ok' if killed / swarm <= 1.3 else 'MISSED'}")
    off, on = median(results["zstd off"]), median(results["zstd"])
    print(f"{'zstd off':14} {text_mib / off:7.0f} MiB/s  {off:6.1f} s  a {text_mib:.0f} MiB compressible NAR, "
          f"sender capped at {args.zstd_cap}B/s")
    print(f"{'zstd':14} {text_mib / on:7.0f} MiB/s  {on:6.1f} s  {off / on:4.2f}x without  target >= 2x: "
          f"{'ok' if off / on >= 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
