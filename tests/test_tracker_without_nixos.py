"""A tracker on a host without NixOS, as the README sets it up: tokens made by `peerix-tracker token`,
the command line of contrib/peerix-tracker.service, TLS by nginx with contrib/nginx-tracker.conf.
Daemons announce, look up and fetch through the proxy; the dashboard stays private behind it."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from netns import Host, Network, wait_for, why_no_netns

from peerix.cli.localfleet import LocalFleet, wait_until

from conftest import ROOT, free_port, requires_nix
from nixtools import run

CONTRIB = ROOT / "contrib"


def tracker_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracker.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def test_token_makes_and_rotates_a_private_token_file(tmp_path: Path) -> None:
    tokens = tmp_path / "etc/peerix/tracker.tokens"
    first, second = (tracker_cli("token", str(tokens)) for _ in range(2))
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    assert tokens.read_text().splitlines() == [first.stdout.strip(), second.stdout.strip()]
    assert len(first.stdout.strip()) == 32 and first.stdout != second.stdout
    assert tokens.stat().st_mode & 0o777 == 0o600 and tokens.parent.stat().st_mode & 0o777 == 0o700
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}\n", tracker_cli("token").stdout)  # just printed
    tokens.chmod(0o644)
    exposed = tracker_cli("token", str(tokens))
    assert exposed.returncode == 2 and "readable by everyone" in exposed.stderr


def unit(name: str) -> dict[str, list[str]]:
    """The [Service] settings of a unit file: key -> values (repeated keys in order)."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in (CONTRIB / name).read_text().replace("\\\n", " ").splitlines():  # continued lines joined
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_unit_file_is_valid(tmp_path: Path) -> None:
    text = (CONTRIB / "peerix-tracker.service").read_text()
    (tmp_path / "peerix-tracker.service").write_text(text.replace("/opt/peerix/bin/peerix-tracker", "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "peerix-tracker.service")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def tracker_command(etc: Path, tmp_path: Path, port: int) -> list[str]:
    """The unit's command line, with its credentials and state directory where systemd would put them."""
    service = unit("peerix-tracker.service")
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    for credential in service["LoadCredential"]:
        name, _, source = credential.partition(":")
        shutil.copy(source.replace("/etc/peerix/", f"{etc}/"), credentials / name)
    [command] = service["ExecStart"]
    words = shlex.split(command.replace("%d", str(credentials)).replace("/var/lib/", f"{tmp_path}/state/")
                        .replace("127.0.0.1:12305", f"127.0.0.1:{port}"))
    assert words[0] == "/opt/peerix/bin/peerix-tracker"
    return [sys.executable, "-m", "tracker.cli", *words[1:]]


def nginx(tmp_path: Path, address: str, port: int, tracker_port: int, on: Host | None = None
          ) -> tuple[list[str], Path]:
    """nginx running the example configuration with a self-signed certificate for `address` in place of a
    real one, listening on `address:port` (of the test host `on`); the command, and the certificate."""
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", "1", "-subj", f"/CN={address}", "-addext", f"subjectAltName=IP:{address}",
        "-keyout", str(key), "-out", str(certificate))
    site = (CONTRIB / "nginx-tracker.conf").read_text()
    site = re.sub(r"ssl_certificate .*;", f"ssl_certificate {certificate};", site)
    site = re.sub(r"ssl_certificate_key .*;", f"ssl_certificate_key {key};", site)
    site = site.replace("listen 443 ", f"listen {address}:{port} ").replace("listen [::]:443 ", f"listen [::1]:{port} ")
    (tmp_path / "site.conf").write_text(site.replace("127.0.0.1:12305", f"127.0.0.1:{tracker_port}"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off; user root; worker_processes 1; pid {tmp_path}/nginx.pid; error_log {tmp_path}/nginx.log;\n"
        "events {}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;\n"
        f"  include {tmp_path}/site.conf; }}\n")
    command = ["nginx", "-c", str(tmp_path / "nginx.conf")]
    within = on.command if on else lambda *args: list(args)
    run(*within(*command, "-t", "-q"))
    return within(*command), certificate


needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("openssl") is None,
                                 reason="needs nginx and openssl")


@requires_nix
@needs_nginx
def test_daemons_use_the_tracker_through_the_tls_proxy(tmp_path: Path, closure: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc/peerix"
    for name in ("tracker.tokens", "tracker-admin.tokens"):
        assert tracker_cli("token", str(etc / name)).returncode == 0
    network_token = (etc / "tracker.tokens").read_text().split()[0]
    tracker_port, proxy_port = free_port(), free_port()
    fleet = LocalFleet(tmp_path)
    tracker = fleet.spawn(tracker_command(etc, tmp_path, tracker_port), tmp_path / "tracker.log")
    try:
        wait_until(lambda: tracker.poll() is not None or reachable(f"http://127.0.0.1:{tracker_port}/health"),
                   "the tracker")
        assert tracker.poll() is None, (tmp_path / "tracker.log").read_text()
        assert (tmp_path / "state/peerix-tracker").stat().st_mode & 0o777 == 0o700  # made by the tracker
        command, certificate = nginx(tmp_path, "127.0.0.1", proxy_port, tracker_port)
        fleet.spawn(command, tmp_path / "nginx.out")
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # trusted by httpx here and in the daemons
        url = f"https://127.0.0.1:{proxy_port}"
        wait_until(lambda: reachable(url + "/health"), "nginx")

        # Daemons with the tracker's https URL and the network token.
        token_file = tmp_path / "tracker.token"
        token_file.write_text(network_token + "\n")
        token_file.chmod(0o600)
        fleet.tracker_urls = [url]
        a, c = fleet.host("a"), fleet.host("c")
        a.give(str(closure))
        for host in (a, c):
            host.start("--tracker-token-file", str(token_file))
        auth = {"authorization": f"Bearer {network_token}"}
        wait_until(lambda: a.peer_id in httpx.get(f"{url}/api/v1/lookup/{closure.name[:32]}", headers=auth).text,
                   "a's announce through the proxy")
        wait_until(lambda: c.peer_id in httpx.get(f"{url}/api/v1/members", headers=auth).text, "c's registration")
        # The fleet is closed (token membership). a fetched its member list before c registered, and its
        # next sync is 30 s away: c's first question makes a fetch the list again, and c is answered.
        assert "members=2" not in a.log
        c.realise(str(closure))
        assert "members=2" in a.log

        admin = tracker_cli("admin", "--url", url, "--token-file", str(etc / "tracker-admin.tokens"), "peers")
        assert admin.returncode == 0, admin.stderr
        assert {line.split()[0] for line in admin.stdout.splitlines()[1:]} == {"a", "c"}
    finally:
        fleet.close()


@needs_nginx
@pytest.mark.skipif(why_no_netns() is not None, reason=why_no_netns() or "")
def test_the_dashboard_stays_private_behind_the_proxy(tmp_path: Path) -> None:
    """A client elsewhere reaches the dashboard through the proxy: refused, since the proxy names it."""
    etc = tmp_path / "etc/peerix"
    for name in ("tracker.tokens", "tracker-admin.tokens"):
        assert tracker_cli("token", str(etc / name)).returncode == 0
    network = Network("10.234.0")
    try:
        server, client = network.add_host("server"), network.add_host("client")
        tracker_port = 12305
        server.start(tracker_command(etc, tmp_path, tracker_port), tmp_path / "tracker.log")
        command, certificate = nginx(tmp_path, server.addresses[0], 443, tracker_port, on=server)
        server.start(command[len(server.command()):], tmp_path / "nginx.out")
        url = f"https://{server.addresses[0]}"
        wait_for(lambda: client.run("curl", "-sf", "--cacert", str(certificate), url + "/health", check=False)
                 .returncode == 0)
        remote = client.run("curl", "-s", "-w", " %{http_code}", "--cacert", str(certificate), url + "/").stdout
        assert remote.endswith(" 403") and "dashboard_private" in remote, remote
        local = server.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{tracker_port}/")
        assert local.stdout == "200"  # on the tracker's own host, it is shown
    finally:
        network.close()


def reachable(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
