"""Shared pieces of the benchmarks: the synthetic closure, reference servers, timing and memory."""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from peerix.cli.localfleet import free_port

BENCH = Path(__file__).parent
ROOT = BENCH.parent


def run(*args: str, **kw) -> str:
    result = subprocess.run(args, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args[:4])} failed:\n{result.stderr}")
    return result.stdout


def build_closure(seed: str = "bench-1", **args: int) -> tuple[str, dict[str, dict]]:
    """Build the synthetic closure in the root store; return its top path and {path: info}."""
    extra = [a for name, value in args.items() for a in ("--arg", name, str(value))]
    print("building the synthetic closure (cached after the first run)...", flush=True)
    top = run("nix-build", str(BENCH / "closure.nix"), "--no-out-link", "--argstr", "seed", seed, *extra).strip()
    data = json.loads(run("nix", "path-info", "--json", "-r", top))
    infos = {entry["path"]: entry for entry in data} if isinstance(data, list) else data
    total = sum(info["narSize"] for info in infos.values())
    print(f"closure: {len(infos)} paths, {total / 2**30:.2f} GiB")
    return top, infos


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    sys.exit(f"{url} did not come up")


@contextmanager
def process(args: list[str], log: Path, ready_url: str) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_http(ready_url)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def nginx(root: Path, work: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """Debian's nginx serving `root` as flat files: the reference a dedicated server is held to."""
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;
  uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    (work / "tmp").mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with process(["nginx", "-c", str(conf)], work / "nginx.log", url + "/nix-cache-info") as proc:
        yield url, proc


@contextmanager
def peerix_serve(store_root: str, work: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen]]:
    from peerix.common.secrets import write_secret
    from peerix.nix.signing import SecretKey

    key_file = work / f"bench-{time.monotonic_ns()}.sec"
    write_secret(key_file, SecretKey.generate("bench-1").to_text())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "peerix.cli", "--log-level", "warning", "serve", "--store-root", store_root,
            "--listen", f"127.0.0.1:{port}", "--sign-key-file", str(key_file), "--state-dir", str(work / "state"),
            "--iroh-listen", "127.0.0.1:0", "--fast-path-listen", "127.0.0.1:0", "--no-relays", "--no-discovery",
            "--no-lan", "--upstream", "none", *extra]
    with process(args, work / "peerix.log", url + "/health") as proc:
        yield url, proc


def curl(urls: list[str], parallel: int = 1) -> tuple[float, int]:
    """Fetch `urls` with one curl (keep-alive; `parallel` connections); return seconds and bytes.

    curl is the client so that the client's own cost is small and identical for both servers.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".curl") as config:
        for url in urls:
            config.write(f'url = "{url}"\noutput = "/dev/null"\n')
        config.flush()
        args = ["curl", "-sS", "--fail", "-K", config.name, "-w", "%{http_code} %{size_download}\\n"]
        if parallel > 1:
            args += ["--parallel", "--parallel-max", str(parallel), "--parallel-immediate"]
        started = time.perf_counter()
        out = run(*args)
        seconds = time.perf_counter() - started
    lines = out.split()
    codes, sizes = lines[0::2], lines[1::2]
    if len(codes) != len(urls) or set(codes) != {"200"}:
        sys.exit(f"curl: unexpected answers {sorted(set(codes))} for {len(urls)} URLs")
    return seconds, sum(map(int, sizes))


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (nginx's master and workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            pids += process_tree(int(child))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used: a figure that load on other cores barely moves."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def pinned(pids: list[int], cpu: int = 0) -> Iterator[None]:
    """Run the processes, and this one with what it starts (curl), on one CPU: a wakeup across CPUs costs
    tens of microseconds, as much as a narinfo, and would measure the scheduler rather than the servers."""
    everyone = [0, *pids]
    before = {pid: os.sched_getaffinity(pid) for pid in everyone}
    for pid in everyone:
        os.sched_setaffinity(pid, {cpu})
    try:
        yield
    finally:
        for pid, cpus in before.items():
            os.sched_setaffinity(pid, cpus)


def workdir(name: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"peerix-bench-{name}-"))
    os.chmod(path, 0o755)
    return path
