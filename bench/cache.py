"""Benchmark: the local binary cache (`peerix serve`) against nginx serving the same closure.

Both serve the synthetic closure (~300 paths, ~1.6 GiB): nginx as the flat files that
`nix copy --to file://...?compression=none` writes, peerix from the Nix store itself. Measured
in one run, warm page cache, the two servers taking turns (who goes first alternates):
  narinfo: all narinfos, sequentially on one keep-alive connection, servers and curl pinned to one
           CPU (per-request latency, not cross-CPU wakeups); median of 3x --runs paired rounds
  nar x1:  all NARs on one connection;  nar x16: all NARs on 16 concurrent connections; medians of --runs
Targets: narinfo <= 1.3x nginx's time; NAR throughput >= 0.9x nginx's on 1 and on 16 connections.
The servers' own CPU time per narinfo and per GiB is printed too: unlike wall time, load from other
processes on the machine barely moves it. Every run is printed: the first ones show peerix before
its NAR cache is warm.
"""

import argparse
import shutil
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (  # noqa: E402
    build_closure,
    cpu_seconds,
    curl,
    median,
    nginx,
    peak_rss_mib,
    peerix_serve,
    pinned,
    process_tree,
    run,
    workdir,
)

NARINFO_TARGET, NAR_TARGET = 1.3, 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    top, infos = build_closure()
    hashes = [Path(path).name[:32] for path in sorted(infos)]
    total = sum(info["narSize"] for info in infos.values())
    work = workdir("cache")
    flat = work / "flat"
    print("writing the flat-file cache for nginx...", flush=True)
    run("nix", "copy", "--to", f"file://{flat}?compression=none", top)

    results: dict[str, dict[str, list[float]]] = {"nginx": {}, "peerix": {}}
    cpu: dict[str, dict[str, float]] = {"nginx": {}, "peerix": {}}
    rss = 0.0
    with nginx(flat, work) as (nginx_url, nginx_proc), peerix_serve("/", work) as (peerix_url, peerix_proc):
        servers = {"nginx": nginx_url, "peerix": peerix_url}
        pids = {"nginx": process_tree(nginx_proc.pid), "peerix": [peerix_proc.pid]}
        nar_urls = {}
        for name, url in servers.items():
            narinfos = [httpx.get(f"{url}/{h}.narinfo").text for h in hashes]
            nar_urls[name] = [f"{url}/{line[5:]}" for text in narinfos for line in text.splitlines()
                              if line.startswith("URL: ")]
            assert len(nar_urls[name]) == len(hashes)
            curl(nar_urls[name][:20])  # warm up connections and caches

        def timed(name: str, key: str, urls: list[str], parallel: int = 1) -> int:
            used = cpu_seconds(pids[name])
            seconds, size = curl(urls, parallel)
            cpu[name][key] = cpu[name].get(key, 0.0) + cpu_seconds(pids[name]) - used
            results[name].setdefault(key, []).append(seconds)
            return size

        with pinned(pids["nginx"] + pids["peerix"]):
            for round_number in range(3 * args.runs):
                for name in sorted(servers, reverse=round_number % 2 == 1):
                    timed(name, "narinfo", [f"{servers[name]}/{h}.narinfo" for h in hashes])
        for run_number in range(args.runs):
            for name in sorted(servers, reverse=run_number % 2 == 1):  # alternate so drift hits both equally
                for parallel in (1, 16):
                    if (size := timed(name, f"nar x{parallel}", nar_urls[name], parallel)) != total:
                        sys.exit(f"{name}: got {size} NAR bytes, expected {total}")
            print(f"run {run_number + 1}/{args.runs} done", flush=True)
        rss = peak_rss_mib(peerix_proc.pid)

    mib = total / 2**20
    print(f"\n{len(hashes)} paths, {mib:.0f} MiB; medians of {3 * args.runs} narinfo rounds, {args.runs} NAR runs")
    print(f"{'':10} {'nginx':>22} {'peerix':>22} {'ratio':>8}  target")
    narinfo = {name: median(results[name]["narinfo"]) for name in results}
    ratio = narinfo["peerix"] / narinfo["nginx"]
    print(f"{'narinfo':10} {narinfo['nginx'] * 1000:>19.1f} ms {narinfo['peerix'] * 1000:>19.1f} ms "
          f"{ratio:>7.2f}x  time <= {NARINFO_TARGET}x {'ok' if ratio <= NARINFO_TARGET else 'MISSED'}")
    for key in ("nar x1", "nar x16"):
        rate = {name: mib / median(results[name][key]) for name in results}
        ratio = rate["peerix"] / rate["nginx"]
        print(f"{key:10} {rate['nginx']:>16.0f} MiB/s {rate['peerix']:>16.0f} MiB/s {ratio:>7.2f}x  "
              f"rate >= {NAR_TARGET}x {'ok' if ratio >= NAR_TARGET else 'MISSED'}")
    print("server CPU time (user + system, all runs):")
    narinfos = len(hashes) * len(results["nginx"]["narinfo"])
    figures = {name: cpu[name]["narinfo"] / narinfos * 1e6 for name in cpu}
    print(f"{'narinfo':10} {figures['nginx']:>19.0f} us {figures['peerix']:>19.0f} us "
          f"{figures['peerix'] / max(figures['nginx'], 1e-9):>7.2f}x  per narinfo")
    for key in ("nar x1", "nar x16"):
        gib = total / 2**30 * args.runs
        figures = {name: cpu[name][key] / gib for name in cpu}
        print(f"{key:10} {figures['nginx']:>18.2f} s {figures['peerix']:>19.2f} s "
              f"{figures['peerix'] / max(figures['nginx'], 1e-9):>7.2f}x  per GiB")
    print("each run, in order (peerix caches a small-file NAR on its 2nd request: run 1's x1 walks the store,")
    print("run 1's x16 fills the NAR cache, later runs send cached NARs zero-copy like nginx's flat files):")
    for key in ("narinfo", "nar x1", "nar x16"):
        for name in results:
            values = results[name][key]
            shown = [f"{t * 1000:.0f} ms" for t in values] if key == "narinfo" else [f"{mib / t:.0f}" for t in values]
            print(f"  {key:8} {name:6} {'  '.join(shown)}{'' if key == 'narinfo' else '  MiB/s'}")
    print(f"peerix peak RSS: {rss:.0f} MiB")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
