"""Settings: defaults, then the TOML file, then flags."""

from pathlib import Path

import pytest

from peerix.cli.main import build_parser
from peerix.daemon import config
from peerix.nix.signing import SecretKey
from peerix.swarm.policy import CACHE_NIXOS_ORG_KEY, Accept, Serve


def load(*argv: str) -> config.Config:
    return config.load(build_parser().parse_args(["serve", *argv]))


def test_defaults() -> None:
    settings = load()
    assert settings.listen == ("127.0.0.1", 12304) and settings.priority == 30
    assert settings.trusted_public_keys == (CACHE_NIXOS_ORG_KEY,)
    assert settings.relays and settings.discovery and settings.tracker == ()
    assert settings.accept is Accept.EITHER and settings.serve is Serve.SIGNED_OR_UPSTREAM
    assert settings.nar_cache_size == 1 << 30


A, B, C = (SecretKey.generate(f"{name}-1").public.to_text() for name in "abc")


def test_file_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "peerix.toml"
    file.write_text(f'''
listen = "[::1]:4000"
priority = 10
tracker = "http://tracker.example:8080/"
trusted_public_keys = ["{A}", "{B}"]
relays = false
nar_cache_size = "512M"
serve = "signed"
exclude = ["*-secrets*", "*-source"]
''')
    from_file = load("--config", str(file))
    assert from_file.listen == ("::1", 4000) and from_file.priority == 10
    assert from_file.tracker == ("http://tracker.example:8080",) and not from_file.relays
    assert from_file.trusted_public_keys == (A, B)
    assert from_file.nar_cache_size == 512 << 20 and from_file.serve is Serve.SIGNED
    assert from_file.exclude == ("*-secrets*", "*-source")
    flags = load("--config", str(file), "--priority", "20", "--relays", "--trusted-public-keys", C,
                 "--tracker", "none", "--exclude", "*.key", "--exclude", "*-home-*")
    assert flags.priority == 20 and flags.relays and flags.tracker == ()
    assert flags.exclude == ("*.key", "*-home-*")
    assert flags.trusted_public_keys == (C,)
    assert flags.listen == ("::1", 4000)  # untouched by flags: still the file's


def test_several_trackers(tmp_path: Path) -> None:
    """Replicas of one tracker: a list in TOML, a repeated flag; --no-tracker still wins."""
    file = tmp_path / "peerix.toml"
    file.write_text('tracker = ["http://t1.example:12305", "https://t2.example/"]\n')
    assert load("--config", str(file)).tracker == ("http://t1.example:12305", "https://t2.example")
    flags = load("--config", str(file), "--tracker", "http://a:1", "--tracker", "http://b:2")
    assert flags.tracker == ("http://a:1", "http://b:2")
    assert load("--config", str(file), "--no-tracker").tracker == ()


@pytest.mark.parametrize("content, message", [
    ("bogus = 1", r"unknown setting\(s\): bogus"),
    ("priority = 'high'", "priority"),
    ("listen = 'nowhere'", "HOST:PORT"),
    ("accept = 'anything'", "accept"),
    ("accept = 'upstream'\nupstream = 'none'", "needs an upstream"),
    ("tracker = 'ftp://x'", r"http\(s\) URL"),
    ("relays = 'maybe'", "true or false"),
    ("[[broken", "peerix.toml"),
    ("trusted_public_keys = ['a-1:AAAA']", "3 bytes, expected 32"),
    ("lan_port = 70000", "port from 1 to 65535"),
    ("max_sources = 0", "at least 1"),
    ("connect_timeout = false", "positive duration"),
    ("iroh_listen = []", "HOST:PORT"),
    ("name = ''", "1 to 64 printable"),
])
def test_bad_settings_are_explained(tmp_path: Path, content: str, message: str) -> None:
    file = tmp_path / "peerix.toml"
    file.write_text(content)
    with pytest.raises(config.ConfigError, match=message):
        load("--config", str(file))


def test_sizes() -> None:
    assert [config.parse_size(t) for t in ("0", "1024", "1K", "2GiB", "3 MB")] == [0, 1024, 1024, 2 << 30, 3 << 20]
    for bad in ("x", "1X", "-1"):
        with pytest.raises(ValueError):
            config.parse_size(bad)
