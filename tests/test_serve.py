"""`peerix serve` as a real process, with real Nix substituting from it."""

import socket
import time
from pathlib import Path

import httpx
import pytest

from peerix.nix.narinfo import NarInfo
from peerix.nix.signing import PublicKey, SecretKey, trusted_sigs

from conftest import offline, requires_nix
from nixtools import closure_of, copy_to, hash_part, nix, path_info, run

pytestmark = requires_nix


@pytest.fixture
def served(start_daemon, host_a: Path, keypair: tuple[Path, Path], tmp_path: Path):
    secret, _ = keypair
    return start_daemon("serve", "--store-root", str(host_a), "--sign-key-file", str(secret), "--priority", "25",
                        *offline(tmp_path / "state"))


def raw_request(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send the request line as written: clients like httpx would normalise `..` away."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_cache_info_and_health(served) -> None:
    info = httpx.get(served.url + "/nix-cache-info")
    assert info.status_code == 200
    assert info.text == "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 25\n"
    health = httpx.get(served.url + "/health").json()
    assert health["status"] == "ok" and health["database"] == "ok"
    assert health["paths"] == 3 and health["signing_key"].startswith("test-host-1:")


def test_narinfo_is_signed_and_keeps_signatures(served, host_a: Path, closure: Path, keypair, tmp_path: Path) -> None:
    other = SecretKey.generate("cluster-1")
    (tmp_path / "cluster.sec").write_text(other.to_text())
    nix("store", "sign", "--store", str(host_a), "--key-file", str(tmp_path / "cluster.sec"), str(closure))
    ours = PublicKey.parse(keypair[1].read_text())
    response = httpx.get(f"{served.url}/{hash_part(closure)}.narinfo")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/x-nix-narinfo")
    info = NarInfo.parse(response.text)
    assert info.store_path.full() == str(closure) and info.compression == "none"
    assert len(trusted_sigs(info, [ours, other.public])) == 2


def test_nix_store_verify_over_http(served, closure: Path, keypair) -> None:
    public = keypair[1].read_text()
    paths = closure_of(closure)
    assert len(paths) == 3
    nix("store", "verify", "--store", served.url, "--trusted-public-keys", public, "--sigs-needed", "1",
        "-r", str(closure))
    wrong = SecretKey.generate("test-host-1").public.to_text()
    result = nix("store", "verify", "--store", served.url, "--trusted-public-keys", wrong, "--sigs-needed", "1",
                 "-r", str(closure), check=False)
    assert result.returncode != 0 and b"untrusted" in result.stderr


def test_nix_copy_from_peerix(served, closure: Path, keypair, tmp_path: Path) -> None:
    client = tmp_path / "client"
    public = keypair[1].read_text()
    nix("copy", "--from", served.url, "--to", str(client), "--option", "trusted-public-keys", public, str(closure))
    copied = path_info(closure, store=str(client), recursive=True)
    assert sorted(copied) == closure_of(closure)
    nix("store", "verify", "--store", str(client), "-r", str(closure), "--trusted-public-keys", public,
        "--sigs-needed", "1")
    assert "nar complete" in served.log


def test_nix_store_realise_requires_our_signature(served, closure: Path, keypair, tmp_path: Path) -> None:
    public = keypair[1].read_text()
    common = ["--option", "substituters", served.url, "--option", "require-sigs", "true"]
    refused_store = tmp_path / "refused"
    wrong = SecretKey.generate("test-host-1").public.to_text()
    refused = run("nix-store", "--store", str(refused_store), "-r", str(closure), *common,
                  "--option", "trusted-public-keys", wrong, check=False)
    assert refused.returncode != 0
    assert not (refused_store / closure.relative_to("/")).exists()

    client = tmp_path / "client"
    run("nix-store", "--store", str(client), "-r", str(closure), *common, "--option", "trusted-public-keys", public)
    assert sorted(path_info(closure, store=str(client), recursive=True)) == closure_of(closure)
    assert (client / closure.relative_to("/") / "bin/app").read_text().startswith("#!/bin/sh")


def nar_target(served, path: Path) -> str:
    return "/" + NarInfo.parse(httpx.get(f"{served.url}/{hash_part(path)}.narinfo").text).url


def test_nar_and_head(served, closure: Path) -> None:
    target = nar_target(served, closure)
    nar = httpx.get(served.url + target)
    assert nar.status_code == 200 and nar.headers["content-type"] == "application/x-nix-nar"
    assert nar.content == run("nix-store", "--dump", str(closure)).stdout
    head = httpx.head(served.url + target)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(nar.content)
    narinfo_head = httpx.head(f"{served.url}/{hash_part(closure)}.narinfo")
    assert narinfo_head.status_code == 200 and narinfo_head.content == b""
    assert httpx.head(f"{served.url}/{'0' * 32}.narinfo").status_code == 404


def test_bad_input_gets_a_clear_4xx_fast(served, closure: Path) -> None:
    good = nar_target(served, closure)
    other_hash = "1" * 52
    cases = {
        f"/{'0' * 32}.narinfo": 404,  # well-formed, unknown
        "/eeee0000000000000000000000000000.narinfo": 400,  # e is not nix32
        "/short.narinfo": 400,
        f"/{hash_part(closure).upper()}.narinfo": 400,
        "/../../../etc/passwd": 404,
        "/nar/../../../../etc/passwd": 404,
        "/%2e%2e/%2e%2e/etc/passwd": 404,
        "/..%2f..%2f..%2fetc%2fpasswd.narinfo": 404,  # decodes to a path with slashes: no route
        "/nar/..%2f..%2fetc%2fpasswd.nar": 404,
        "/..%2e%2e.narinfo": 400,
        f"/nar/{other_hash}.nar?hash={hash_part(closure)}": 404,  # NarHash does not match the path
        good.split("?")[0]: 404,  # no ?hash=
        good.replace("?hash=", "?hash=../../"): 404,
        "/nar/notnix32.nar?hash=" + hash_part(closure): 400,
        "/nix-cache-info/../health": 404,
    }
    for target, status in cases.items():
        started = time.monotonic()
        got, body = raw_request(served.port, target)
        assert (got, target) == (status, target), body
        assert time.monotonic() - started < 0.5
        assert b"root:" not in body
    for method in ("POST", "PUT", "DELETE"):
        assert raw_request(served.port, f"/{hash_part(closure)}.narinfo", method)[0] == 405
    assert served.process.poll() is None
    metrics = httpx.get(served.url + "/metrics").text
    assert 'peerix_narinfo_lookups_total{result="invalid"}' in metrics
    assert 'status="5' not in metrics


def test_path_deleted_after_startup(served, host_a: Path, closure: Path) -> None:
    narinfo_url = f"{served.url}/{hash_part(closure)}.narinfo"
    target = nar_target(served, closure)
    run("nix-store", "--store", str(host_a), "--delete", str(closure))
    assert httpx.get(narinfo_url).status_code == 404
    assert httpx.get(served.url + target).status_code == 404


def test_files_missing_behind_the_database(served, host_a: Path, closure: Path) -> None:
    """The database still lists the path but its files are gone: 404, not a broken stream."""
    dep = next(p for p in closure_of(closure) if "peerix-test-data" in p)
    target = nar_target(served, Path(dep))
    real = host_a / dep.lstrip("/")
    real.chmod(0o644)
    real.unlink()
    assert httpx.get(f"{served.url}/{hash_part(dep)}.narinfo").status_code == 404
    assert httpx.get(served.url + target).status_code == 404


def test_metrics_count_requests(served, closure: Path) -> None:
    httpx.get(f"{served.url}/{hash_part(closure)}.narinfo")
    httpx.get(f"{served.url}/{'0' * 32}.narinfo")
    httpx.get(served.url + nar_target(served, closure))
    metrics = httpx.get(served.url + "/metrics").text
    assert 'peerix_narinfo_lookups_total{result="hit"} 2.0' in metrics
    assert 'peerix_narinfo_lookups_total{result="miss"} 1.0' in metrics
    assert 'peerix_http_requests_total{method="GET",route="narinfo",status="404"} 1.0' in metrics
    assert 'peerix_nar_transfers_total{outcome="complete"} 1.0' in metrics
    assert 'peerix_http_request_duration_seconds_bucket{le="0.0005",route="narinfo"}' in metrics


def test_client_leaving_mid_nar_is_logged_not_fatal(served, host_a: Path, big_path: Path) -> None:
    copy_to(host_a, big_path)
    with httpx.stream("GET", served.url + nar_target(served, big_path)) as response:
        assert response.status_code == 200
        next(response.iter_raw(4096))
    deadline = time.monotonic() + 5
    while 'peerix_nar_transfers_total{outcome="aborted"} 1.0' not in httpx.get(served.url + "/metrics").text:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.get(served.url + "/health").status_code == 200


def test_store_file_changed_behind_nix_cuts_the_nar_short(served, host_a: Path, closure: Path) -> None:
    """Files that no longer match the database: the response breaks off instead of lying."""
    lib = next(p for p in closure_of(closure) if "peerix-test-lib" in p)
    data = next(p for p in closure_of(closure) if "peerix-test-data" in p)
    for path, grow in ((lib, "lib/libfoo.so.1"), (data, "")):
        victim = host_a / path.lstrip("/") / grow if grow else host_a / path.lstrip("/")
        victim.chmod(0o644)
        with open(victim, "ab") as file:
            file.write(b"tampered")
        with pytest.raises(httpx.TransportError):
            httpx.get(served.url + nar_target(served, Path(path)))
    assert 'peerix_nar_transfers_total{outcome="failed"} 2.0' in httpx.get(served.url + "/metrics").text
    assert served.process.poll() is None


async def test_nar_under_a_server_without_zero_copy(host_a: Path, closure: Path) -> None:
    """Other ASGI servers lack the zero-copy extension: the same NAR comes through plain body chunks."""
    from peerix.http.app import CacheSettings, create_app
    from peerix.store.local import LocalStore
    from peerix.store.substituter import Substituter
    from peerix.telemetry.metrics import Metrics

    async with LocalStore(host_a) as local:
        substituter = Substituter(local, SecretKey.generate("k-1"))
        app = create_app(substituter, CacheSettings(), Metrics())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://peerix") as client:
            for path in closure_of(closure):
                info = NarInfo.parse((await client.get(f"/{hash_part(path)}.narinfo")).text)
                response = await client.get("/" + info.url)
                assert response.content == run("nix-store", "--dump", path).stdout
        substituter.close()


def test_pipelined_narinfos_answered_at_once_in_order(served, closure: Path) -> None:
    """A narinfo already looked up is written without an ASGI task: pipelined behind ones that wait for the
    database it keeps its place, and its bytes, headers and metrics are those of the task's answer."""
    known, unknown = hash_part(closure), "0" * 32
    asked = [("GET", known, ""), ("GET", known, ""), ("HEAD", known, ""), ("GET", unknown, ""), ("GET", known, ""),
             ("GET", known, "Connection: close\r\n")]
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        sock.sendall(b"".join(f"{method} /{h}.narinfo HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()
                              for method, h, extra in asked))
        stream = sock.makefile("rb")
        answers = []
        for method, _, _ in asked:
            status = int(stream.readline().split()[1])
            headers = dict(line.decode().rstrip("\r\n").lower().split(": ", 1)
                           for line in iter(stream.readline, b"\r\n"))
            headers.pop("date")  # to the second: may differ between answers
            body = stream.read(int(headers["content-length"])) if method == "GET" else b""
            answers.append((status, headers, body))
        assert stream.read() == b""  # closed after the last, as asked
    assert [status for status, _, _ in answers] == [200, 200, 200, 404, 200, 200]
    first, at_once = answers[0], answers[1]
    assert at_once == first and answers[4] == first and first[1]["content-type"] == "text/x-nix-narinfo; charset=utf-8"
    assert answers[2][1]["content-length"] == first[1]["content-length"]
    assert answers[5][1]["connection"] == "close" and answers[5][2] == first[2]
    metrics = httpx.get(served.url + "/metrics").text
    assert 'peerix_http_requests_total{method="GET",route="narinfo",status="200"} 4.0' in metrics
    assert 'peerix_http_requests_total{method="HEAD",route="narinfo",status="200"} 1.0' in metrics
    assert f'peerix_http_sent_bytes_total{{route="narinfo"}} {4 * len(first[2]) + len(answers[3][2])}.0' in metrics
    assert 'peerix_narinfo_lookups_total{result="hit"} 5.0' in metrics
