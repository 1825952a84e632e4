"""Benchmark: byte ranges and `.ls` listings of the local store, beside the whole NAR, in one run.

  range:   a 1 MiB range at the end of a 1 GiB NAR of 4096 files (no file before the range is read);
           the first walks the tree (stat only) and indexes it, the others start from the index
  whole:   the same NAR whole, the reference
  listing: the `.ls` of a 10,000-file path, computed from the tree (a fresh path each run: no cache),
           and served again (from memory)
Each figure is the median of --runs requests by curl (the range's first apart); the load average is
printed before and after. Targets: range < 50 ms, listing < 200 ms.
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import BENCH, median, peerix_serve, run, workdir  # noqa: E402

MIB = 1 << 20


def timed(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    out = run("curl", "-sS", "--fail", *args)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    print("building a 1 GiB path of 4096 files and 10,000-file paths (cached after the first run)...", flush=True)
    big = run("nix-build", str(BENCH / "manyfiles.nix"), "--no-out-link").strip()
    listed = [run("nix-build", str(BENCH / "manyfiles.nix"), "--no-out-link", "--argstr", "seed", f"bench-ls-{n}",
                  "--argstr", "files", "10000", "--argstr", "kilobytes", "0").strip() for n in range(args.runs)]
    work = workdir("protocol")
    load_before = os.getloadavg()
    figures: dict[str, list[float]] = {"range": [], "whole": [], "listing": [], "listing again": []}
    with peerix_serve("/", work) as (url, _):
        narinfo = run("curl", "-sS", "--fail", f"{url}/{Path(big).name[:32]}.narinfo")
        nar_url = url + "/" + next(line[5:] for line in narinfo.splitlines() if line.startswith("URL: "))
        size = int(next(line[9:] for line in narinfo.splitlines() if line.startswith("NarSize: ")))
        for n in range(args.runs):
            seconds, _ = timed("-o", "/dev/null", "-r", f"{size - MIB}-", nar_url)
            figures["range"].append(seconds)
            seconds, _ = timed("-o", "/dev/null", nar_url)
            figures["whole"].append(seconds)
            ls_url = f"{url}/{Path(listed[n]).name[:32]}.ls"
            for key in ("listing", "listing again"):
                seconds, text = timed(ls_url)
                figures[key].append(seconds)
                if text.count('"type":"regular"') != 10000:
                    sys.exit("the listing does not list 10,000 files")
    load_after = os.getloadavg()
    shutil.rmtree(work, ignore_errors=True)

    figures["range, first"] = figures["range"][:1]
    figures["range"] = figures["range"][1:]
    whole = median(figures["whole"])
    print(f"\n1 GiB NAR of 4096 files ({size / MIB:.0f} MiB), 10,000-file listings; medians of {args.runs} runs")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (2 cores)")
    for key, target in (("whole", None), ("range, first", 0.050), ("range", 0.050), ("listing", 0.200),
                        ("listing again", None)):
        seconds = median(figures[key])
        verdict = f"< {target * 1000:.0f} ms {'ok' if seconds < target else 'MISSED'}" if target else ""
        print(f"  {key:14} {seconds * 1000:9.1f} ms  {seconds / whole:7.4f}x the whole NAR's time  {verdict}")
        print(f"  {'':14} runs: {'  '.join(f'{s * 1000:.0f}' for s in figures[key])} ms")


if __name__ == "__main__":
    main()
