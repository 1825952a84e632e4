"""Benchmark: a fleet rolling out one closure at the same moment, with the upstream behind a slow link.

Eight hosts (network namespaces on one bridge, tests/rollout.py) and an upstream cache (nginx, zstd,
its link shaped with tbf to --rate) each substitute the same closure (one large random path and three
small ones) into a fresh store at the same moment, three ways, each in a fresh fleet:

  plain          Nix on every host straight from the upstream
  no-pull        peerix on every host without pull-through: substituters = its daemon, then the upstream
  pull-through   the same with pull-through: one host per path leased at the tracker goes upstream, the
                 others follow it

For each: upstream NAR bytes against the closure's files, the time until every host holds the closure,
and the p99 host (over all hosts of all runs). Medians of --runs runs.

Targets: pull-through's upstream bytes <= 1.1x the closure; its fleet time <= 0.3x plain Nix's; no
host slower than in the plain-Nix run (its slowest host against plain's slowest).
"""

import argparse
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import run, workdir  # noqa: E402
from rollout import DAEMON, Rollout  # noqa: E402

WAYS = ("plain", "no-pull", "pull-through")


def rollout(work: Path, closure: Path, way: str, hosts: int, rate: str) -> tuple[int, int, list[float]]:
    """Upstream bytes sent, the closure's file bytes, and each host's seconds."""
    fleet = Rollout(work, closure, hosts=hosts, rate=rate)
    try:
        if way == "plain":
            done = fleet.copy_all((fleet.upstream.url,))
        else:
            fleet.start_all(*(("--no-pull-through",) if way == "no-pull" else ()))
            done = fleet.copy_all((DAEMON, fleet.upstream.url))
        for name in fleet.hosts:
            fleet.verify(name)
        return fleet.upstream.bytes_sent(), fleet.upstream.file_bytes(), list(done.values())
    finally:
        fleet.close()


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--rate", default="160mbit", help="the upstream's link (tc tbf rate); 160mbit = 20 MB/s")
    parser.add_argument("--megabytes", type=int, default=128, help="the large path's size")
    args = parser.parse_args()

    print("building the rollout closure (cached after the first run)...", flush=True)
    closure = Path(run("nix-build", str(ROOT / "tests" / "nix" / "rollout.nix"), "--no-out-link",
                       "--argstr", "seed", "bench-rollout", "--argstr", "megabytes", str(args.megabytes)).strip())
    results: dict[str, list[tuple[int, int, list[float]]]] = {way: [] for way in WAYS}
    work = workdir("rollout")
    try:
        for number in range(args.runs):
            for way in WAYS:
                (work / f"{way}-{number}").mkdir()
                results[way].append(rollout(work / f"{way}-{number}", closure, way, args.hosts, args.rate))
                sent, files, hosts = results[way][-1]
                print(f"run {number + 1} {way:13} fleet {max(hosts):6.2f} s, upstream {sent / files:.2f}x",
                      flush=True)
    finally:
        run("chmod", "-R", "u+w", str(work))
        shutil.rmtree(work, ignore_errors=True)

    files = results["plain"][0][1]
    print(f"\n{args.hosts} hosts, a closure of {files / 2**20:.0f} MiB as the upstream's files, upstream at "
          f"{args.rate}; medians of {args.runs} runs")
    figures = {}
    for way in WAYS:
        sent = statistics.median(r[0] for r in results[way])
        fleet = statistics.median(max(r[2]) for r in results[way])
        every_host = [seconds for r in results[way] for seconds in r[2]]
        figures[way] = (sent, fleet, p99(every_host), max(every_host))
        print(f"{way:13} upstream {sent / 2**20:7.0f} MiB ({sent / files:.2f}x the closure)  fleet {fleet:6.2f} s  "
              f"p99 host {figures[way][2]:6.2f} s")
    sent, fleet, _, slowest = figures["pull-through"]
    plain_fleet, plain_slowest = figures["plain"][1], figures["plain"][3]
    print(f"\ntargets: upstream bytes <= 1.1x: {sent / files:.2f}x {'ok' if sent <= 1.1 * files else 'MISSED'}; "
          f"fleet time <= 0.3x plain: {fleet / plain_fleet:.2f}x {'ok' if fleet <= 0.3 * plain_fleet else 'MISSED'}; "
          f"slowest host {slowest:.2f} s against plain's {plain_slowest:.2f} s "
          f"{'ok' if slowest <= plain_slowest else 'MISSED'}")


if __name__ == "__main__":
    main()
