"""Tracker settings from TOML and flags, and the command's answers to bad ones."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tracker.cli import build_parser
from tracker.config import Config, ConfigError, load

from conftest import ROOT

PEER_A = "a" * 64
PEER_B = "b" * 64


def settings(*argv: str) -> Config:
    return load(build_parser().parse_args(["serve", *argv]))


def tracker_command(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracker.cli", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def test_defaults_are_safe(tmp_path: Path) -> None:
    config = settings("--db", str(tmp_path / "t.db"))
    assert config.listen == ("127.0.0.1", 12305) and config.loopback_only
    assert config.membership == "open" and config.dashboard
    assert config.offline_after < config.remove_after


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "tracker.toml").write_text(f"""
db = "{tmp_path / 'from-file.db'}"
listen = "0.0.0.0:9000"
offline_after = "1h"
remove_after = "7d"
max_body = "1M"
allowlist = ["{PEER_A}"]
dashboard = false
""")
    config = settings("--config", str(tmp_path / "tracker.toml"), "--offline-after", "2m", "--allow", PEER_B)
    assert config.db == tmp_path / "from-file.db" and config.listen == ("0.0.0.0", 9000)
    assert config.offline_after == 120 and config.remove_after == 7 * 86400 and config.max_body == 1 << 20
    assert config.membership == "allowlist" and config.allowlist == {PEER_B}
    assert config.dashboard is False
    assert settings("--config", str(tmp_path / "tracker.toml"), "--dashboard").dashboard is True


def test_allowlist_file_and_token_file(tmp_path: Path) -> None:
    (tmp_path / "peers").write_text(f"# the fleet\n{PEER_A}\n\n{PEER_B}\n")
    config = settings("--db", "t.db", "--allowlist-file", str(tmp_path / "peers"), "--allow", "c" * 64)
    assert config.membership == "allowlist" and config.allowlist == {PEER_A, PEER_B, "c" * 64}
    tokens = tmp_path / "tokens"
    tokens.write_text("new-token-0123456789\nold-token-0123456789\n")
    tokens.chmod(0o600)
    config = settings("--db", "t.db", "--token-file", str(tokens))
    assert config.membership == "token" and config.tokens == ("new-token-0123456789", "old-token-0123456789")


@pytest.mark.parametrize("argv, message", [
    ([], "no database"),
    (["--db", "t.db", "--offline-after", "soon"], "offline_after: expected a positive duration"),
    (["--db", "t.db", "--offline-after", "0"], "offline_after: expected a positive duration"),
    (["--db", "t.db", "--max-announce-hashes", "1.5"], "positive integer"),
    (["--db", "t.db", "--max-body", "0"], "positive size"),
    (["--db", "t.db", "--listen", "nowhere"], "HOST:PORT"),
    (["--db", "t.db", "--membership", "closed"], "one of open, allowlist, token"),
    (["--db", "t.db", "--allow", "not-a-key"], "64 lowercase hex"),
    (["--db", "t.db", "--membership", "allowlist"], "needs --allow"),
    (["--db", "t.db", "--membership", "token"], "needs --token-file"),
    (["--db", "t.db", "--membership", "open", "--allow", PEER_A], "membership is open but allowlist"),
    (["--db", "t.db", "--offline-after", "1h", "--remove-after", "30m"], "remove_after must be longer"),
    (["--db", "t.db", "--db-password-file", "pw"], "db_password_file is for a PostgreSQL database"),
    (["--db", "postgresql://tracker:hunter2@db.example/peerix"], "password does not go in the URL"),
    (["--db", "postgres://tracker@/peerix?host=/run/postgresql&password=x"], "password does not go in the URL"),
    (["--db", "postgresql://tracker@db.example:port/peerix"], "not a PostgreSQL URL"),
])
def test_contradictions_and_bad_values_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(*argv)


def test_bad_files_are_explained(tmp_path: Path) -> None:
    config_file = tmp_path / "tracker.toml"
    config_file.write_text('db = "t.db"\nofline_after = 5\n')
    with pytest.raises(ConfigError, match="unknown setting 'ofline_after'"):
        settings("--config", str(config_file))
    config_file.write_text("db = \n")
    with pytest.raises(ConfigError, match="tracker.toml"):
        settings("--config", str(config_file))
    tokens = tmp_path / "tokens"
    tokens.write_text("a-long-enough-token-here\n")
    tokens.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by everyone"):
        settings("--db", "t.db", "--token-file", str(tokens))
    tokens.chmod(0o600)
    tokens.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        settings("--db", "t.db", "--token-file", str(tokens))


def test_command_help_and_errors(tmp_path: Path) -> None:
    result = tracker_command("serve", "--help")
    assert result.returncode == 0 and "--db FILE|URL" in result.stdout and "--token-file" in result.stdout
    result = tracker_command("serve")
    assert result.returncode == 2 and "no database" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_refuses_a_database_it_cannot_own(tmp_path: Path, start_tracker) -> None:
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    result = tracker_command("serve", "--db", str(newer))
    assert result.returncode == 2 and "schema version 99, newer" in result.stderr

    other = tmp_path / "not-sqlite.db"
    other.write_bytes(b"this is not a database" * 100)
    result = tracker_command("serve", "--db", str(other))
    assert result.returncode == 2 and "peerix tracker database" in result.stderr and "Traceback" not in result.stderr

    tracker = start_tracker()
    result = tracker_command("serve", "--db", str(tracker.db), "--listen", "127.0.0.1:1")
    assert result.returncode == 2 and "in use by another peerix-tracker" in result.stderr
    assert tracker.get("/health").json()["status"] == "ok"
