"""Trust policy against a real upstream binary cache (peerix serving another chroot store)."""

from dataclasses import replace
from pathlib import Path

import pytest

from peerix.net.upstream import Upstream
from peerix.nix.signing import SecretKey, sign_info
from peerix.store.local import LocalStore
from peerix.swarm.policy import Accept, Policy, Serve

from conftest import offline, requires_nix
from nixtools import closure_of, hash_part

pytestmark = requires_nix

CLUSTER = SecretKey.generate("cluster-1")
STRANGER = SecretKey.generate("cluster-1")  # same name, other key: a forgery


@pytest.fixture
async def infos(host_a: Path, closure: Path):
    async with LocalStore(host_a) as store:
        return [await store.query(hash_part(p)) for p in closure_of(closure)]


@pytest.fixture
async def upstream(start_daemon, host_a: Path, tmp_path: Path):
    daemon = start_daemon("serve", "--store-root", str(host_a), *offline(tmp_path / "upstream-state"))
    client = Upstream(daemon.url)
    yield client
    await client.aclose()


async def test_signature_policy(infos) -> None:
    policy = Policy([CLUSTER.public], Accept.SIGNATURE)
    info = infos[0]
    verdict, kept = await policy.accept_from_peer(sign_info(sign_info(info, STRANGER), SecretKey.generate("other-1")))
    assert not verdict.ok and kept.sigs == ()
    verdict, kept = await policy.accept_from_peer(sign_info(sign_info(info, CLUSTER), SecretKey.generate("other-1")))
    assert verdict.ok and "cluster-1" in verdict.reason
    assert kept.sigs == (sign_info(info, CLUSTER).sigs[-1],)  # untrusted signatures are dropped
    tampered = replace(sign_info(info, CLUSTER), nar_size=info.nar_size + 1)
    assert not (await policy.accept_from_peer(tampered))[0].ok


async def test_upstream_policy(infos, upstream: Upstream) -> None:
    policy = Policy([CLUSTER.public], Accept.UPSTREAM, upstream=upstream)
    for info in infos:
        verdict, _ = await policy.accept_from_peer(info)
        assert verdict.ok and verdict.reason.startswith("matches")
    info = infos[0]
    for lie in (replace(info, nar_hash=bytes(32)), replace(info, nar_size=1), replace(info, references=())):
        if lie != info:
            verdict, _ = await policy.accept_from_peer(lie)
            assert not verdict.ok and "differs" in verdict.reason
    elsewhere = replace(info, store_path=replace(info.store_path, hash_part="0" * 32))
    verdict, _ = await policy.accept_from_peer(elsewhere)
    assert not verdict.ok and "not in" in verdict.reason


async def test_either_and_both(infos, upstream: Upstream) -> None:
    info = infos[0]
    unknown = replace(info, store_path=replace(info.store_path, hash_part="0" * 32))
    either = Policy([CLUSTER.public], Accept.EITHER, upstream=upstream)
    both = Policy([CLUSTER.public], Accept.BOTH, upstream=upstream)
    assert (await either.accept_from_peer(info))[0].ok  # unsigned but upstream vouches
    assert (await either.accept_from_peer(sign_info(unknown, CLUSTER)))[0].ok  # signed, not upstream
    assert not (await either.accept_from_peer(unknown))[0].ok
    assert not (await both.accept_from_peer(info))[0].ok
    assert not (await both.accept_from_peer(sign_info(unknown, CLUSTER)))[0].ok
    assert (await both.accept_from_peer(sign_info(info, CLUSTER)))[0].ok


async def test_serving_policy(infos, upstream: Upstream) -> None:
    info = infos[0]
    unknown = replace(info, store_path=replace(info.store_path, hash_part="0" * 32))
    signed = Policy([CLUSTER.public], serve=Serve.SIGNED, upstream=upstream)
    assert not (await signed.may_serve(info)).ok  # a private build: nobody signed it
    assert (await signed.may_serve(sign_info(info, CLUSTER))).ok
    assert not (await signed.may_serve(sign_info(info, STRANGER))).ok
    either = Policy([CLUSTER.public], serve=Serve.SIGNED_OR_UPSTREAM, upstream=upstream)
    assert (await either.may_serve(info)).ok
    assert not (await either.may_serve(unknown)).ok
    assert (await Policy([], serve=Serve.ALL).may_serve(unknown)).ok
    name = info.store_path.basename
    assert signed.announceable(name, sign_info(info, STRANGER).sigs)  # names only: the full check comes when asked
    assert not signed.announceable(name, info.sigs)


async def test_unreachable_upstream_refuses(infos) -> None:
    dead = Upstream("http://127.0.0.1:9", timeout=1)
    verdict, _ = await Policy([], Accept.UPSTREAM, upstream=dead).accept_from_peer(infos[0])
    assert not verdict.ok and "unreachable" in verdict.reason
    await dead.aclose()
    with pytest.raises(ValueError):
        Policy([], Accept.BOTH)
