"""`peerix fetch`: substitute paths (with their closures) through the local daemon, with progress.

Nix does the work (`nix-store --realise`); this walks the closure through the daemon's narinfo to
know what is missing and how big it is, and follows the daemon's NAR counter while Nix runs.
"""

import subprocess
from pathlib import Path

import httpx

from ..common.units import counted
from ..nix.narinfo import NarInfo, NarInfoError
from .progress import Progress

_NAR_BYTES = 'peerix_http_sent_bytes_total{route="nar"}'


class FetchError(Exception):
    pass


def _valid(path: str, store: list[str]) -> bool:
    return subprocess.run(["nix-store", *store, "--check-validity", path], capture_output=True).returncode == 0


def missing_closure(http: httpx.Client, paths: list[str], store: list[str]) -> dict[str, int]:
    """{path: NarSize} of what the closure of `paths` lacks locally, from the daemon's narinfo."""
    missing: dict[str, int] = {}
    queue, seen = list(paths), set()
    while queue:
        path = queue.pop()
        if path in seen or _valid(path, store):
            continue
        seen.add(path)
        name = Path(path).name
        answer = http.get(f"/{name[:32]}.narinfo")
        if answer.status_code != 200:
            raise FetchError(f"neither this host nor a peer has {path} (the daemon answered {answer.status_code})")
        try:
            info = NarInfo.parse(answer.text)
        except NarInfoError as error:
            raise FetchError(f"bad narinfo for {path}: {error}") from None
        missing[path] = info.nar_size
        queue += [ref.full(info.store_dir) for ref in info.references]
    return missing


def nar_bytes_sent(http: httpx.Client) -> int:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(_NAR_BYTES):
            return int(float(line.split()[-1]))
    return 0


def fetch(url: str, paths: list[str], store_root: str | None = None) -> None:
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=30) as http:
            _fetch(http, url, paths, store_root)
    except httpx.HTTPError as error:
        raise FetchError(f"cannot ask the daemon at {url}: {error}") from None


def _fetch(http: httpx.Client, url: str, paths: list[str], store_root: str | None) -> None:
    store = ["--store", store_root] if store_root else []
    missing = missing_closure(http, paths, store)
    progress = Progress(sum(missing.values()), f"fetching {counted(len(missing), 'path')}")
    # A chroot store is the tests' and the curious's: the daemon alone, trusted by its key.
    key = http.get("/health").json().get("signing_key") if store_root else None
    substituters = ["--option", "substituters", url, "--option", "trusted-public-keys", key] if key else []
    before = nar_bytes_sent(http)
    nix = subprocess.Popen(["nix-store", *store, "--realise", *paths, *substituters],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while nix.poll() is None:
            progress.update(nar_bytes_sent(http) - before)
            try:
                nix.wait(0.1)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if nix.poll() is None:  # the daemon stopped answering: so does this command, and its Nix
            nix.kill()
            nix.wait()
    done = nar_bytes_sent(http) - before
    if nix.returncode != 0:
        raise FetchError(f"nix-store --realise failed:\n{nix.stderr.read().strip()}")
    progress.finish(done, f"fetched {counted(len(missing), 'path')}")
