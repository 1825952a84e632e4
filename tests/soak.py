"""A fleet under fire: hosts in network namespaces, each with a chroot store holding some of a set of
overlapping closures, a tracker (SQLite or PostgreSQL), and real Nix substituting closures on several
hosts at once for a set time, while daemons are SIGKILLed and restarted, the tracker is killed and
restarted once and frozen (SIGSTOP) once, a liar serves wrong bytes, a mute peer opens streams and never
answers, and one host sits behind a 5 MiB/s link. Shared by bench/soak.py and tests/test_soak.py.

Half the hosts share a LAN (a second switch, LAN discovery on it); the other half run --no-lan and find
peers through the tracker only; all reach the tracker and each other on the first switch. The roles:

  client   holds some closures; its Nix substitutes the others, one after another, each op's paths
           verified and deleted before the next op, so that the host announces and withdraws them
  victim   holds some closures; its daemon is SIGKILLed at random and started again
  holder   holds some closures
  shaped   a client behind a link shaped to 5 MiB/s both ways (tbf: this kernel has no netem, so the
           link has no added delay)
  liar     claims every path, answers genuine narinfo, and NARs with a byte flipped in every MiB (tests/liar.py)
  mute     claims every path, never answers, and opens NAR streams to others that it never reads

The report holds what the issue asks for; `Report.missed()` names every target missed.
"""

import os
import random
import re
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from peerix.common.secrets import write_secret
from peerix.nix import nix32
from peerix.nix.narinfo import NarInfo
from peerix.nix.signing import SecretKey

import liar
from nixtools import HERE, nix, path_info, run
from nsfleet import DAEMON, NsFleet

LAN_ROLES = ("client", "victim", "holder", "client", "victim", "holder")
WAN_ROLES = ("client", "shaped", "mute", "liar", "client", "victim")
DAEMONS = ("client", "victim", "holder", "shaped")
NIX = ("client", "shaped")
SHAPED_RATE = "5mibps"
MIB = 1 << 20

SLOW_OP = 60.0  # seconds: a Nix operation slower than this is a failure
MAX_GROWTH = 0.2  # of a daemon's RSS or open files, from the start to the end
OP_TIMEOUT = 300.0
QUIET = 3.0  # seconds without load before RSS and open files are read


@dataclass(frozen=True)
class Settings:
    hosts: int = 12
    seconds: float = 600.0  # of load with faults, after the warm-up
    warm_up: float = 60.0  # seconds of the same load without faults (one op per Nix host at least), so that
    # the daemons' RSS and open files are read at the start once they hold what a busy daemon holds
    closures: int = 8
    kill_every: float = 15.0  # mean seconds between two daemon kills
    freeze: float = 30.0  # seconds the tracker is stopped
    misses_per_second: int = 2  # narinfo misses each Nix host's daemon is asked, to time them
    seed: int = 1


@dataclass(frozen=True)
class Op:
    """One `nix-store --realise` of a closure on a host."""

    host: str
    closure: int
    at: float  # seconds into the soak when it started
    seconds: float
    ok: bool
    paths: int  # substituted into the store (missing before)
    bytes: int  # their NarSize
    retried_503: int  # "HTTP error 503" in Nix's output: retried, or, in an op that failed, given up on
    other_5xx: int
    error: str  # why one that failed did, as Nix said it


@dataclass(frozen=True)
class Usage:
    rss_kib: int
    files: int

    @classmethod
    def of(cls, pid: int) -> "Usage":
        status = Path(f"/proc/{pid}/status").read_text()
        rss = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))
        return cls(rss, len(os.listdir(f"/proc/{pid}/fd")))


@dataclass(frozen=True)
class ErrorGroup:
    count: int
    example: str
    explanation: str | None


# The ERROR lines a soak is expected to log: (logger, pattern of the message, why it is not a defect).
# Any other ERROR line is a failure.
EXPLAINED: list[tuple[str, str, str]] = [
    ("peerix.http.app", r"nar failed .* error=the NAR of \S+ from \S+ does not match its NarHash",
     "the liar's bytes failed the NarHash check: the last chunk was held back and the answer to Nix cut short, "
     "failing that Nix operation (Nix resumes a partial NAR only from a server that takes ranges); the liar, "
     "banned, is not asked again by that host"),
    ("uvicorn.error", r"ASGI callable returned without completing response",
     "uvicorn's view of the same answers cut short"),
]


@dataclass
class Report:
    settings: Settings
    database: str
    ops: list[Op]
    wall: float
    http_5xx: Counter[str]  # "<status> <route>" answered to Nix, from the access logs
    misses: dict[str, list[float]]  # seconds per narinfo miss, on LAN hosts and on tracker-only hosts
    miss_answers: Counter[str]  # status of each miss probe
    usage: dict[str, list[Usage]]  # every 10 s, from the start (after the warm-up, quiet) to the end (quiet)
    corrupt: list[str]  # "<host> <path>": valid in a store, contents not matching its NarHash
    errors: dict[tuple[str, str], ErrorGroup]
    faults: Counter[str]
    load: list[float]  # the machine's 1-minute load average, every 10 s
    frozen: tuple[float, float]  # seconds into the soak when the tracker was stopped, and when it went on

    def missed(self) -> list[str]:
        missed = []
        if other := sum(count for key, count in self.http_5xx.items() if not key.startswith("503")):
            missed.append(f"{other} answers to Nix were 5xx other than 503")
        if given_up := [op for op in self.ops if not op.ok and op.retried_503 + op.other_5xx]:
            missed.append(f"Nix gave up after a 5xx in {len(given_up)} operations")
        if self.corrupt:
            missed.append(f"{len(self.corrupt)} corrupt paths valid in a store")
        if slow := [op for op in self.ops if op.seconds > SLOW_OP]:
            missed.append(f"{len(slow)} Nix operations over {SLOW_OP:.0f} s")
        for name, (start, *_, end) in self.usage.items():
            for what, before, after in (("RSS", start.rss_kib, end.rss_kib), ("open files", start.files, end.files)):
                if after > before * (1 + MAX_GROWTH):
                    missed.append(f"{name}'s {what} grew {after / before - 1:.0%} ({before} to {after})")
        if unexplained := [key for key, group in self.errors.items() if group.explanation is None]:
            missed.append(f"{len(unexplained)} kinds of ERROR line unexplained")
        return missed

    def lines(self) -> list[str]:
        ok = [op for op in self.ops if op.ok]
        moved_paths, moved_bytes = sum(op.paths for op in self.ops), sum(op.bytes for op in self.ops)
        seconds = sorted(op.seconds for op in self.ops) or [0.0]
        failures = Counter((op.error, op.at < self.frozen[1] and op.at + op.seconds > self.frozen[0])
                           for op in self.ops if not op.ok)
        lines = [
            f"{self.settings.hosts} hosts, tracker on {self.database}, {self.settings.seconds:.0f} s of load after "
            f"{self.settings.warm_up:.0f} s of warm-up ({self.wall:.0f} s wall)",
            f"machine load average (1 min) {statistics.median(self.load):.1f} median, {max(self.load):.1f} max, "
            f"on {os.cpu_count()} CPUs",
            f"faults: {', '.join(f'{count} {what}' for what, count in sorted(self.faults.items()))}",
            f"Nix operations (the warm-up's too): {len(self.ops)} attempted, {len(ok)} succeeded; {moved_paths} paths, "
            f"{moved_bytes / 2**20:.0f} MiB moved; p50 {statistics.median(seconds):.1f} s, slowest "
            f"{seconds[-1]:.1f} s, over {SLOW_OP:.0f} s: {sum(s > SLOW_OP for s in seconds)}",
            *(f"  failed x{count}{' while the tracker was stopped' if frozen else ''}: {error}"
              for (error, frozen), count in failures.most_common()),
            f"5xx answered to Nix: {sum(self.http_5xx.values())} "
            f"({', '.join(f'{n} {k}' for k, n in sorted(self.http_5xx.items())) or 'none'}); 503 retries Nix "
            f"recovered from: {sum(op.retried_503 for op in ok)}, gave up after: "
            f"{sum(op.retried_503 + op.other_5xx for op in self.ops if not op.ok)}",
            f"corrupt paths valid in a store: {len(self.corrupt)}",
            *(f"  {entry}" for entry in self.corrupt),
        ]
        lines.append(f"narinfo misses asked of the Nix hosts' daemons: {dict(self.miss_answers)}")
        for where, seconds in sorted(self.misses.items()):
            if seconds:
                lines.append(f"  {where}: {len(seconds)}, p50 {statistics.median(seconds) * 1000:.1f} ms, "
                             f"p99 {_p99(seconds) * 1000:.0f} ms, max {max(seconds) * 1000:.0f} ms")
        lines.append("daemons never killed: RSS MiB and open files at the start, the most, and the end")
        for name, samples in sorted(self.usage.items()):
            start, end = samples[0], samples[-1]
            lines.append(f"  {name}: RSS {start.rss_kib / 1024:.1f}, {max(u.rss_kib for u in samples) / 1024:.1f}, "
                         f"{end.rss_kib / 1024:.1f} ({end.rss_kib / start.rss_kib - 1:+.0%}); files {start.files}, "
                         f"{max(u.files for u in samples)}, {end.files} ({end.files / start.files - 1:+.0%})")
        lines.append(f"ERROR lines: {sum(group.count for group in self.errors.values())}")
        for (logger, event), group in sorted(self.errors.items()):
            lines.append(f"  x{group.count} {logger}: {group.explanation or 'UNEXPLAINED: ' + event}")
            lines.append(f"      e.g. {group.example[:300]}")
        return lines


class Soak:
    def __init__(self, root: Path, tops: list[str], settings: Settings, db: Path | str | None = None) -> None:
        self.root, self.tops, self.settings = root, tops, settings
        self.closures = [{p: info["narSize"] for p, info in path_info(top, recursive=True).items()} for top in tops]
        self.cluster = SecretKey.generate("soak-fleet-1")
        write_secret(root / "cluster.sec", self.cluster.to_text())
        self.ops: list[Op] = []
        self.corrupt: list[str] = []  # found right after an op
        self.faults: Counter[str] = Counter()
        self.started = time.monotonic()
        self.frozen = (0.0, 0.0)
        self.peers: list[subprocess.Popen] = []  # the liar and the mute peer
        self.rngs = {f"h{i}": random.Random(f"{settings.seed}-h{i}") for i in range(settings.hosts)}
        self.fleet = fleet = NsFleet(root, subnet="10.236.0")
        try:
            lan = fleet.net.add_switch("lan")
            half = settings.hosts // 2
            self.roles = {f"h{i}": role for i, role in enumerate(LAN_ROLES[:half] + WAN_ROLES[:settings.hosts - half])}
            for index, name in enumerate(self.roles):
                host = fleet.add_host(name)
                if index < half:
                    fleet.net.plug(host, lan, f"10.236.1.{index + 2}")
            self.lan = set(list(self.roles)[:half])
            self.holdings = self._assign(random.Random(settings.seed))
            self._fill_stores()
            fleet.start_tracker(db)
            for name in self.named(*DAEMONS):
                fleet.start(name, *self._flags(name))
            self._start_bad_peers()  # while the daemons start
            for name in self.named(*DAEMONS):
                fleet.wait_healthy(name)
            for name in self.named("shaped"):
                fleet.hosts[name].shape(SHAPED_RATE)
        except BaseException:
            self.close()
            raise

    def named(self, *roles: str) -> list[str]:
        return [name for name, role in self.roles.items() if role in roles]

    def _assign(self, rng: random.Random) -> dict[str, set[int]]:
        """Each closure to two or three daemons, one at least never killed; each Nix host lacks half."""
        daemons, count = self.named(*DAEMONS), len(self.tops)
        while True:
            holders = [set(rng.sample(daemons, rng.choice((2, 3)))) for _ in range(count)]
            if (all(any(self.roles[h] != "victim" for h in held) for held in holders)
                    and all(sum(name not in held for held in holders) >= count // 2 for name in self.named(*NIX))):
                return {name: {c for c, held in enumerate(holders) if name in held} for name in daemons}

    def _fill_stores(self) -> None:
        """Every closure signed by the fleet key in a source store, then each host's share copied from it."""
        source = self.root / "source"
        nix("copy", "--no-check-sigs", "--to", str(source), *self.tops)
        nix("store", "sign", "--store", str(source), "--key-file", str(self.root / "cluster.sec"), "-r", *self.tops)

        def fill(name: str) -> None:
            run("nix-store", "--store", str(self.fleet.store(name)), "--init")
            if held := [self.tops[c] for c in sorted(self.holdings[name])]:
                nix("copy", "--no-check-sigs", "--from", str(source), "--to", str(self.fleet.store(name)), *held)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(fill, self.holdings))

    def _flags(self, name: str) -> list[str]:
        flags = ["--trusted-public-keys", self.cluster.public.to_text(), "--upstream", "none",
                 "--split-threshold", "32M"]
        if self.roles[name] in NIX:
            flags.append("--access-log")  # every answer to Nix, for the 5xx count
        if name in self.lan:
            return [*flags, "--lan-interface", self.fleet.hosts[name].interfaces[-1]]
        return [*flags, "--no-lan"]

    def _start_bad_peers(self) -> None:
        """The liar (genuine narinfo, NARs with a byte flipped in every MiB) and the mute peer, both claiming
        every path."""
        export = self.root / "export"
        nix("copy", "--from", str(self.root / "source"), "--to", f"file://{export}?compression=none", *self.tops)
        narinfo, nars = {}, {}
        for file in export.glob("*.narinfo"):
            text = file.read_text()
            narinfo[file.stem] = text
            nar = export / NarInfo.parse(text).url
            tampered = bytearray(nar.read_bytes())
            for position in range(len(tampered) // 2 % MIB, len(tampered), MIB):  # wrong in any piece it may send
                tampered[position] ^= 1
            nar.write_bytes(tampered)
            nars[file.stem] = str(nar)
        for role in ("liar", "mute"):
            for name in self.named(role):
                peer = liar.start(self.root, self.fleet.tracker_url, name, narinfo, nars if role == "liar" else {},
                                  self.fleet.hosts[name].command(), bind="0.0.0.0:12305", mute=role == "mute")
                threading.Thread(target=self._drain, args=(peer, role), daemon=True).start()
                self.peers.append(peer)

    def _drain(self, peer: subprocess.Popen, role: str) -> None:
        for line in peer.stdout:
            if line.startswith("nar "):
                self.faults[f"NARs asked of the {role}"] += 1

    def run(self) -> Report:
        started = self.started = time.monotonic()
        probes = {name: self._probe(name) for name in self.named(*NIX)}
        self._load(self.settings.warm_up)
        time.sleep(QUIET)
        load: list[float] = []
        usage: dict[str, list[Usage]] = {name: [] for name in self.named("client", "holder", "shaped")}
        self._load(self.settings.seconds, lambda stop: self._sample(stop, load, usage), self._killer,
                   lambda stop: self._tracker_faults())
        for probe in probes.values():
            probe.terminate()
            probe.wait()
        time.sleep(QUIET)
        for name, samples in usage.items():
            samples.append(Usage.of(self.fleet.daemons[name].pid))
        misses, answers = self._misses()
        return Report(self.settings, "PostgreSQL" if "postgresql" in str(self.fleet.tracker_db) else "SQLite",
                      list(self.ops), time.monotonic() - started, self._http_5xx(), misses, answers, usage,
                      self._corrupt(), self._errors(), self.faults, load, self.frozen)

    def _load(self, seconds: float, *beside: Callable[[threading.Event], None]) -> None:
        """Nix on every Nix host, one op after another, for `seconds` (one op each at least), with the jobs
        `beside` running until then too (each is given the event that says when)."""
        stop = threading.Event()
        failed: list[BaseException] = []

        def job(target: Callable[[threading.Event], None]) -> threading.Thread:
            def run() -> None:
                try:
                    target(stop)
                except BaseException as error:  # the harness broke: the soak must not go on without it
                    failed.append(error)
                    stop.set()
            return threading.Thread(target=run)

        jobs = [job(target) for target in beside]  # first: the sampler's start is quiet
        jobs += [job(lambda stop, name=name: self._client(name, stop)) for name in self.named(*NIX)]
        for thread in jobs:
            thread.start()
        stop.wait(seconds)
        stop.set()
        for thread in jobs:
            thread.join()
        if failed:
            raise failed[0]

    def _sample(self, stop: threading.Event, load: list[float], usage: dict[str, list[Usage]]) -> None:
        """The machine's load and the steady daemons' RSS and open files, now and every 10 s until `stop`."""
        while True:
            load.append(os.getloadavg()[0])
            for name, samples in usage.items():
                samples.append(Usage.of(self.fleet.daemons[name].pid))
            if stop.wait(10):
                return

    def _client(self, name: str, stop: threading.Event) -> None:
        while True:
            self._op(name, self.rngs[name])
            if stop.is_set():
                return

    def _op(self, name: str, rng: random.Random) -> None:
        """Substitute a closure the host does not hold; verify what came, then delete it again."""
        host, store = self.fleet.hosts[name], str(self.fleet.store(name))
        closure = rng.choice([c for c in range(len(self.tops)) if c not in self.holdings[name]])
        missing = _invalid(store, list(self.closures[closure]))
        keys = f"{self.fleet.keys[name].public.to_text()} {self.cluster.public.to_text()}"
        started = time.monotonic()
        try:
            result = subprocess.run(host.command(
                "env", f"XDG_CACHE_HOME={self.fleet.home(name) / 'xdg'}", "nix-store", "--store", store, "--realise",
                self.tops[closure], "--option", "substituters", DAEMON, "--option", "trusted-public-keys", keys,
                "--option", "narinfo-cache-negative-ttl", "0"), capture_output=True, text=True, timeout=OP_TIMEOUT)
            ok, stderr = result.returncode == 0, result.stderr
        except subprocess.TimeoutExpired as timeout:
            ok, stderr = False, f"{timeout.stderr or ''}\nerror: timed out after {OP_TIMEOUT:.0f} s"
        seconds = time.monotonic() - started
        with open(self.fleet.home(name) / "nix.log", "a") as log:
            log.write(f"== closure {closure} ok={ok} seconds={seconds:.1f}\n{stderr}\n")
        arrived = sorted(set(missing) - set(_invalid(store, missing)))
        self.ops.append(Op(
            name, closure, started - self.started, seconds, ok, len(arrived),
            sum(self.closures[closure][p] for p in arrived), stderr.count("HTTP error 503"),
            len(re.findall(r"HTTP error 5(?!03)\d\d", stderr)),
            "" if ok else _why_failed(stderr)))
        if arrived:
            self.corrupt += [f"{name} {path}" for path in _verify(store, arrived, keys)]
            nix("store", "delete", "--store", store, *arrived)

    def _killer(self, stop: threading.Event) -> None:
        rng = random.Random(self.settings.seed)
        victims = self.named("victim")
        while victims and not stop.wait(rng.uniform(0.5, 1.5) * self.settings.kill_every):
            victim = rng.choice(victims)
            self.fleet.kill(victim)
            time.sleep(rng.uniform(0, 2))
            self.fleet.start(victim, *self._flags(victim))
            self.faults["daemon kills"] += 1

    def _tracker_faults(self) -> None:
        """At a quarter of the time the tracker is killed and restarted; at half, stopped for `freeze`."""
        seconds = self.settings.seconds
        time.sleep(seconds / 4)
        self.fleet.kill_tracker()
        self.fleet.start_tracker()
        self.faults["tracker restarts"] += 1
        time.sleep(seconds / 4)
        self.fleet.freeze_tracker(True)
        frozen = time.monotonic() - self.started
        try:
            time.sleep(self.settings.freeze)
        finally:
            self.fleet.freeze_tracker(False)
            self.frozen = (frozen, time.monotonic() - self.started)
        self.faults[f"tracker stops of {self.settings.freeze:.0f} s"] += 1

    def _probe(self, name: str) -> subprocess.Popen:
        """curl asking the host's daemon for narinfo of random paths nobody has, at a steady rate."""
        rng = random.Random(name)
        count = int((self.settings.warm_up + self.settings.seconds + 120) * self.settings.misses_per_second)
        lines = [f'url = "{DAEMON}/{"".join(rng.choices(nix32.ALPHABET, k=32))}.narinfo"\noutput = "/dev/null"'
                 for _ in range(count)]
        config = self.fleet.home(name) / "misses.curl"
        config.write_text("\n".join(lines) + "\n")
        return self.fleet.hosts[name].start(
            ["curl", "-s", "--rate", f"{self.settings.misses_per_second}/s",  # stderr: unbuffered, nothing lost
             "-w", "%{stderr}%{http_code} %{time_total}\n",
             "-K", str(config)], self.fleet.home(name) / "misses.log")

    def _misses(self) -> tuple[dict[str, list[float]], Counter[str]]:
        seconds: dict[str, list[float]] = {"on the LAN": [], "tracker only": []}
        answers: Counter[str] = Counter()
        for name in self.named(*NIX):
            for line in (self.fleet.home(name) / "misses.log").read_text().splitlines():
                status, took = line.split()
                answers[status] += 1
                if status == "404":
                    seconds["on the LAN" if name in self.lan else "tracker only"].append(float(took))
        return seconds, answers

    def _http_5xx(self) -> Counter[str]:
        answered = Counter()
        for name in self.named(*NIX):
            for match in re.finditer(r'uvicorn\.access: \S+ - "\w+ /(\S*?)[?"\s].*" (5\d\d)', self.fleet.log(name)):
                route = "nar" if match[1].startswith("nar/") else "narinfo" if ".narinfo" in match[1] else match[1]
                answered[f"{match[2]} {route}"] += 1
        return answered

    def _corrupt(self) -> list[str]:
        """Paths found corrupt right after their op, and now in any daemon's store."""
        corrupt = list(self.corrupt)
        for name in self.named(*DAEMONS):
            keys = f"{self.fleet.keys[name].public.to_text()} {self.cluster.public.to_text()}"
            corrupt += [f"{name} {path}" for path in _verify(str(self.fleet.store(name)), ["--all"], keys)]
        return corrupt

    def _errors(self) -> dict[tuple[str, str], ErrorGroup]:
        """ERROR lines of every daemon and the tracker, grouped by what explains them (or by logger and event)."""
        found: dict[tuple[str, str], list[str]] = {}
        explanations: dict[tuple[str, str], str] = {}
        logs = [self.root / "tracker.log", *(self.fleet.home(name) / "peerix.log" for name in self.named(*DAEMONS))]
        for log in logs:
            for line in log.read_text(errors="replace").splitlines():
                if not (match := re.match(r"\S+ ERROR (\S+): (.*)", line)):
                    continue
                logger, message = match[1], match[2]
                known = next(((pattern, why) for name, pattern, why in EXPLAINED
                              if name == logger and re.search(pattern, message)), None)
                key = (logger, known[0] if known else re.split(r" \w+=|: ", message, maxsplit=1)[0])
                if known:
                    explanations[key] = known[1]
                found.setdefault(key, []).append(f"{log.parent.name}: {line}")
        return {key: ErrorGroup(len(lines), lines[0], explanations.get(key)) for key, lines in found.items()}

    def close(self) -> None:
        for peer in self.peers:
            peer.terminate()
        self.fleet.close()
        for peer in self.peers:
            peer.wait(10)


def build(closures: int, seed: str) -> list[str]:
    """The top paths of the overlapping closures, built in the root store (cached by Nix after once)."""
    out = run("nix-build", str(HERE / "nix" / "soak.nix"), "--no-out-link", "--argstr", "seed", seed,
              "--arg", "closures", str(closures)).stdout.decode()
    return out.split()


def _invalid(store: str, paths: list[str]) -> list[str]:
    if not paths:
        return []
    result = run("nix-store", "--store", store, "--check-validity", "--print-invalid", *paths)
    return result.stdout.decode().split()


def _verify(store: str, paths: list[str], keys: str) -> list[str]:
    """Paths whose contents do not match their NarHash (`nix store verify`)."""
    result = nix("store", "verify", "--store", store, "--sigs-needed", "1", "--trusted-public-keys", keys, *paths,
                 check=False)
    return re.findall(r"path '(\S+)' was modified", result.stderr.decode())


def _why_failed(stderr: str) -> str:
    """What made Nix fail, the same for two failures of the same kind: its first error but "build of X
    failed" (which follows any other), else its own words for a narinfo it was answered 404."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:") and "error: build of" not in line]
    why = errors[0] if errors else ("don't know how to build (a narinfo was a 404)"
                                    if "don't know how to build" in stderr else stderr.strip()[-200:])
    return re.sub(r"'[^']*'", "'...'", why)[:200]


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]

