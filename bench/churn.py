"""Benchmark: hosts that die and come back, against the same work undisturbed, in one run.

  churn        the scenario of tests/churn.py: a tracker and four hosts hold 10 paths of 8 MiB, two or
               three hosts each; in each round Nix copies four paths through one host while another
               holding some of them is SIGKILLed at a random moment and restarted on the same ports.
               Paths arrived / attempted, over --seeds seeds of --rounds rounds each; the reference is
               the same rounds with nobody killed
  killed       one 64 MiB NAR from one of two holders capped at 20 MiB/s (one peer at a time), with the
               sender killed halfway, against the same NAR undisturbed: the added seconds
  restarted    a holder SIGKILLed and restarted on the same ports: seconds from its answering /health
               to the fetching host serving the narinfo and NAR of a path only it holds, against the same
               fetch with the holder left alone

Targets: churn >= 99% arrived; killed adds < 2 s (median and p99); restarted used again < 1 s (p99).
"""

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from churn import Churn, build_paths, fetch, killed_mid_nar, nar_url, used_again  # noqa: E402

from peerix.cli.localfleet import LocalFleet  # noqa: E402

from harness import run, workdir  # noqa: E402


def new_fleet(work: Path, name: str) -> LocalFleet:
    (work / name).mkdir()
    fleet = LocalFleet(work / name, log_level="warning")
    fleet.start_tracker()
    return fleet


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def churn(work: Path, seed: int, rounds: int, paths: list[str], kill: bool) -> tuple[int, int, int, float]:
    """Paths attempted and arrived, rounds where Nix gave up on a 5xx, and the slowest round's seconds."""
    fleet = new_fleet(work, f"churn-{seed}-{'killed' if kill else 'reference'}")
    try:
        scenario = Churn(fleet, paths, seed)
        results = [scenario.round(number, kill) for number in range(rounds)]
        if scenario.corrupt():
            raise SystemExit(f"seed {seed}: a NAR failed its hash")
    finally:
        fleet.close()
    return (sum(len(r.paths) for r in results), sum(r.arrived for r in results),
            sum(r.unrecovered_5xx for r in results), max(r.seconds for r in results))


def kills(work: Path, path: str, runs: int) -> list[tuple[float, float]]:
    fleet = new_fleet(work, "killed")
    capped = ("--max-upload-rate", "20M")
    try:
        senders = [fleet.host("a"), fleet.host("b")]
        for sender in senders:
            sender.give(path)
            sender.start(*capped)
            fleet.wait_announced(sender, [path])
        fetcher = fleet.host("c")
        fetcher.start("--max-sources", "1")
        return [killed_mid_nar(fetcher, senders, Path(path).name[:32], capped) for _ in range(runs)]
    finally:
        fleet.close()


def restarts(work: Path, paths: list[str], runs: int) -> tuple[list[float], list[float]]:
    fleet = new_fleet(work, "restarted")
    try:
        holder, fetcher = fleet.host("a"), fleet.host("c")
        holder.give(*paths)
        holder.start()
        fleet.wait_announced(holder, paths)
        fetcher.start()
        alone, restarted = [], []
        for number in range(runs):
            hash_part = Path(paths[number % len(paths)]).name[:32]
            started = time.monotonic()
            fetch(nar_url(fetcher, hash_part))
            alone.append(time.monotonic() - started)
            restarted.append(used_again(fetcher, holder, hash_part, ()))
        return alone, restarted
    finally:
        fleet.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="churn runs, each with its own seed")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--kills", type=int, default=10, help="kills in the middle of a NAR")
    parser.add_argument("--restarts", type=int, default=20)
    args = parser.parse_args()

    paths = build_paths(10)
    big = run("nix-build", str(ROOT / "tests" / "nix" / "big.nix"), "--no-out-link").strip()  # 64 MiB
    work = workdir("churn")
    try:
        reference = [churn(work, seed, args.rounds, paths, kill=False) for seed in range(1, args.seeds + 1)]
        churned = [churn(work, seed, args.rounds, paths, kill=True) for seed in range(1, args.seeds + 1)]
        killed = kills(work, big, args.kills)
        alone, restarted = restarts(work, paths, args.restarts)
    finally:
        run("chmod", "-R", "u+w", str(work))
        shutil.rmtree(work, ignore_errors=True)

    attempted, arrived = sum(r[0] for r in churned), sum(r[1] for r in churned)
    base_attempted, base_arrived = sum(r[0] for r in reference), sum(r[1] for r in reference)
    share = arrived / attempted
    print(f"\nchurn, {args.seeds} seeds of {args.rounds} rounds")
    print(f"{'arrived':12} {arrived}/{attempted} ({share:.1%}), nobody killed {base_arrived}/{base_attempted}; "
          f"Nix gave up on a 5xx in {sum(r[2] for r in churned)} rounds; slowest round "
          f"{max(r[3] for r in churned):.1f} s (undisturbed {max(r[3] for r in reference):.1f} s)  "
          f"target >= 99%: {'ok' if share >= 0.99 else 'MISSED'}")
    added = [k - u for u, k in killed]
    undisturbed = statistics.median(u for u, _ in killed)
    print(f"{'killed':12} +{statistics.median(added):.2f} s median, +{p99(added):.2f} s p99 over {len(added)} "
          f"kills, undisturbed {undisturbed:.2f} s  target < 2 s: "
          f"{'ok' if p99(added) < 2 else 'MISSED'}")
    print(f"{'restarted':12} {statistics.median(restarted) * 1000:.0f} ms median, {p99(restarted) * 1000:.0f} ms "
          f"p99 over {len(restarted)} restarts, holder left alone {statistics.median(alone) * 1000:.0f} ms  "
          f"target < 1 s: {'ok' if p99(restarted) < 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
