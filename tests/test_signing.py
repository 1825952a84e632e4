"""Keys and signatures interoperate with Nix in both directions."""

import base64
from dataclasses import replace
from pathlib import Path

import pytest

from peerix.nix.narinfo import NarInfo
from peerix.nix.signing import KeyFormatError, PublicKey, SecretKey, add_signature, sign_info, trusted_sigs
from peerix.store.local import LocalStore

from conftest import requires_nix
from nixtools import closure_of, hash_part, nix, path_info, run
from test_narinfo import sample_text


@requires_nix
async def test_our_signature_equals_nix_store_sign(tmp_path: Path, host_a: Path, closure: Path) -> None:
    secret, public = tmp_path / "nix.sec", tmp_path / "nix.pub"
    run("nix-store", "--generate-binary-cache-key", "nix-made-1", str(secret), str(public))
    key = SecretKey.parse(secret.read_text())
    assert key.public == PublicKey.parse(public.read_text())
    paths = closure_of(closure, store=str(host_a))
    async with LocalStore(host_a) as store:
        unsigned = {p: await store.query(hash_part(p)) for p in paths}
    nix("store", "sign", "--store", str(host_a), "--key-file", str(secret), *paths)
    signed_by_nix = path_info(*paths, store=str(host_a))
    for path, info in unsigned.items():
        assert sign_info(info, key).sigs == tuple(signed_by_nix[path]["signatures"])


@requires_nix
def test_nix_accepts_our_keys(tmp_path: Path, keypair: tuple[Path, Path], host_a: Path, closure: Path) -> None:
    secret, public = keypair
    assert secret.stat().st_mode & 0o777 == 0o600
    paths = closure_of(closure, store=str(host_a))
    nix("store", "sign", "--store", str(host_a), "--key-file", str(secret), *paths)
    verify = ["store", "verify", "--store", str(host_a), "--sigs-needed", "1", *paths]
    nix(*verify, "--trusted-public-keys", public.read_text())
    other = SecretKey.generate("test-host-1").public.to_text()  # same name, other key
    assert nix(*verify, "--trusted-public-keys", other, check=False).returncode != 0


def test_sign_verify_and_trust() -> None:
    info = NarInfo.parse(sample_text()).with_sigs(())
    alice, bob = SecretKey.generate("alice-1"), SecretKey.generate("bob-1")
    signed = sign_info(sign_info(info, alice), bob)
    assert trusted_sigs(signed, [alice.public]) == (signed.sigs[0],)
    assert trusted_sigs(signed, [alice.public, bob.public]) == signed.sigs
    assert trusted_sigs(signed, []) == ()
    # A signature over other contents, or by an impostor using a trusted name, is not trusted.
    tampered = replace(signed, nar_size=161)
    assert trusted_sigs(tampered, [alice.public, bob.public]) == ()
    impostor = SecretKey.generate("alice-1")
    assert trusted_sigs(sign_info(info, impostor), [alice.public]) == ()
    # Re-signing replaces our older signature instead of piling up.
    assert len(sign_info(signed, alice).sigs) == 2
    assert add_signature(info, "x:garbage").sigs == ("x:garbage",)
    assert trusted_sigs(info.with_sigs(("alice-1:not base64!",)), [alice.public]) == ()


@pytest.mark.parametrize("text", [
    "", "nocolon", ":AAAA", "name:not-base64!", "name:" + "A" * 8,
])
def test_bad_key_files(text: str) -> None:
    with pytest.raises(KeyFormatError):
        SecretKey.parse(text)
    with pytest.raises(KeyFormatError):
        PublicKey.parse(text)


def test_corrupt_secret_key_is_detected() -> None:
    key = SecretKey.generate("k-1")
    name, raw = key.to_text().split(":")
    data = bytearray(base64.b64decode(raw))
    data[40] ^= 1  # the public half no longer matches the seed
    with pytest.raises(KeyFormatError, match="corrupt"):
        SecretKey.parse(f"{name}:{base64.b64encode(bytes(data)).decode()}")
    assert SecretKey.parse(key.to_text() + "\n").public == key.public
