"""Benchmark: peer-to-peer transfers, against the raw iroh ceiling and nginx, in one run.

  raw iroh      one stream between two Python processes on loopback (bench/iroh_raw.py): the ceiling
  p2p 1 GiB     host A holds a 1 GiB path; host C's peerix fetches it over iroh, verifying it, and
                serves it to curl (p2p http) and to `nix copy --from` into a fresh store (p2p nix)
  nginx nix     the same 1 GiB path by `nix copy --from` nginx: what Nix itself can take in
  closure       the synthetic closure of bench/cache.py: `nix copy --from` host C's peerix (all from A
                over iroh) against `nix copy --from` nginx serving the same closure as flat files
  miss          narinfo for hashes no peer has, through C, with the tracker up and down: p50 and p99
  memory        peak RSS of host A (sender) and host C (receiver) over the whole run

Targets: p2p >= 0.8x raw iroh and >= 120 MiB/s; miss p99 < 100 ms; sender and receiver RSS < 200 MB.
Each figure is the median of --runs runs.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import iroh_raw  # noqa: E402

from peerix.cli.localfleet import LocalFleet  # noqa: E402
from peerix.nix import nix32  # noqa: E402

from harness import BENCH, build_closure, curl, median, nginx, peak_rss_mib, run, workdir  # noqa: E402


def nix_copy_seconds(url: str, paths: list[str], key: str, work: Path) -> float:
    target = Path(tempfile.mkdtemp(dir=work, prefix="client-"))
    started = time.perf_counter()
    run("nix", "copy", "--from", url, "--to", str(target), "--option", "trusted-public-keys", key,
        "--option", "narinfo-cache-negative-ttl", "0", *paths, env={**os.environ, "XDG_CACHE_HOME": str(target)})
    seconds = time.perf_counter() - started
    run("chmod", "-R", "u+w", str(target))
    shutil.rmtree(target)
    return seconds


def miss_latencies(url: str, count: int = 300) -> list[float]:
    """Seconds per narinfo for hashes nobody has, on one kept-alive connection as Nix uses
    (a new httpx client per request would measure its TLS setup, ~40 ms, not peerix)."""
    latencies = []
    with httpx.Client() as client:
        for _ in range(count):
            started = time.perf_counter()
            assert client.get(f"{url}/{nix32.encode(os.urandom(20))}.narinfo").status_code == 404
            latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=1024, help="size of the large path")
    args = parser.parse_args()

    big = run("nix-build", str(BENCH / "big.nix"), "--no-out-link", "--argstr", "megabytes",
              str(args.megabytes)).strip()
    top, infos = build_closure()
    closure_mib = sum(info["narSize"] for info in infos.values()) / 2**20
    big_mib = args.megabytes
    work = workdir("peers")
    fleet = LocalFleet(work, log_level="warning")
    results: dict[str, list[float]] = {}
    try:
        print("raw iroh ceiling...", flush=True)
        results["raw iroh"] = [iroh_raw.measure(args.megabytes) for _ in range(args.runs)]

        print("hosts: a tracker, A holding the 1 GiB path and the closure, C empty...", flush=True)
        fleet.start_tracker()
        a, c = fleet.host("a"), fleet.host("c")
        a.give(big, top)
        a.start()
        c.start("--nar-cache-size", "0")
        fleet.wait_announced(a, [big, top, *infos])
        hash_part = Path(big).name[:32]
        key = c.key.public.to_text()

        for _ in range(args.runs):
            narinfo = httpx.get(f"{c.url}/{hash_part}.narinfo").text
            url = next(line[5:] for line in narinfo.splitlines() if line.startswith("URL: "))
            seconds, _ = curl([f"{c.url}/{url}"])
            results.setdefault("p2p http", []).append(big_mib / seconds)
            results.setdefault("p2p nix", []).append(big_mib / nix_copy_seconds(c.url, [big], key, work))

        flat = work / "flat"  # from A's store, so its narinfos carry the fleet key's signatures
        run("nix", "copy", "--from", str(a.store), "--to", f"file://{flat}?compression=none", top, big)
        with nginx(flat, work) as (nginx_url, _):
            for run_number in range(args.runs):
                results.setdefault("nginx nix", []).append(
                    big_mib / nix_copy_seconds(nginx_url, [big], fleet.cluster.public.to_text(), work))
                asked = c.metric('peerix_peer_round_trips_total{kind="narinfo"}')
                results.setdefault("closure p2p", []).append(
                    closure_mib / nix_copy_seconds(c.url, [top], key, work))
                if run_number == 0:  # later runs find the paths known (hit_ttl)
                    round_trips = c.metric('peerix_peer_round_trips_total{kind="narinfo"}') - asked
                results.setdefault("closure nginx", []).append(
                    closure_mib / nix_copy_seconds(nginx_url, [top], fleet.cluster.public.to_text(), work))

        misses = {"tracker up": miss_latencies(c.url)}
        fleet.stop_tracker()
        misses["tracker down"] = miss_latencies(c.url)
        rss = {"sender (A)": peak_rss_mib(a.process.pid), "receiver (C)": peak_rss_mib(c.process.pid)}
    finally:
        fleet.close()
        run("chmod", "-R", "u+w", str(work))
        shutil.rmtree(work, ignore_errors=True)

    ceiling = median(results["raw iroh"])
    print(f"\nmedians of {args.runs} runs; {big_mib} MiB path, closure of {len(infos)} paths / {closure_mib:.0f} MiB")
    print(f"{'raw iroh (ceiling)':26} {ceiling:8.0f} MiB/s")
    for name in ("p2p http", "p2p nix"):
        rate = median(results[name])
        verdict = "ok" if rate >= 0.8 * ceiling and rate >= 120 else "MISSED"
        print(f"{name + ' 1 GiB':26} {rate:8.0f} MiB/s  {rate / ceiling:5.2f}x ceiling  target >= 0.8x and "
              f">= 120 MiB/s: {verdict}")
    nix_ceiling = median(results["nginx nix"])
    print(f"{'nginx nix 1 GiB':26} {nix_ceiling:8.0f} MiB/s  (Nix's own ceiling: p2p nix is "
          f"{median(results['p2p nix']) / nix_ceiling:.2f}x of it)")
    p2p, flat_rate = median(results["closure p2p"]), median(results["closure nginx"])
    print(f"{'closure via peerix (nix)':26} {p2p:8.0f} MiB/s  {p2p / flat_rate:5.2f}x nginx ({flat_rate:.0f} MiB/s); "
          f"first run: {round_trips:.0f} narinfo round trips to A for {len(infos)} paths (closure prefetch)")
    for state, latencies in misses.items():
        latencies.sort()
        p50, p99 = statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99)] * 1000
        print(f"{'miss, ' + state:26} p50 {p50:.1f} ms, p99 {p99:.1f} ms  target p99 < 100 ms: "
              f"{'ok' if p99 < 100 else 'MISSED'}")
    for who, mib in rss.items():
        print(f"{'peak RSS ' + who:26} {mib:8.0f} MiB  target < 200 MB: {'ok' if mib * 1.048576 < 200 else 'MISSED'}")


if __name__ == "__main__":
    main()
