"""Benchmark: a fleet under fire for minutes (tests/soak.py has the scenario and its targets).

Twelve hosts in network namespaces, each with its own chroot store holding some of eight overlapping
closures (1 to 40 MiB of payload each over shared libraries); six share a LAN, six find peers through
the tracker only. Real Nix on five of them substitutes closures one after another, for a minute of
warm-up, then for --minutes while daemons on three others are SIGKILLed and restarted every 15 s or so,
the tracker is killed and restarted once and SIGSTOPped for 30 s once, a liar answers with wrong bytes,
a mute peer opens streams and never answers, and one host sits behind a 5 MiB/s link (tbf; this kernel
has no netem, so without the 50 ms of delay). With --db postgresql the tracker runs on a PostgreSQL
server of its own; with --db both, on SQLite and then on PostgreSQL.

Targets: no 5xx answered to Nix but 503s it recovered from; no corrupt path valid in any store; no Nix
operation over 60 s; no daemon never killed growing its RSS or open files by more than 20% from the
start (after the warm-up) to the end; every ERROR line explained. Exits 1 when one is missed. Printed
besides: the narinfo miss times, the Nix operations that failed and why.
"""

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import run, workdir  # noqa: E402
from postgres import PostgresServer, why_no_postgres  # noqa: E402
from soak import Report, Settings, Soak, build  # noqa: E402


def soak(tops: list[str], settings: Settings, backend: str) -> Report:
    work = workdir(f"soak-{backend}")
    server = PostgresServer.start() if backend == "postgresql" else None
    try:
        fleet = Soak(work, tops, settings, server.create_database() if server else None)
        try:
            return fleet.run()
        finally:
            fleet.close()
    finally:
        if server:
            server.stop()
        run("chmod", "-R", "u+w", str(work))
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--hosts", type=int, default=12)
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    backends = ("sqlite", "postgresql") if args.db == "both" else (args.db,)
    if "postgresql" in backends and (why := why_no_postgres()):
        sys.exit(why)

    settings = Settings(hosts=args.hosts, seconds=args.minutes * 60, seed=args.seed)
    print("building the soak's closures (cached after the first run)...", flush=True)
    tops = build(settings.closures, f"bench-soak-{args.seed}")
    missed = []
    for backend in backends:
        report = soak(tops, settings, backend)
        print("\n" + "\n".join(report.lines()), flush=True)
        missed += [f"{report.database}: {target}" for target in report.missed()]
    print("\ntargets: " + ("all met" if not missed else "MISSED\n  " + "\n  ".join(missed)))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
