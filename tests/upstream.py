"""A stand-in for cache.nixos.org: Debian's nginx serving a `nix copy --to file://` cache of test
paths, xz-compressed and signed by an "upstream" key, with an access log that tells how often each
NAR was fetched and how many bytes it cost."""

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx

from peerix.common.secrets import write_secret
from peerix.nix.signing import SecretKey

from conftest import free_port
from nixtools import nix


class UpstreamCache:
    def __init__(self, root: Path, *paths: str, compression: str = "xz", address: str = "127.0.0.1",
                 command: list[str] | None = None) -> None:
        """The cache of `paths` (with their closures) served on `address` (in a test namespace when
        `command` prefixes the nginx command line, e.g. `ip netns exec NS`)."""
        self.root = root
        self.key = SecretKey.generate("upstream.test-1")
        root.mkdir(parents=True, exist_ok=True)
        write_secret(root / "upstream.sec", self.key.to_text())
        self.cache = root / "cache"
        if paths:
            self.add(*paths, compression=compression)
        self.port = free_port()
        self.url = f"http://{address}:{self.port}"
        (root / "tmp").mkdir(exist_ok=True)
        user = "user root;" if os.geteuid() == 0 else ""
        (root / "nginx.conf").write_text(f"""
daemon off; {user} worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{
  log_format counted '$request_uri $status $body_bytes_sent';
  access_log {root}/access.log counted;
  sendfile on;
  client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp; fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
  server {{ listen {address}:{self.port}; root {self.cache}; }}
}}
""")
        self.process = subprocess.Popen([*(command or []), "nginx", "-c", str(root / "nginx.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if command is None:
            deadline = time.monotonic() + 10
            while not self._answers():
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"nginx did not start: {(root / 'error.log').read_text()}")
                time.sleep(0.05)

    def add(self, *paths: str, compression: str = "xz") -> None:
        nix("copy", "--to", f"file://{self.cache}?compression={compression}&secret-key={self.root / 'upstream.sec'}",
            *paths)
        # As cache.nixos.org says it (without a Priority, Nix would rank this cache first, at 0).
        (self.cache / "nix-cache-info").write_text("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")

    def _answers(self) -> bool:
        try:
            return httpx.get(self.url + "/nix-cache-info", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def public_key(self) -> str:
        return self.key.public.to_text()

    def nar_fetches(self) -> Counter[str]:
        """How often each NAR file was sent whole (status 200)."""
        log = self.root / "access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return Counter(uri for uri, status, _ in (line.split() for line in lines)
                       if uri.startswith("/nar/") and status == "200")

    def bytes_sent(self) -> int:
        """NAR bytes sent in all (responses cut short count what was sent)."""
        log = self.root / "access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return sum(int(sent) for uri, _, sent in (line.split() for line in lines) if uri.startswith("/nar/"))

    def file_bytes(self) -> int:
        """The size of every NAR file the cache holds: what fetching each once costs."""
        return sum(path.stat().st_size for path in (self.cache / "nar").iterdir())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
