"""Hosts that die and come back: real daemons SIGKILLed and started again at once on the same ports
while real Nix (or curl) fetches through another host. Shared by tests/test_churn.py and bench/churn.py.

The churn scenario: a tracker and four hosts hold paths of 8 MiB, each path two or three of them.
In each round, Nix copies four paths that one host lacks through that host, while another host
holding some of them is killed at a random moment and restarted on the same ports.
"""

import os
import random
import subprocess
import threading
import time
from dataclasses import dataclass

import httpx

from peerix.cli.localfleet import Host, LocalFleet, wait_until
from peerix.nix.narinfo import NarInfo

from nixtools import HERE, build

HOSTS = "abcd"
PER_ROUND = 4
UPLOAD_CAP = ("--max-upload-rate", "16M")  # an 8 MiB path takes half a second: kills land in the middle
CURL = ("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}")  # prints "200 <bytes>"


def narinfo(host: Host, hash_part: str) -> NarInfo:
    answer = httpx.get(f"{host.url}/{hash_part}.narinfo", timeout=30)
    answer.raise_for_status()
    return NarInfo.parse(answer.text)


def nar_url(host: Host, hash_part: str) -> str:
    """The NAR URL of a path through `host`, from its narinfo."""
    return f"{host.url}/{narinfo(host, hash_part).url}"


def fetch(url: str) -> int:
    """The whole body through curl (as Nix fetches it); its size, or an error naming the status."""
    result = subprocess.run([*CURL, url], capture_output=True, text=True, timeout=300)
    status, size = result.stdout.split()
    if result.returncode != 0 or status != "200":
        raise AssertionError(f"curl {url}: {status} {result.stderr.strip()}")
    return int(size)


def restart(host: Host, *args: str) -> None:
    """SIGKILL, then start again at once on the same ports (returns once it answers /health)."""
    host.process.kill()
    host.process.wait()
    host.start(*args)


def killed_mid_nar(fetcher: Host, senders: list[Host], hash_part: str,
                   sender_args: tuple[str, ...]) -> tuple[float, float]:
    """Seconds for one NAR through `fetcher`, undisturbed and then with the peer sending it killed once
    half of it has arrived (that peer is started again afterwards)."""
    info = narinfo(fetcher, hash_part)
    url, size = f"{fetcher.url}/{info.url}", info.nar_size
    started = time.monotonic()
    assert fetch(url) == size
    undisturbed = time.monotonic() - started
    received = fetcher.metric("peerix_peer_received_bytes_total")
    sent = {h.name: h.metric("peerix_peer_sent_bytes_total") for h in senders}
    started = time.monotonic()
    curl = subprocess.Popen([*CURL, url], stdout=subprocess.PIPE, text=True)
    wait_until(lambda: fetcher.metric("peerix_peer_received_bytes_total") - received >= size / 2, "half", 120)
    victim = max(senders, key=lambda h: h.metric("peerix_peer_sent_bytes_total") - sent[h.name])
    victim.process.kill()
    output, _ = curl.communicate(timeout=300)
    killed = time.monotonic() - started
    assert output == f"200 {size}", output
    victim.process.wait()
    victim.start(*sender_args)
    return undisturbed, killed


def used_again(fetcher: Host, holder: Host, hash_part: str, holder_args: tuple[str, ...]) -> float:
    """Restart `holder` (killed, started on the same ports); seconds from its answering /health to
    `fetcher` answering the narinfo and the whole NAR of a path that only `holder` has."""
    restart(holder, *holder_args)
    started = time.monotonic()
    fetch(nar_url(fetcher, hash_part))
    return time.monotonic() - started


@dataclass(frozen=True)
class Round:
    fetcher: str
    victim: str
    paths: tuple[str, ...]
    arrived: int
    seconds: float
    recovered_5xx: int  # 5xx answers Nix retried, and then had the NAR
    unrecovered_5xx: bool  # Nix gave up on a 5xx
    stderr: str


class Churn:
    """The scenario on a running fleet: hosts a to d hold `paths` two or three each (by `seed`)."""

    def __init__(self, fleet: LocalFleet, paths: list[str], seed: int, *args: str) -> None:
        self.fleet = fleet
        self.rng = random.Random(seed)
        self.args = (*UPLOAD_CAP, *args)
        self.holders = self._assign(paths)
        self.hosts = {name: fleet.host(name) for name in HOSTS}
        for name, host in self.hosts.items():
            held = [p for p in paths if name in self.holders[p]]
            host.give(*held)
            host.start(*self.args)
        for name, host in self.hosts.items():
            fleet.wait_announced(host, [p for p in paths if name in self.holders[p]])

    def _assign(self, paths: list[str]) -> dict[str, list[str]]:
        """Each path to two or three hosts, every host lacking enough paths to fetch a round's worth."""
        while True:
            holders = {p: self.rng.sample(HOSTS, self.rng.choice((2, 3))) for p in paths}
            if all(sum(name not in held for held in holders.values()) >= PER_ROUND for name in HOSTS):
                return holders

    def round(self, number: int, kill: bool = True) -> Round:
        """One round; without `kill`, the same choices but nobody dies (the reference)."""
        fetcher = self.rng.choice(HOSTS)
        paths = tuple(self.rng.sample(sorted(p for p, held in self.holders.items() if fetcher not in held),
                                      PER_ROUND))
        victim = self.rng.choice(sorted({name for p in paths for name in self.holders[p]}))
        delay = self.rng.uniform(0, 1.0)
        client, host = self.fleet.root / f"client-{number}", self.hosts[fetcher]
        started, logged = time.monotonic(), len(host.log)
        nix = subprocess.Popen(
            ["nix", "copy", "--from", host.url, "--to", str(client), "--option", "trusted-public-keys",
             host.key.public.to_text(), "--option", "narinfo-cache-negative-ttl", "0", *paths],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "XDG_CACHE_HOME": str(self.fleet.root / "xdg-cache")})
        failed: list[BaseException] = []  # a host that does not come back fails the round, not a thread

        def kill_and_restart() -> None:
            try:
                restart(self.hosts[victim], *self.args)
            except BaseException as error:
                failed.append(error)

        killer = threading.Timer(delay, kill_and_restart)
        if kill:
            killer.start()
        _, stderr = nix.communicate(timeout=120)
        seconds = time.monotonic() - started
        if kill:
            killer.join()
            if failed:
                raise AssertionError(f"round {number}: {victim} did not come back: {failed[0]}")
        invalid = subprocess.run(["nix-store", "--store", str(client), "--check-validity", "--print-invalid", *paths],
                                 capture_output=True, text=True).stdout.split()
        answers_5xx = stderr.count("HTTP error 5")
        if invalid:  # what the fetcher said about it, for the report
            stderr += f"\n  peers: {' '.join(f'{h.name}={h.peer_id[:10]}' for h in self.hosts.values())}"
            stderr += "".join(f"\n  {host.name}: {line}" for line in host.log[logged:].splitlines()
                              if "access" not in line)
        return Round(fetcher, victim, paths, len(paths) - len(invalid), seconds,
                     answers_5xx if nix.returncode == 0 else 0, nix.returncode != 0 and answers_5xx > 0, stderr)

    def corrupt(self) -> int:
        """NARs that failed their hash at any host, over every process the host ran (the logs are kept)."""
        return sum(host.log.count("NAR hash mismatch") for host in self.hosts.values())


def build_paths(count: int, megabytes: int = 8) -> list[str]:
    """`count` paths of one random file each, built in the root store (cached by Nix after the first run)."""
    return [str(build(HERE / "nix" / "big.nix", megabytes=str(megabytes), seed=f"churn-{i}")) for i in range(count)]
