"""Benchmark: store summaries on a LAN of 8 hosts where 1 holds the paths, with and without them.

Eight network namespaces on one switch, LAN discovery only (no tracker). Host 1 holds the synthetic
closure of bench/cache.py; hosts 2 to 7 hold nothing; host 8 asks its own peerix for every path's
narinfo (leaves first, so that closure prefetch spares as few lookups as possible), then for 300
hashes nobody has. The same run is made with --no-lan-summaries on every host.

  questions   narinfo questions hosts 2 to 7 answered "not found" (peerix_peer_requests_total):
              questions to peers that lack the path; target: >= 95% fewer with summaries
  miss p99    narinfo latency through host 8 for hashes nobody has; target: no higher with summaries
  filter      a 100,000-path store's summary: size (target <= 128 KiB) and false positives measured
              on 1,000,000 hashes it does not hold (target <= 0.5%)
"""

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netns import Host, Network, wait_for  # noqa: E402

from peerix.common.secrets import write_secret  # noqa: E402
from peerix.net.store_filter import StoreFilter  # noqa: E402
from peerix.nix import nix32  # noqa: E402
from peerix.nix.signing import SecretKey  # noqa: E402

from harness import build_closure, run, workdir  # noqa: E402

HOSTS = 8
PORT = 12304


def metric(host: Host, prefix: str) -> float:
    text = host.run("curl", "-sf", f"http://127.0.0.1:{PORT}/metrics").stdout
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def known(host: Host) -> int:
    answer = host.run("curl", "-sf", f"http://127.0.0.1:{PORT}/api/v1/peers", check=False).stdout
    return len(json.loads(answer)["peers"]) if answer.startswith("{") else 0


def timed_lookups(host: Host, hash_parts: list[str], expect: str) -> list[float]:
    """One curl, one connection, a narinfo per hash: seconds each."""
    with tempfile.NamedTemporaryFile("w", suffix=".curl", dir="/tmp", delete=False) as config:
        for hash_part in hash_parts:
            config.write(f'url = "http://127.0.0.1:{PORT}/{hash_part}.narinfo"\noutput = "/dev/null"\n')
    try:
        out = host.run("curl", "-s", "-K", config.name, "-w", "%{http_code} %{time_total}\\n").stdout.split()
    finally:
        os.unlink(config.name)
    codes, seconds = out[0::2], [float(s) for s in out[1::2]]
    assert set(codes) == {expect}, sorted(set(codes))
    return seconds


def prepare(work: Path, top: str) -> SecretKey:
    """The hosts' stores and keys, for both rounds: host 1's holds the closure, signed by the cluster key."""
    key = SecretKey.generate("bench-lan-1")
    write_secret(work / "cluster.sec", key.to_text())
    for n in range(1, HOSTS + 1):
        home = work / str(n)
        home.mkdir()
        run("nix-store", "--store", str(home / "store"), "--init")
        write_secret(home / "host.sec", SecretKey.generate(f"host-{n}-1").to_text())
    run("nix", "copy", "--no-check-sigs", "--to", str(work / "1" / "store"), top)
    run("nix", "store", "sign", "--store", str(work / "1" / "store"), "--key-file", str(work / "cluster.sec"),
        "-r", top)
    return key


def round_(work: Path, key: SecretKey, paths: list[str], summaries: bool) -> dict[str, float]:
    net = Network(subnet="10.237.0")
    try:
        hosts = [net.add_host(str(n)) for n in range(1, HOSTS + 1)]
        for n, host in enumerate(hosts, 1):
            home = work / str(n)
            host.peerix("--log-level", "warning", "serve", "--name", f"host-{n}", "--store-root", str(home / "store"),
                        "--state-dir", str(home / f"state-{summaries}"), "--sign-key-file", str(home / "host.sec"),
                        "--trusted-public-keys", key.public.to_text(), "--upstream", "none", "--no-relays",
                        "--no-discovery", "--iroh-listen", "0.0.0.0:12305", "--lan-interval", "1",
                        *([] if summaries else ["--no-lan-summaries"]), log=home / f"peerix-{summaries}.log")
        asker, empty = hosts[-1], hosts[1:-1]
        wait_for(lambda: known(asker) >= HOSTS - 1, timeout=30)
        if summaries:
            wait_for(lambda: metric(asker, 'peerix_summaries_fetched_total{result="ok"}') >= HOSTS - 1, timeout=30)
        before = sum(metric(h, 'peerix_peer_requests_total{kind="narinfo",result="not-found"}') for h in empty)
        trips = metric(asker, 'peerix_peer_round_trips_total{kind="narinfo"}')
        timed_lookups(asker, [Path(p).name[:32] for p in paths], "200")
        asked = sum(metric(h, 'peerix_peer_requests_total{kind="narinfo",result="not-found"}') for h in empty)
        lookups = metric(asker, 'peerix_peer_round_trips_total{kind="narinfo"}') - trips
        time.sleep(1)
        misses = sorted(timed_lookups(asker, [nix32.encode(os.urandom(20)) for _ in range(300)], "404"))
        return {"questions": asked - before, "round trips": lookups,
                "miss p50": statistics.median(misses) * 1000, "miss p99": misses[int(len(misses) * 0.99)] * 1000}
    finally:
        net.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    top, infos = build_closure()
    paths = sorted(infos, key=lambda p: len(infos[p]["references"]))  # leaves first
    work = workdir("summaries")
    try:
        key = prepare(work, top)
        results = {"off": round_(work, key, paths, summaries=False), "on": round_(work, key, paths, summaries=True)}
    finally:
        run("chmod", "-R", "u+w", str(work))
        shutil.rmtree(work, ignore_errors=True)

    held = [secrets.token_hex(16) for _ in range(100_000)]
    summary = StoreFilter.build(held)
    others = [secrets.token_hex(16) for _ in range(1_000_000)]
    false_positives = sum(h in summary for h in others) / len(others)

    print(f"\n{HOSTS} hosts on one switch, 1 holding {len(paths)} paths; host {HOSTS} asks for each")
    print(f"{'':12} {'questions to peers lacking the path':>36} {'round trips':>12} {'miss p50':>9} {'miss p99':>9}")
    for name, row in results.items():
        print(f"summaries {name:3} {row['questions']:36.0f} {row['round trips']:12.0f} {row['miss p50']:7.1f}ms "
              f"{row['miss p99']:7.1f}ms")
    off, on = results["off"], results["on"]
    fewer = 1 - on["questions"] / max(off["questions"], 1)
    verdict = "ok" if fewer >= 0.95 else "MISSED"
    print(f"questions to peers that lack the path: {fewer:.1%} fewer (target >= 95%: {verdict})")
    print(f"miss p99: {on['miss p99']:.1f} ms with, {off['miss p99']:.1f} ms without (target: no higher: "
          f"{'ok' if on['miss p99'] <= off['miss p99'] * 1.1 + 1 else 'MISSED'}, within 10% + 1 ms of noise)")
    print(f"100,000-path filter: {len(summary.data) / 1024:.1f} KiB (target <= 128 KiB: "
          f"{'ok' if len(summary.data) <= 128 << 10 else 'MISSED'}), false positives {false_positives:.3%} "
          f"(target <= 0.5%: {'ok' if false_positives <= 0.005 else 'MISSED'})")


if __name__ == "__main__":
    main()
