"""Tracker settings: defaults, then a TOML file (`--config`), then flags; flags win.

One table names every setting once: its TOML key, its flag (the key with dashes) and its parser,
so the two sources cannot drift apart. Secrets never sit in the TOML file or on the command line
(both are often world-readable: the Nix store, `ps`): network tokens come from `token_file`, one
a line, so a token is rotated by listing the new one next to the old one for a while, and a
PostgreSQL password from `db_password_file` (or libpq's PGPASSFILE), never from the URL.
"""

import argparse
import os
import re
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from peerix.common.secrets import SecretFileError, read_secret
from peerix.common.units import parse_listen, parse_size
from peerix.net.tracker_protocol import is_peer_id

from .storage import is_postgres

DEFAULT_PORT = 12305
MEMBERSHIPS = ("open", "allowlist", "token")
MIN_TOKEN_LENGTH = 16


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Config:
    db: Path | str  # an SQLite file, or a PostgreSQL URL without a password
    db_password: str | None = None
    replica: str = "tracker"  # load() makes it HOST:PORT
    listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT)
    membership: str = "open"
    allowlist: frozenset[str] = frozenset()
    tokens: tuple[str, ...] = ()
    allowlist_file: Path | None = None  # read again, with token_file, on SIGHUP
    token_file: Path | None = None
    listed: frozenset[str] = frozenset()  # the allowlist given by flag or TOML, without allowlist_file's
    tls_cert: Path | None = None
    tls_key: Path | None = None
    audit_file: Path | None = None
    audit_max_size: int = 64 << 20
    offline_after: float = 180.0
    remove_after: float = 86400.0
    sweep_interval: float = 30.0
    max_clock_skew: float = 60.0
    max_body: int = 8 << 20
    max_announce_hashes: int = 200_000
    max_lookup_hashes: int = 5_000
    lookup_limit: int = 50
    address_rate: float = 200.0
    address_burst: float = 400.0
    peer_rate: float = 1.0
    peer_burst: float = 30.0
    lease_ttl: float = 6.0
    lease_rate: float = 50.0
    lease_burst: float = 500.0
    admin_tokens: tuple[str, ...] = ()
    advised_upload_rate: int | None = None
    advised_download_rate: int | None = None
    trusted_proxies: tuple[str, ...] = ()
    dashboard: bool = True
    access_log: bool = False

    @property
    def loopback_only(self) -> bool:
        return self.listen[0] in ("127.0.0.1", "::1", "localhost")


def _seconds(value: object) -> float:
    """A duration: a number of seconds, or a string with a unit (500ms, 90s, 3m, 12h, 7d)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
    if isinstance(value, bool) or not match or float(match[1]) <= 0:
        raise ValueError(f"expected a positive duration such as 90, 90s, 3m or 12h, got {value!r}")
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2] or "s"]


def _positive(kind: type) -> Callable[[object], float | int]:
    def parse(value: object) -> float | int:
        try:
            number = float(value) if not isinstance(value, bool) else 0.0
        except (TypeError, ValueError):
            number = 0.0
        if not number > 0 or number == float("inf") or (kind is int and not number.is_integer()):
            raise ValueError(f"expected a positive {'integer' if kind is int else 'number'}, got {value!r}")
        return kind(number)
    return parse


def _size(value: object) -> int:
    size = value if isinstance(value, int) and not isinstance(value, bool) else parse_size(str(value))
    if size <= 0:
        raise ValueError(f"expected a positive size, got {value!r}")
    return size


def _database(value: object) -> Path | str:
    """An SQLite file, or a PostgreSQL URL (postgres:// too; a unix socket as ?host=/run/postgresql)."""
    text = str(value)
    if not is_postgres(text):
        return Path(text)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        raise ValueError(f"not a PostgreSQL URL: {error}") from None
    if parts.password is not None or "password" in parse_qs(parts.query):
        raise ValueError("a password does not go in the URL, which shows in `ps` and in config files: put it in "
                         "db_password_file (or a PGPASSFILE)")
    return text


def _name(value: object) -> str:
    text = str(value)
    if not 0 < len(text) <= 64 or not text.isprintable():
        raise ValueError(f"expected 1 to 64 printable characters, got {value!r}")
    return text


def _listen(value: object) -> tuple[str, int]:
    return parse_listen(str(value))


def _membership(value: object) -> str:
    if value not in MEMBERSHIPS:
        raise ValueError(f"expected one of {', '.join(MEMBERSHIPS)}, got {value!r}")
    return str(value)


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _peer_ids(value: object) -> frozenset[str]:
    keys = _strings(value)
    if bad := [key for key in keys if not is_peer_id(key)]:
        raise ValueError(f"peer ids are 64 lowercase hex characters (an iroh endpoint id), got {bad[0]!r}")
    return frozenset(keys)


def _optional_path(value: object) -> Path | None:
    text = str(value).strip()
    return None if text.lower() == "none" else Path(text)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[object], object]
    help: str
    metavar: str = ""
    repeat: bool = False  # a flag given several times makes a list
    switch: bool = False  # --name / --no-name


SETTINGS = (
    Setting("db", _database, "SQLite database file, or a PostgreSQL URL: postgresql://USER@HOST:PORT/DB, "
            "postgresql://USER@/DB?host=/run/postgresql for a unix socket (required)", "FILE|URL"),
    Setting("db_password_file", lambda value: Path(str(value)), "file holding the PostgreSQL password "
            "(mode 0600; default: libpq's PGPASSFILE, else ~/.pgpass, else none)", "FILE"),
    Setting("replica", _name, "this tracker's name among replicas sharing a database, in metrics, /health and "
            "the dashboard (default: HOST:PORT)", "NAME"),
    Setting("listen", _listen, f"address to listen on (default: 127.0.0.1:{DEFAULT_PORT})", "HOST:PORT"),
    Setting("membership", _membership, "who may write: open (any key), allowlist or token "
            "(default: allowlist or token when one is given, else open)", "MODE"),
    Setting("allowlist", _peer_ids, "a peer id allowed in (repeatable; replaces the file's list)", "PEER_ID",
            repeat=True),
    Setting("allowlist_file", lambda value: Path(str(value)), "file of allowed peer ids, one a line", "FILE"),
    Setting("token_file", lambda value: Path(str(value)), "file of network tokens, one a line (mode 0600)", "FILE"),
    Setting("tls_cert", lambda value: Path(str(value)), "certificate chain (PEM) to serve HTTPS with, beside "
            "tls_key (default: plain HTTP)", "FILE"),
    Setting("tls_key", lambda value: Path(str(value)), "the certificate's private key (PEM, mode 0600)", "FILE"),
    Setting("audit_file", _optional_path, "the audit trail, JSON lines (default: beside an SQLite database, "
            "$STATE_DIRECTORY/audit.jsonl with PostgreSQL under systemd; none: no file)", "FILE"),
    Setting("audit_max_size", _size, "size at which the audit file is rotated (default: 64M)", "SIZE"),
    Setting("offline_after", _seconds, "a peer not heard from this long is offline (default: 3m)", "DURATION"),
    Setting("remove_after", _seconds, "a peer not heard from this long is removed (default: 1d)", "DURATION"),
    Setting("sweep_interval", _seconds, "how often the sweep looks for silent peers (default: 30s)", "DURATION"),
    Setting("max_clock_skew", _seconds, "largest accepted difference between a request's timestamp and the "
            "tracker's clock (default: 60s)", "DURATION"),
    Setting("max_body", _size, "largest request body (default: 8M)", "SIZE"),
    Setting("max_announce_hashes", _positive(int), "most hashes in one announce (default: 200000)", "N"),
    Setting("max_lookup_hashes", _positive(int), "most hashes in one batch lookup (default: 5000)", "N"),
    Setting("lookup_limit", _positive(int), "most peers answered for one hash (default: 50)", "N"),
    Setting("address_rate", _positive(float), "API requests per second per client address (default: 200)", "N"),
    Setting("address_burst", _positive(float), "burst of API requests per client address (default: 400)", "N"),
    Setting("peer_rate", _positive(float), "writes per second per peer (default: 1)", "N"),
    Setting("peer_burst", _positive(float), "burst of writes per peer (default: 30)", "N"),
    Setting("lease_ttl", _seconds, "how long a pull-through lease lasts without a renewal: a holder that dies "
            "or stalls loses it this soon (default: 6s)", "DURATION"),
    Setting("lease_rate", _positive(float), "lease requests (takes, renewals, releases) per second per peer "
            "(default: 50)", "N"),
    Setting("lease_burst", _positive(float), "burst of lease requests per peer (default: 500)", "N"),
    Setting("admin_token_file", lambda value: Path(str(value)), "file of admin tokens for /api/v1/admin and "
            "`peerix-tracker admin`, one a line (mode 0600); none: the admin API is off", "FILE"),
    Setting("advised_upload_rate", _size, "bytes per second each peer is advised to send at most (peers' own "
            "settings win; default: no advice)", "RATE"),
    Setting("advised_download_rate", _size, "bytes per second each peer is advised to fetch at most", "RATE"),
    Setting("trusted_proxies", _strings, "address of a reverse proxy whose X-Forwarded-For is believed "
            "(repeatable)", "ADDRESS", repeat=True),
    Setting("dashboard", _bool, "serve the dashboard at / (default: on)", switch=True),
    Setting("access_log", _bool, "log every HTTP request (default: off)", switch=True),
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML file with any of the settings below")
    for setting in SETTINGS:
        flag = "--" + setting.name.replace("_", "-")
        if setting.name == "allowlist":
            flag = "--allow"
        elif setting.name == "trusted_proxies":
            flag = "--trusted-proxy"
        if setting.switch:
            parser.add_argument(flag, dest=setting.name, action=argparse.BooleanOptionalAction, help=setting.help)
        else:
            parser.add_argument(flag, dest=setting.name, action="append" if setting.repeat else "store",
                                metavar=setting.metavar, help=setting.help)


def load(args: argparse.Namespace) -> Config:
    """The settings of `args` over those of its --config file over the defaults; ConfigError if invalid."""
    raw: dict[str, object] = read_toml(args.config) if args.config else {}
    raw.update({s.name: value for s in SETTINGS if (value := getattr(args, s.name, None)) is not None})
    values: dict = {}
    for name, value in raw.items():
        try:
            values[name] = _BY_NAME[name].parse(value)
        except ValueError as error:
            raise ConfigError(f"{name}: {error}") from None
    if "db" not in values:
        raise ConfigError("no database: give --db FILE or --db postgresql://... (or db = \"...\" in the config file)")
    if file := values.pop("db_password_file", None):
        if not isinstance(values["db"], str):
            raise ConfigError("db_password_file is for a PostgreSQL database; an SQLite file has no password")
        values["db_password"] = _read_password(file)
    values.setdefault("replica", f"{socket.gethostname()}:{values.get('listen', Config.listen)[1]}")
    values["listed"] = values.get("allowlist", frozenset())
    values["allowlist"], tokens = _members(values["listed"], values.get("allowlist_file"), values.get("token_file"))
    if tokens:
        values["tokens"] = tokens
    if "audit_file" not in values:
        values["audit_file"] = _default_audit_file(values["db"])
    if file := values.pop("admin_token_file", None):
        values["admin_tokens"] = _read_tokens(file)
    given = [mode for mode, key in (("allowlist", "allowlist"), ("token", "tokens")) if values.get(key)]
    values.setdefault("membership", given[0] if len(given) == 1 else "open")
    return _checked(Config(**values), given)


def reread_members(config: Config) -> tuple[frozenset[str], tuple[str, ...]]:
    """The allowlist and tokens as the files say now (on SIGHUP); ConfigError when they cannot be used."""
    allowlist, tokens = _members(config.listed, config.allowlist_file, config.token_file)
    if config.membership == "allowlist" and not allowlist:
        raise ConfigError("the allowlist is empty now: nobody could write")
    return allowlist, tokens


def _members(listed: frozenset[str], allowlist_file: Path | None,
             token_file: Path | None) -> tuple[frozenset[str], tuple[str, ...]]:
    allowlist = listed | _read_allowlist(allowlist_file) if allowlist_file else listed
    return allowlist, _read_tokens(token_file) if token_file else ()


def _default_audit_file(db: Path | str) -> Path | None:
    """Beside an SQLite database; with PostgreSQL, in systemd's state directory if there is one."""
    if isinstance(db, Path):
        return db.with_suffix(".audit.jsonl")
    state = os.environ.get("STATE_DIRECTORY")
    return Path(state.split(":")[0]) / "audit.jsonl" if state else None


def read_toml(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None
    if unknown := sorted(set(data) - set(_BY_NAME)):
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r}; known: {', '.join(_BY_NAME)}")
    return data


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _read_allowlist(path: Path) -> frozenset[str]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    try:
        return _peer_ids(_lines(text))
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


def _read_password(path: Path) -> str:
    try:
        password = read_secret(path).rstrip("\r\n")
    except SecretFileError as error:
        raise ConfigError(str(error)) from None
    if not password or "\n" in password:
        raise ConfigError(f"{path}: expected the password alone on one line")
    return password


def _read_tokens(path: Path) -> tuple[str, ...]:
    try:
        tokens = tuple(_lines(read_secret(path)))
    except SecretFileError as error:
        raise ConfigError(str(error)) from None
    if not tokens or any(len(token) < MIN_TOKEN_LENGTH for token in tokens):
        raise ConfigError(f"{path}: tokens must be at least {MIN_TOKEN_LENGTH} characters, one a line")
    return tokens


def _checked(config: Config, given: list[str]) -> Config:
    """Refuse settings that contradict each other rather than guess what was meant."""
    if len(given) > 1:
        raise ConfigError("give either an allowlist or network tokens, not both")
    if config.membership == "open" and given:
        raise ConfigError(f"membership is open but {given[0]} settings were given; set membership = \"{given[0]}\"")
    if config.membership != "open" and given != [config.membership]:
        need = "--allow or --allowlist-file" if config.membership == "allowlist" else "--token-file"
        raise ConfigError(f"membership {config.membership} needs {need}")
    if config.remove_after <= config.offline_after:
        raise ConfigError("remove_after must be longer than offline_after")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("TLS needs both tls_cert and tls_key")
    if config.tls_key is not None:
        try:
            read_secret(config.tls_key)  # refused when anyone may read it
            config.tls_cert.read_bytes()
        except SecretFileError as error:
            raise ConfigError(f"tls_key: {error}") from None
        except OSError as error:
            raise ConfigError(f"tls_cert: cannot read {config.tls_cert}: {error.strerror}") from None
    return config
