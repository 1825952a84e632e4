from pathlib import Path

import pytest

from peerix.nix.signing import PublicKey, SecretKey

from conftest import peerix


@pytest.mark.parametrize("command", [[], ["keygen"], ["serve"], ["status"], ["peers"], ["why"], ["public-key"],
                                     ["demo"]])
def test_help_is_complete_and_exits_zero(command: list[str]) -> None:
    result = peerix(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: peerix" in result.stdout
    for option in {"keygen": ["--secret-file", "--public-file"],
                   "serve": ["--store-root", "--listen", "--sign-key-file", "--priority", "--config"],
                   "why": ["PATH", "--url"], "status": ["--url", "--json"], "peers": ["--url"]}.get(
            command[0] if command else "", ["keygen", "serve", "status", "peers", "why", "demo"]):
        assert option in result.stdout


def test_keygen_writes_a_nix_key_pair(tmp_path: Path) -> None:
    secret, public = tmp_path / "sk", tmp_path / "pk"
    result = peerix("keygen", "host-1", "--secret-file", str(secret), "--public-file", str(public))
    assert result.returncode == 0, result.stderr
    assert secret.stat().st_mode & 0o777 == 0o600
    key = SecretKey.parse(secret.read_text())
    assert key.name == "host-1" and key.public == PublicKey.parse(public.read_text())
    assert result.stdout.strip() == public.read_text()
    again = peerix("keygen", "host-1", "--secret-file", str(secret), "--public-file", str(public))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert SecretKey.parse(secret.read_text()).public == key.public


def test_serve_refuses_an_exposed_or_broken_key(tmp_path: Path) -> None:
    secret = tmp_path / "sk"
    secret.write_text(SecretKey.generate("k-1").to_text())
    secret.chmod(0o644)
    result = peerix("serve", "--store-root", str(tmp_path), "--sign-key-file", str(secret))
    assert result.returncode == 2 and "readable by everyone" in result.stderr
    secret.chmod(0o600)
    secret.write_text("k-1:broken")
    result = peerix("serve", "--store-root", str(tmp_path), "--sign-key-file", str(secret))
    assert result.returncode == 2 and "not valid base64" in result.stderr


def test_serve_explains_a_missing_store(tmp_path: Path) -> None:
    result = peerix("serve", "--store-root", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert "no Nix database" in result.stderr and "Traceback" not in result.stderr


def test_bad_listen_address() -> None:
    result = peerix("serve", "--listen", "localhost")
    assert result.returncode == 2 and "HOST:PORT" in result.stderr
