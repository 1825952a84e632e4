"""Who may ask what: the substituter answers trusted networks only; /store/ serves anyone, within policy."""

from pathlib import Path

import httpx
import pytest
from netns import Network, wait_for, why_no_netns

from peerix.nix.signing import SecretKey

from conftest import offline, requires_nix
from nixtools import closure_of, hash_part, nix

pytestmark = requires_nix

CLUSTER = SecretKey.generate("access-cluster-1")


def client_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=5)


@pytest.fixture
def signed_host(host_a: Path, closure: Path, tmp_path: Path) -> Path:
    """host A with its closure signed by the cluster key, except the app itself (a private build)."""
    (tmp_path / "cluster.sec").write_text(CLUSTER.to_text())
    deps = [p for p in closure_of(closure) if p != str(closure)]
    nix("store", "sign", "--store", str(host_a), "--key-file", str(tmp_path / "cluster.sec"), *deps)
    return host_a


def serve(start_daemon, root: Path, tmp_path: Path, *extra: str):
    return start_daemon("serve", "--store-root", str(root), *offline(tmp_path / "state"),
                        "--trusted-public-keys", CLUSTER.public.to_text(), "--serve", "signed", *extra)


@pytest.mark.skipif(why_no_netns() is not None, reason=why_no_netns() or "")
def test_non_loopback_clients_are_refused_by_default(signed_host: Path, closure: Path, tmp_path: Path) -> None:
    network = Network("10.235.0")
    try:
        server, client = network.add_host("server"), network.add_host("client")
        server.peerix("serve", "--store-root", str(signed_host), *offline(tmp_path / "state"),
                      "--listen", "0.0.0.0:12304", log=tmp_path / "peerix.log")
        lib = next(p for p in closure_of(closure) if "peerix-test-lib" in p)
        narinfo = f"{hash_part(lib)}.narinfo"
        wait_for(lambda: server.run("curl", "-sf", f"http://127.0.0.1:12304/{narinfo}", check=False).returncode == 0)
        remote = client.run("curl", "-s", "-w", " %{http_code}", f"http://{server.addresses[0]}:12304/{narinfo}")
        assert remote.stdout.endswith(" 403") and client.addresses[0] in remote.stdout, remote.stdout
    finally:
        network.close()


def test_trusted_networks_decide_and_store_serves_anyone_within_policy(start_daemon, signed_host: Path,
                                                                        closure: Path, tmp_path: Path) -> None:
    daemon = serve(start_daemon, signed_host, tmp_path, "--trusted-networks", "127.0.0.1/32")
    lib = next(p for p in closure_of(closure) if "peerix-test-lib" in p)
    with client_from("127.0.0.2") as stranger, client_from("127.0.0.1") as local:
        refused = stranger.get(f"{daemon.url}/{hash_part(lib)}.narinfo")
        assert refused.status_code == 403 and "trusted networks" in refused.text
        assert stranger.get(f"{daemon.url}/api/v1/peers").status_code == 403
        assert local.get(f"{daemon.url}/{hash_part(lib)}.narinfo").status_code == 200
        # /store/: the signed dependency is shared, the unsigned app is not, unknown paths are misses
        assert stranger.get(f"{daemon.url}/store/{hash_part(lib)}.narinfo").status_code == 200
        private = stranger.get(f"{daemon.url}/store/{hash_part(closure)}.narinfo")
        assert private.status_code == 403 and "not shared" in private.text
        assert stranger.get(f"{daemon.url}/store/{'0' * 32}.narinfo").status_code == 404
        assert stranger.get(f"{daemon.url}/health").status_code == 200
    metrics = httpx.get(daemon.url + "/metrics").text
    assert 'peerix_http_refused_total{reason="client"} 2.0' in metrics
    assert 'peerix_http_refused_total{reason="policy"} 1.0' in metrics

    opened = serve(start_daemon, signed_host, tmp_path / "2", "--trusted-networks", "127.0.0.1/32",
                   "--trusted-networks", "127.0.0.2/32")
    with client_from("127.0.0.2") as friend:
        assert friend.get(f"{opened.url}/{hash_part(lib)}.narinfo").status_code == 200


def test_nix_substitutes_from_store_prefix(start_daemon, signed_host: Path, closure: Path, keypair,
                                           tmp_path: Path) -> None:
    daemon = serve(start_daemon, signed_host, tmp_path, "--sign-key-file", str(keypair[0]))
    lib = next(p for p in closure_of(closure) if "peerix-test-lib" in p)
    client = tmp_path / "client"
    nix("copy", "--from", f"{daemon.url}/store", "--to", str(client), "--option", "trusted-public-keys",
        keypair[1].read_text(), lib)
    refused = nix("copy", "--from", f"{daemon.url}/store", "--to", str(client), "--option", "trusted-public-keys",
                  keypair[1].read_text(), str(closure), check=False)
    assert refused.returncode != 0
