"""Benchmark: the fast path between two hosts on a veth link, against iroh and nginx, in one run.

Two network namespaces joined by one veth pair. Host A holds a large path (1 GiB by default); on host B:

  fast path   B's peerix fetches the NAR from A (asked for over iroh, the bytes over HTTP), checks it
              against the NarHash and hands it to curl
  iroh        the same through a second daemon on B, started with --no-fast-path: every byte over iroh
  nginx       curl on B fetches the same NAR as a flat file from nginx on A (sendfile): the link's ceiling
              for one HTTP connection

CPU per GiB is reported for both sides: A's daemon (or nginx) as the sender, B's daemon (or curl) as
the receiver. Targets (issue 17): fast path >= 3x iroh and >= 0.4x nginx. Each figure is the median of
--runs runs, the three kinds interleaved.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netns import Host, Network, wait_for  # noqa: E402

from peerix.common.secrets import write_secret  # noqa: E402
from peerix.nix.signing import SecretKey  # noqa: E402

from harness import BENCH, cpu_seconds, median, process_tree, run, workdir  # noqa: E402

GIB = 1 << 30


def daemon(host: Host, home: Path, key: SecretKey, trusted: str, *extra: str) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    write_secret(home / "host.sec", key.to_text())
    if not (home / "store").exists():
        run("nix-store", "--store", str(home / "store"), "--init")
    return host.peerix("--log-level", "warning", "serve", "--name", home.name, "--store-root", str(home / "store"),
                       "--state-dir",
                       str(home / "state"), "--sign-key-file", str(home / "host.sec"), "--trusted-public-keys",
                       trusted, "--upstream", "none", "--no-relays", "--no-discovery", "--no-lan",
                       "--nar-cache-size", "0", *extra, log=home / "peerix.log")


def knows_a(b: Host, port: int) -> bool:
    answer = b.run("curl", "-s", f"http://127.0.0.1:{port}/api/v1/peers", check=False).stdout
    return answer.startswith("{") and any(peer["name"] == "a" for peer in json.loads(answer)["peers"])


def fetch(host: Host, url: str) -> tuple[float, int, float]:
    """curl on `host`: seconds, bytes, and curl's own CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = host.run("curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", url).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, size = out.split()
    return float(seconds), int(size), (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=1024, help="size of the large path")
    args = parser.parse_args()

    big = run("nix-build", str(BENCH / "big.nix"), "--no-out-link", "--argstr", "megabytes",
              str(args.megabytes)).strip()
    work = workdir("fast-path")
    net = Network(subnet="10.235.0")
    results: dict[str, list[tuple[float, float, float]]] = {}  # kind -> (MiB/s, sender CPU/GiB, receiver CPU/GiB)
    try:
        a, b = net.add_host("a", on_switch=False), net.add_host("b", on_switch=False)
        net.link(a, b, "10.236.0")  # a: 10.236.0.1, b: 10.236.0.2
        key_a = SecretKey.generate("bench-a-1")
        write_secret(work / "a.sec", key_a.to_text())
        run("nix", "copy", "--no-check-sigs", "--to", str(work / "a" / "store"), big)
        run("nix", "store", "sign", "--store", str(work / "a" / "store"), "--key-file", str(work / "a.sec"), big)
        trusted = key_a.public.to_text()
        sender = daemon(a, work / "a", key_a, trusted, "--iroh-listen", "0.0.0.0:12305",
                        "--peer", "10.236.0.2:12304", "--peer", "10.236.0.2:12314")
        receivers = {
            "fast path": (daemon(b, work / "b1", SecretKey.generate("bench-b1-1"), trusted, "--iroh-listen",
                                 "0.0.0.0:12305", "--peer", "10.236.0.1"), 12304),
            "iroh": (daemon(b, work / "b2", SecretKey.generate("bench-b2-1"), trusted, "--iroh-listen",
                            "0.0.0.0:12315", "--listen", "127.0.0.1:12314", "--lan-port", "12314", "--no-fast-path",
                            "--peer", "10.236.0.1"), 12314),
        }
        for _, port in receivers.values():
            wait_for(lambda port=port: knows_a(b, port), timeout=30)
        hash_part = Path(big).name[:32]
        narinfo = b.get(f"http://127.0.0.1:12304/{hash_part}.narinfo")
        url = next(line[5:] for line in narinfo.splitlines() if line.startswith("URL: "))

        flat = work / "flat"
        run("nix", "copy", "--from", str(work / "a" / "store"), "--to", f"file://{flat}?compression=none", big)
        flat_nar = next(line[5:] for line in (flat / f"{hash_part}.narinfo").read_text().splitlines()
                        if line.startswith("URL: "))
        (work / "nginx-tmp").mkdir()
        (work / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path {work}/nginx-tmp; proxy_temp_path {work}/nginx-tmp; fastcgi_temp_path {work}/nginx-tmp;
  uwsgi_temp_path {work}/nginx-tmp; scgi_temp_path {work}/nginx-tmp;
  server {{ listen 10.236.0.1:8080; root {flat}; }}
}}
""")
        nginx = a.start(["nginx", "-c", str(work / "nginx.conf")], work / "nginx.log")
        wait_for(lambda: b.run("curl", "-sf", "http://10.236.0.1:8080/nix-cache-info", check=False).returncode == 0)
        b.run("curl", "-sf", "-o", "/dev/null", f"http://10.236.0.1:8080/{flat_nar}")  # into the page cache

        for number in range(args.runs + 1):  # the first round warms up and is not counted
            for kind, (receiver, port) in receivers.items():
                sent_before, received_before = cpu_seconds([sender.pid]), cpu_seconds([receiver.pid])
                seconds, size, _ = fetch(b, f"http://127.0.0.1:{port}/{url}")
                assert size == (flat / flat_nar).stat().st_size, (kind, size)
                sent, received = cpu_seconds([sender.pid]) - sent_before, cpu_seconds([receiver.pid]) - received_before
                if number:
                    results.setdefault(kind, []).append((size / 2**20 / seconds, sent / (size / GIB),
                                                         received / (size / GIB)))
            nginx_pids = process_tree(nginx.pid)
            sent_before = cpu_seconds(nginx_pids)
            seconds, size, curl_cpu = fetch(b, f"http://10.236.0.1:8080/{flat_nar}")
            if number:
                results.setdefault("nginx", []).append((size / 2**20 / seconds,
                                                        (cpu_seconds(nginx_pids) - sent_before) / (size / GIB),
                                                        curl_cpu / (size / GIB)))
        log = (work / "b1" / "peerix.log").read_text()
        assert "fast path failed" not in log and "fast path broke" not in log, log[-2000:]
    finally:
        net.close()
        run("chmod", "-R", "u+w", str(work))
        shutil.rmtree(work, ignore_errors=True)

    rate = {kind: median([r[0] for r in rows]) for kind, rows in results.items()}
    print(f"\nmedians of {args.runs} runs; one {args.megabytes} MiB NAR from host A to host B over a veth link")
    print(f"{'':12} {'MiB/s':>8}  {'sender CPU s/GiB':>17}  {'receiver CPU s/GiB':>19}")
    for kind, rows in results.items():
        print(f"{kind:12} {rate[kind]:8.0f}  {median([r[1] for r in rows]):17.2f}  {median([r[2] for r in rows]):19.2f}"
              f"{'  (A: nginx, B: curl)' if kind == 'nginx' else '  (A, B: peerix daemons)'}")
    fast, iroh, flat = rate["fast path"], rate["iroh"], rate["nginx"]
    print(f"fast path: {fast / iroh:.2f}x iroh (target >= 3x: {'ok' if fast >= 3 * iroh else 'MISSED'}), "
          f"{fast / flat:.2f}x nginx (target >= 0.4x: {'ok' if fast >= 0.4 * flat else 'MISSED'})")


if __name__ == "__main__":
    main()
