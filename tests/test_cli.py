from pathlib import Path

import pytest

from peerix.nix.signing import PublicKey, SecretKey

from conftest import peerix

EXPECTED_IN_HELP = {
    "": ["keygen", "serve", "status", "peers", "why", "public-key", "demo"],
    "keygen": ["--secret-file", "--public-file"],
    "serve": ["--store-root", "--listen", "--sign-key-file", "--priority", "--config", "--tracker", "--peer"],
    "status": ["--url", "--json"],
    "peers": ["--url", "--json"],
    "why": ["PATH", "--url"],
    "public-key": ["SECRET_FILE"],
    "demo": ["--keep", "tracker"],
}


@pytest.mark.parametrize("command", EXPECTED_IN_HELP)
def test_help_is_complete_and_exits_zero(command: str) -> None:
    result = peerix(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: peerix" in result.stdout
    for expected in EXPECTED_IN_HELP[command]:
        assert expected in result.stdout


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
