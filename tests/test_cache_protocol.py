"""The rest of Nix's binary-cache protocol, end to end against real Nix 2.8: byte ranges, `.ls`
listings, build logs and realisations, from a host's own store and from its peers (a real tracker,
daemons with chroot stores, iroh on loopback)."""

import hashlib
import json
import re
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
from test_peers import FAST, host, named, start_liar

from peerix.cli.localfleet import Host, LocalFleet, wait_until
from peerix.nix.narinfo import NarInfo
from peerix.nix.realisation import Realisation
from peerix.nix.signing import SecretKey, sign_info
from peerix.swarm.derivations import realisation_key

from conftest import requires_nix
from nixtools import HERE, build, closure_of, hash_part, nix, run

pytestmark = requires_nix

CA = ("--extra-experimental-features", "nix-command ca-derivations")
SANDBOX = ("--option", "sandbox-paths", "/bin /usr /lib /lib64")  # building straight into a chroot store


@pytest.fixture(scope="module")
def smallfiles() -> Path:
    return build(HERE / "nix" / "smallfiles.nix", seed="cache-protocol")


def nar_url(base: str, path: Path | str) -> str:
    info = NarInfo.parse(httpx.get(f"{base}/{hash_part(path)}.narinfo", timeout=30).text)
    return f"{base}/{info.url}"


def curl_range(url: str, spec: str, out: Path) -> tuple[int, dict[str, str]]:
    """`curl -r SPEC`: the status and headers; the body lands in `out`."""
    result = run("curl", "-s", "-r", spec, "-o", str(out), "-D", "-", "-w", "%{http_code}", url).stdout.decode()
    *lines, status = result.replace("\r", "").split("\n")
    headers = dict(line.lower().split(": ", 1) for line in lines if ": " in line)
    return int(status), headers


def check_ranges(base: str, path: Path, tmp_path: Path) -> None:
    """The first byte, the last byte, a middle slice and an unsatisfiable range, each compared with
    the same bytes of `nix-store --dump`."""
    dump = run("nix-store", "--dump", str(path)).stdout
    size, url, body = len(dump), nar_url(base, path), tmp_path / "body"
    last, middle = (size - 1, size), (size // 3, size // 2 + 1)
    for spec, (start, end) in (("0-0", (0, 1)), (f"{size - 1}-{size - 1}", last), ("-1", last),
                               (f"{size // 3}-{size // 2}", middle), (f"{size - 10}-", (size - 10, size))):
        status, headers = curl_range(url, spec, body)
        assert status == 206, (spec, status)
        assert headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
        assert body.read_bytes() == dump[start:end], spec
    status, headers = curl_range(url, f"{size}-", body)
    assert status == 416 and headers["content-range"] == f"bytes */{size}"
    status, headers = curl_range(url, "0-", body)  # the whole NAR as a range
    assert status == 206 and body.read_bytes() == dump
    head = httpx.head(url, timeout=30)
    assert head.status_code == 200 and head.headers["accept-ranges"] == "bytes"
    assert int(head.headers["content-length"]) == size
    head = httpx.head(url, headers={"range": "bytes=-1"}, timeout=30)
    assert head.status_code == 206 and head.headers["content-range"] == f"bytes {size - 1}-{size - 1}/{size}"
    assert head.headers["content-length"] == "1"
    for bad in ("bytes=x-y", "bytes=5-2", "bytes=0-1,4-5", "lines=1-2"):
        answer = httpx.get(url, headers={"range": bad}, timeout=30)
        assert answer.status_code == 400 and "Range" in answer.text, bad


def test_ranges_of_local_and_peer_nars_are_the_bytes_of_nix_store_dump(fleet: LocalFleet, closure: Path,
                                                                       tmp_path: Path) -> None:
    a, c = host(fleet, "a", closure), host(fleet, "c")
    for path in map(Path, closure_of(closure)):
        check_ranges(a.url, path, tmp_path)  # from A's own store
        check_ranges(c.url, path, tmp_path)  # from A through C
    assert not list(c.store.glob("nix/store/*-peerix-test-*"))  # C answered from the peer, holding nothing
    assert "fetched nar range" in c.log
    status, _ = curl_range(nar_url(a.url, closure).replace(a.url, f"{a.url}/store"), "0-0", tmp_path / "b")
    assert status == 206  # /store/ serves ranges too


def test_a_transfer_cut_at_half_is_completed_by_a_range(fleet: LocalFleet, big_path: Path, tmp_path: Path) -> None:
    a, c = host(fleet, "a", big_path), host(fleet, "c")
    info = NarInfo.parse(httpx.get(f"{c.url}/{hash_part(big_path)}.narinfo").text)
    url, half = f"{c.url}/{info.url}", info.nar_size // 2
    received = bytearray()
    with httpx.stream("GET", url, timeout=30) as response:
        assert response.headers["accept-ranges"] == "bytes"
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) >= half:
                break  # the client goes away in the middle
    status, headers = curl_range(url, f"{len(received)}-", tmp_path / "rest")
    assert status == 206 and headers["content-range"] == f"bytes {len(received)}-{info.nar_size - 1}/{info.nar_size}"
    whole = bytes(received) + (tmp_path / "rest").read_bytes()
    assert len(whole) == info.nar_size and hashlib.sha256(whole).digest() == info.nar_hash
    assert a.peer_id[:10] in c.log


def nix_listings(tmp_path: Path, *paths: Path) -> dict[str, bytes]:
    """The `.ls` files Nix 2.8 writes for `paths` (write-nar-listing), by hash part."""
    cache = tmp_path / "nix-cache"
    nix("copy", "--to", f"file://{cache}?compression=none&write-nar-listing=true", *map(str, paths))
    return {ls.stem: ls.read_bytes() for ls in cache.glob("*.ls")}


def test_listings_are_nixs_and_a_peers_only_once_proven(fleet: LocalFleet, closure: Path, smallfiles: Path,
                                                        tmp_path: Path) -> None:
    a, c = host(fleet, "a", closure, smallfiles), host(fleet, "c")
    paths = [*map(Path, closure_of(closure)), smallfiles]
    expected = nix_listings(tmp_path, *paths)
    for path in paths:  # symlinks, empty files and directories, executables, spaces, non-ASCII names
        assert httpx.get(f"{a.url}/{hash_part(path)}.ls").content == expected[hash_part(path)]
        assert httpx.get(f"{a.url}/store/{hash_part(path)}.ls").content == expected[hash_part(path)]
    # C has not seen these NARs: a listing of its own would be unproven.
    lib = named(closure, "lib")
    assert httpx.get(f"{c.url}/{hash_part(lib)}.ls").status_code == 404
    assert httpx.get(f"{c.url}/{hash_part(smallfiles)}.ls").status_code == 404
    # Nix 2.8 reads a remote path by downloading its whole NAR: through C, which checks it and lists it.
    for path in (closure, lib, smallfiles):  # an executable; the tricky names and types; many files
        through_c = nix("store", "ls", "--store", c.url, "-lR", str(path)).stdout
        assert through_c == nix("store", "ls", "--store", str(a.store), "-lR", str(path)).stdout
        assert httpx.get(f"{c.url}/{hash_part(path)}.ls").content == expected[hash_part(path)]
    assert not list(c.store.glob("nix/store/*-peerix-test-*"))
    # A file in the middle of a large NAR, read as Nix's remote accessor does: its narOffset, then a range.
    listing = json.loads(httpx.get(f"{c.url}/{hash_part(smallfiles)}.ls").content)
    node = listing["root"]["entries"]["a"]["entries"]["f1250"]
    url, data = nar_url(c.url, smallfiles), (smallfiles / "a" / "f1250").read_bytes()
    status, _ = curl_range(url, f"{node['narOffset']}-{node['narOffset'] + node['size'] - 1}", tmp_path / "f")
    assert status == 206 and (tmp_path / "f").read_bytes() == data and node["size"] == len(data)
    assert nix("store", "cat", "--store", c.url, f"{smallfiles}/a/f1250").stdout == data
    assert httpx.get(f"{c.url}/dashboard").text.count('id="listings-served"') == 1
    assert httpx.get(f"{c.url}/api/v1/activity").json()["totals"]["listings_served"] > 0
    for bad in ("short", "e" * 32):
        assert httpx.get(f"{c.url}/{bad}.ls").status_code == 400
    listings = 'peerix_http_requests_total{{method="GET",route="{}",status="{}"}}'
    assert a.metric(listings.format("listing", 200)) == a.metric(listings.format("store_listing", 200)) == len(paths)
    assert c.metric(listings.format("listing", 404)) == 2 and c.metric(listings.format("listing", 400)) == 2


def build_into(on: Host, expr: Path, seed: str, *extra: str) -> dict:
    """Build straight into a host's chroot store (so its build log lands there): drvPath and outputs."""
    result = nix_build("--store", str(on.store), "-f", str(expr), "--argstr", "seed", seed, "--json", "--no-link",
                       *SANDBOX, *extra)
    return json.loads(result.stdout)[0]


def nix_build(*args: str) -> subprocess.CompletedProcess:
    """`nix build` with CA derivations on. Nix 2.8 sometimes fails building one with "closing file
    descriptor N: Bad file descriptor", then often dies of SIGSEGV or SIGABRT (NixOS/nix#6516, open:
    "sometimes they are built and sometimes not"; seen in 2 of 4 loaded suite runs here). That failure
    of Nix's own, and only that one, is tried again, up to three attempts in all."""
    for _ in range(3):
        result = nix(*CA, "build", *args, check=False)
        if not (result.returncode != 0 and re.search(rb"closing file descriptor \d+: Bad file descriptor",
                                                     result.stderr)):
            break
    assert result.returncode == 0, f"nix build {' '.join(args)} failed ({result.returncode}):\n{result.stderr.decode()}"
    return result


def test_nix_log_on_a_host_prints_what_a_peer_built(fleet: LocalFleet, tmp_path: Path) -> None:
    a = fleet.host("a")
    shared = build_into(a, HERE / "nix" / "logged.nix", "shared-log")
    private = build_into(a, HERE / "nix" / "logged.nix", "private-log")
    sign = ("nix", "store", "sign", "--store", str(a.store), "--key-file", str(fleet.cluster_file))
    run(*sign, shared["outputs"]["out"])  # the private output stays unsigned
    run(*sign, "--derivation", shared["drvPath"], private["drvPath"])
    a.start(*FAST)
    fleet.wait_announced(a, [shared["drvPath"], private["drvPath"]])
    c = host(fleet, "c")
    printed = nix("log", "--store", c.url, shared["drvPath"]).stdout.decode()
    assert "peerix build log marker shared-log" in printed
    assert not list(c.store.glob("nix/var/log/nix/drvs/*/*"))  # C never built it
    drv = Path(shared["drvPath"]).name
    assert httpx.get(f"{c.url}/log/{drv}").text == printed
    # A derivation whose output the serving policy keeps private keeps its log private too.
    private_log = httpx.get(f"{c.url}/log/{Path(private['drvPath']).name}")
    assert private_log.status_code == 404
    assert a.metric('peerix_peer_requests_total{kind="log",result="refused"}') == 1
    assert httpx.get(f"{a.url}/log/{Path(private['drvPath']).name}").status_code == 200  # its own Nix may read it
    assert c.metric('peerix_http_requests_total{method="GET",route="build_log",status="200"}') >= 2
    # Bad names get a 400 with the reason, traversal included, whatever the encoding.
    for bad in ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", f"{drv[:-4]}", "e" * 32 + "-a.drv", f"../{drv}",
                f"{drv}/..", "%00.drv"):
        answer = run("curl", "-s", "--path-as-is", "-w", "\n%{http_code}", f"{c.url}/log/{bad}").stdout.decode()
        assert answer.endswith("\n400") and "derivation" in answer, bad
    assert httpx.get(f"{c.url}/log/{'0' * 32}-missing.drv").status_code == 404
    assert httpx.get(f"{c.url}/api/v1/activity").json()["totals"]["logs_served"] == 2
    # serve_all_logs shares every log.
    a.stop()
    a.start(*FAST, "--serve-all-logs")
    fleet.wait_announced(a, [private["drvPath"]])
    assert "peerix build log marker private-log" in httpx.get(f"{c.url}/log/{Path(private['drvPath']).name}").text


def realisation_id(store: Path) -> str:
    with sqlite3.connect(store / "nix/var/nix/db/db.sqlite") as db:
        [(drv_hash, output)] = db.execute("SELECT drvPath, outputName FROM Realisations").fetchall()
    return f"{drv_hash}!{output}"


def build_on_c(c: Host, seed: str) -> subprocess.CompletedProcess:
    """Real Nix on C with peerix as its only substituter, trusting only C's key."""
    return nix_build("--store", str(c.store), "-f", str(HERE / "nix" / "ca.nix"), "--argstr", "seed", seed,
                     "--json", "--no-link", "-L", "--option", "substituters", c.url, "--option", "trusted-public-keys",
                     c.key.public.to_text(), "--option", "substitute", "true", "--option",
                     "narinfo-cache-negative-ttl", "0", *SANDBOX)


def test_content_addressed_outputs_come_from_the_peer_that_built_them(fleet: LocalFleet) -> None:
    a = fleet.host("a")
    built = build_into(a, HERE / "nix" / "ca.nix", "shared-ca", "--option", "secret-key-files", str(fleet.cluster_file))
    id_, out = realisation_id(a.store), built["outputs"]["out"]
    a.start(*FAST)
    fleet.wait_announced(a, [out])
    wait_until(lambda: a.peer_id in fleet.holders(realisation_key(id_)), "the realisation's announcement")
    served = Realisation.parse(httpx.get(f"{a.url}/realisations/{id_}.doi").text)
    assert served.out_path.basename == Path(out).name and len(served.sigs) == 2  # the fleet key's, and A's
    c = host(fleet, "c")
    result = build_on_c(c, "shared-ca")
    assert json.loads(result.stdout)[0]["outputs"]["out"] == out
    assert "building peerix-test-ca" not in result.stderr.decode()  # substituted, not built
    assert not list(c.store.glob("nix/var/log/nix/drvs/*/*"))
    nix("store", "verify", "--store", str(c.store), "--sigs-needed", "1", "--trusted-public-keys",
        c.key.public.to_text(), out)
    assert realisation_id(c.store) == id_  # Nix registered the realisation it substituted
    on_c = Realisation.parse(httpx.get(f"{c.url}/realisations/{id_}.doi").text)
    assert {sig.partition(":")[0] for sig in on_c.sigs} == {fleet.cluster.name, c.key.name}
    assert c.metric('peerix_peer_fetches_total{kind="realisation",result="ok"}') == 1
    # Current Nix asks build-trace-v2/<drv>/<output>.doi, keyed by derivation path: what C answers is
    # the entry its source and changelog describe, signed by C over that entry's fingerprint.
    drv, name = Path(built["drvPath"]).name, Path(out).name
    for on in (a, c):
        entry = httpx.get(f"{on.url}/build-trace-v2/{drv}/out.doi").json()
        assert entry["outPath"] == name
        [sig] = entry["signatures"]
        fingerprint = f'{{"key":{{"drvPath":"{drv}","outputName":"out"}},"value":{{"outPath":"{name}"}}}}'
        assert on.key.public.verify(fingerprint.encode(), sig)
    assert httpx.get(f"{c.url}/build-trace-v2/{drv}/dev.doi").status_code == 404
    assert httpx.get(f"{c.url}/build-trace-v2/{'0' * 32}-gone.drv/out.doi").status_code == 404
    for bad in (f"{drv[:-4]}/out.doi", f"{drv}/out", f"{drv}/.doi", f"{drv}/a b.doi"):
        assert httpx.get(f"{c.url}/build-trace-v2/{bad}").status_code == 400, bad
    assert httpx.get(f"{c.url}/api/v1/activity").json()["totals"]["realisations_served"] == 3  # Nix's, and two above
    served = 'peerix_http_requests_total{{method="GET",route="{}",status="200"}}'
    assert c.metric(served.format("realisation")) == 2 and c.metric(served.format("build_trace")) == 1


def test_unsigned_or_forged_realisations_are_refused_and_built_instead(fleet: LocalFleet, closure: Path,
                                                                      tmp_path: Path) -> None:
    a = host(fleet, "a", closure)  # holds a valid, signed path a lie could point to
    decoy = named(closure, "data")
    lies = {}
    for seed, key in (("unsigned-ca", None), ("forged-ca", SecretKey.generate(fleet.cluster.name))):
        scratch = fleet.host(f"scratch-{seed}")  # where the real realisation id comes from; never served
        build_into(scratch, HERE / "nix" / "ca.nix", seed)
        id_ = realisation_id(scratch.store)
        lie = Realisation(id_, NarInfo.parse(httpx.get(f"{a.url}/{hash_part(decoy)}.narinfo").text).store_path)
        lies[id_] = (sign_info(lie, key) if key else lie).to_text()
    # One liar each: a peer that lied once is left alone for a while, and would not be asked twice.
    liars = [start_liar(fleet, f"liar-{n}", narinfo={}, realisation=dict([lie])) for n, lie in enumerate(lies.items())]
    try:
        c = host(fleet, "c")
        for id_ in lies:
            assert httpx.get(f"{c.url}/realisations/{id_}.doi").status_code == 404
        assert c.metric('peerix_verification_failures_total{kind="realisation"}') == 2
        for seed in ("unsigned-ca", "forged-ca"):
            result = build_on_c(c, seed)
            assert f"building peerix-test-ca {seed}" in result.stderr.decode()  # C built it itself
            assert json.loads(result.stdout)[0]["outputs"]["out"] != str(decoy)
    finally:
        for liar in liars:
            liar.terminate()
            liar.wait()
    for bad in ("foo.doi", "sha256:abc!out.doi", f"{next(iter(lies))}", "sha256:" + "0" * 64 + "!out/../x.doi"):
        assert httpx.get(f"{c.url}/realisations/{bad}").status_code == 400, bad
    assert httpx.get(f"{c.url}/realisations/sha256:{'0' * 64}!out.doi").status_code == 404
