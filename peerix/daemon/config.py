"""The daemon's configuration: one declaration per setting, read from a TOML file and from flags.

Each field of `Config` is a setting: its TOML key is the field name, its flag the same name with
dashes (`nar_cache_size` -> `--nar-cache-size`) unless the metadata names another, its help text
and parser live in the field's metadata. Precedence: built-in default < TOML file (`--config`) < flag.
"""

import argparse
import dataclasses
import enum
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.units import parse_bool, parse_count, parse_listen, parse_port, parse_seconds, parse_size
from ..http.access import LOOPBACK
from ..nix.signing import PublicKey
from ..swarm.policy import CACHE_NIXOS_ORG_KEY, Accept, Serve

DEFAULT_PORT = 12304


class ConfigError(Exception):
    pass


def default_state_dir() -> Path:
    """systemd's StateDirectory, else /var/lib/peerix for root, else the XDG state directory."""
    if state := os.environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/peerix")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "peerix"


def _compression(text: str) -> str:
    if text not in ("auto", "always", "never"):
        raise ValueError("must be auto, always or never")
    return text


def setting(default: Any, help: str, parse: Callable[[Any], Any] = str, metavar: str | None = None,
            many: bool = False, factory: Callable[[], Any] | None = None, flag: str | None = None) -> Any:
    meta = {"help": help, "parse": parse, "metavar": metavar, "many": many, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _peers(text: object) -> str | None:
    text = str(text).strip()
    if text == "auto":
        return None
    if text not in ("any", "fleet"):
        raise ValueError(f"expected any, fleet or auto, got {text[:40]!r}")
    return text


def _network(text: str) -> str:
    return str(ipaddress.ip_network(str(text).strip(), strict=False))


def _optional_url(text: str) -> str | None:
    text = str(text).strip()
    if not text or text.lower() == "none":
        return None
    if not re.match(r"https?://", text):
        raise ValueError(f"expected an http(s) URL or 'none', got {text!r}")
    return text.rstrip("/")


def _priority(value: object) -> int:
    return parse_count(value, minimum=0)


def _seconds_or_zero(value: object) -> float:
    return 0.0 if not isinstance(value, bool) and str(value).strip() in ("0", "0.0") else parse_seconds(value)


def _address(text: object) -> str:
    """HOST:PORT, kept as written."""
    parse_listen(str(text))
    return str(text)


def _public_key(text: object) -> str:
    """A Nix public key, `name:base64` of 32 bytes, kept as written."""
    PublicKey.parse(str(text))
    return str(text)


def _name(text: object) -> str:
    """What peers and the tracker show: the tracker takes 1 to 64 printable characters."""
    name = str(text).strip()
    if not 1 <= len(name) <= 64 or not name.isprintable():
        raise ValueError(f"expected 1 to 64 printable characters, got {str(text)[:80]!r}")
    return name


@dataclass(frozen=True)
class Config:
    store_root: Path = setting(Path("/"), "root of the Nix store: / or a chroot store such as /tmp/hostA", Path,
                               "DIR")
    listen: tuple[str, int] = setting(("127.0.0.1", DEFAULT_PORT), "HTTP address for the local Nix "
                                      "([::1]:12304 for IPv6)", parse_listen, "HOST:PORT")
    sign_key_file: Path | None = setting(None, "the host's key (Nix secret key format): signs narinfo, is the "
                                         "peer id (default: $NIX_SECRET_KEY_FILE, else host.key in the state "
                                         "directory, made on first start)", Path, "FILE")
    priority: int = setting(30, "Priority in nix-cache-info; lower wins, cache.nixos.org is 40", _priority, "N")
    state_dir: Path = setting(None, "state: host key if none is given, tracker sync state, NAR cache (default: "
                              "$STATE_DIRECTORY, /var/lib/peerix as root, else ~/.local/state/peerix)", Path, "DIR",
                              factory=default_state_dir)
    nar_cache_size: int = setting(1 << 30, "disk budget for whole NARs of small-file paths, served zero-copy "
                                  "once cached; 0 disables (default: 1G)", parse_size, "SIZE")
    trusted_networks: tuple[str, ...] = setting(LOOPBACK, "networks (CIDR) whose clients may use the substituter "
                                                 "routes, which fetch from peers on their behalf (repeatable)",
                                                 _network, "CIDR", many=True)
    name: str = setting(None, "name shown to other peers (default: the host name)", _name, "NAME",
                        factory=socket.gethostname)
    tracker: tuple[str, ...] = setting((), "tracker URL; several (repeatable) are replicas of one tracker, used "
                                       "one at a time, the next when one fails; none: no tracker (default: none)",
                                       _optional_url, "URL", many=True)
    tracker_token_file: Path | None = setting(None, "file holding the network token of a token-membership "
                                              "tracker (mode 0600): the first line that is neither "
                                              "blank nor a # comment", Path, "FILE")
    tracker_ca_file: Path | None = setting(None, "CA certificate(s) (PEM) that an https tracker's certificate must "
                                           "chain to (default: the system's CAs)", Path, "FILE")
    peers: str | None = setting(None, "who is answered over the peer protocols: any, or fleet (the tracker's members "
                                "under closed membership, static peers, LAN peers proving the fleet token) "
                                "(default: fleet when the tracker's membership is closed or fleet_token_file is "
                                "set, else any)", _peers, "any|fleet")
    fleet_token_file: Path | None = setting(None, "file (mode 0600) of fleet tokens, one a line, 16 characters or "
                                            "more: LAN packets carry a proof of the first, packets without a proof "
                                            "of one are dropped, and peers default to fleet", Path, "FILE")
    fleet_sync: float = setting(30.0, "seconds between fetches of the tracker's member list", parse_seconds,
                                "SECONDS")
    trusted_public_keys: tuple[str, ...] = setting((CACHE_NIXOS_ORG_KEY,), "keys whose signatures make a "
                                                   "peer's path acceptable and our own path shareable "
                                                   "(repeatable)", _public_key, "KEY", many=True)
    upstream: str | None = setting("https://cache.nixos.org", "binary cache that vouches for unsigned paths "
                                   "by their NarHash, and that paths no peer holds are pulled through from; "
                                   "none: neither", _optional_url, "URL")
    pull_through: bool = setting(True, "fetch a path no peer holds from the upstream, stream it to Nix and hold it "
                                 "for the fleet; with a tracker, one host fetches each path and the others follow "
                                 "it", parse_bool)
    upstream_cache_size: int = setting(4 << 30, "disk budget for pulled-through paths, held outside the Nix store "
                                       "until Nix imports them (default: 4G)", parse_size, "SIZE")
    upstream_rate: int | None = setting(None, "bytes per second the upstream delivers NARs at, for the dashboard's "
                                        "time saved (default: as measured on paths pulled through)", parse_size,
                                        "RATE")
    pull_through_min_rate: int = setting(1 << 20, "bytes per second a host following another host's pull-through "
                                         "must get, else it goes to the upstream itself (default: 1M)", parse_size,
                                         "RATE")
    accept: Accept = setting(Accept.EITHER, "what makes a peer's path acceptable: "
                             + ", ".join(a.value for a in Accept), Accept, "POLICY")
    serve: Serve = setting(Serve.SIGNED_OR_UPSTREAM, "what peers may fetch from us: "
                           + ", ".join(s.value for s in Serve), Serve, "POLICY")
    exclude: tuple[str, ...] = setting((), "glob pattern on store path names (<hash>-<name>, e.g. '*-secrets*') "
                                       "that are never announced nor served to anyone, whatever serve says "
                                       "(repeatable)", str, "PATTERN", many=True)
    serve_all_logs: bool = setting(False, "serve every build log to peers, not only those of derivations whose "
                                   "outputs the serving policy shares", parse_bool)
    iroh_listen: str = setting("0.0.0.0:12305", "UDP address of the iroh endpoint peers connect to", _address,
                               "HOST:PORT")
    fast_path: bool = setting(True, "take nearby peers' NAR bytes over plain HTTP (asked for over iroh, checked "
                              "against the NarHash alike; on this machine or private networks only), and offer ours "
                              "so; off: every byte over iroh, and no fast-path listener", parse_bool)
    fast_path_listen: tuple[str, int] = setting(("0.0.0.0", 12306), "TCP address of the fast-path listener, which "
                                                "serves NARs only to peers holding a ticket from the iroh side",
                                                parse_listen, "HOST:PORT")
    relays: bool = setting(True, "use iroh's public relays (NAT traversal, fallback path)", parse_bool)
    discovery: bool = setting(True, "publish and resolve endpoint addresses with iroh's DNS discovery",
                              parse_bool)
    lan: bool = setting(True, "find peers on the local network by multicast and broadcast", parse_bool)
    lan_summaries: bool = setting(True, "publish a compact filter of the shareable paths' hashes to LAN peers, and "
                                  "ask a LAN peer about a path only once the peers whose filters may hold it had not",
                                  parse_bool)
    lan_port: int = setting(12304, "UDP port of LAN discovery", parse_port, "PORT")
    lan_interface: str | None = setting(None, "interface to announce on (default: the default route's)", str,
                                        "IFNAME")
    static_peers: tuple[str, ...] = setting((), "peer reached by unicast discovery, for VPNs without "
                                            "broadcast (HOST or HOST:PORT; repeatable)", str, "HOST:PORT",
                                            many=True, flag="peer")
    lan_interval: float = setting(10.0, "seconds between LAN announcements", parse_seconds, "SECONDS")
    lan_expiry: float = setting(35.0, "seconds of silence after which a LAN peer is forgotten", parse_seconds,
                              "SECONDS")
    max_upload_rate: int | None = setting(None, "bytes per second sent to peers and /store/ clients, all "
                                          "transfers together; 0: unlimited (default: the tracker's advice, "
                                          "else unlimited)", parse_size, "RATE")
    max_download_rate: int | None = setting(None, "bytes per second fetched from peers, all transfers together; "
                                            "0: unlimited (default: the tracker's advice, else unlimited)",
                                            parse_size, "RATE")
    connect_timeout: float = setting(3.0, "seconds to connect to a peer before trying the next",
                                    parse_seconds, "SECONDS")
    peer_timeout: float = setting(10.0, "seconds of silence from a peer in the middle of an answer before it "
                                  "is given up on (when no other peer has the NAR; see stall_timeout)",
                                  parse_seconds, "SECONDS")
    miss_ttl: float = setting(10.0, "seconds a path that no peer had is remembered as missing (not one whose "
                              "peers failed)", _seconds_or_zero, "SECONDS")
    split_threshold: int = setting(64 << 20, "NARs this large are fetched from several peers at once "
                                   "(default: 64M)", parse_size, "SIZE")
    max_sources: int = setting(4, "peers one NAR is fetched from at once; 1: never split", parse_count, "N")
    stall_timeout: float = setting(0.5, "seconds a peer may stay silent (before its first byte or in the "
                                   "middle of a NAR) before the next peer holding the NAR is asked too; the "
                                   "first to send carries on (split: its piece goes to peers that deliver)",
                                   parse_seconds, "SECONDS")
    compression: str = setting("auto", "zstd between peers: auto (ask remote peers for it, and compress "
                               "uploads when max_upload_rate is under 64M), always, never", _compression, "MODE")
    access_log: bool = setting(False, "log every HTTP request", parse_bool)

    def __post_init__(self) -> None:
        if self.accept in (Accept.UPSTREAM, Accept.BOTH) and self.upstream is None:
            raise ConfigError(f"accept = {self.accept.value!r} needs an upstream cache")

    @property
    def secret_key_file(self) -> Path | None:
        env = os.environ.get("NIX_SECRET_KEY_FILE")
        return self.sign_key_file or (Path(env) if env else None)


SETTINGS = {f.name: f for f in dataclasses.fields(Config)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags stay None so the file and defaults can apply."""
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings (keys as below, "
                        "with underscores); flags override it")
    parser.add_argument("--no-tracker", dest="tracker", action="store_const", const="none",
                        help="no tracker, even if the config file names one: LAN discovery only")
    for name, f in SETTINGS.items():
        help = f.metadata["help"]
        if "default:" not in help and f.default is not None:
            help += f" (default: {_shown(f.default)})"
        flag = "--" + (f.metadata["flag"] or name.replace("_", "-"))
        if f.metadata["parse"] is parse_bool:
            parser.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction, help=help)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=f.metadata["metavar"], help=help,
                                action="append" if f.metadata["many"] else "store")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"
    if isinstance(value, tuple):
        return ", ".join(value) or "none"
    return str(value.value if isinstance(value, enum.Enum) else value)


def load(args: argparse.Namespace) -> Config:
    """Defaults, then the TOML file, then flags; every value goes through its setting's parser."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            with open(args.config, "rb") as file:
                values.update(tomllib.load(file))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"{args.config}: {error}") from None
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"{args.config}: unknown setting(s): {', '.join(unknown)}")
    values.update({name: getattr(args, name) for name in SETTINGS if getattr(args, name, None) is not None})
    parsed = {}
    for name, value in values.items():
        f = SETTINGS[name]
        try:
            if f.metadata["many"]:
                items = value if isinstance(value, list) else [value]
                parsed[name] = tuple(item for item in map(f.metadata["parse"], items) if item is not None)
            else:
                parsed[name] = f.metadata["parse"](value)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{name.replace('_', '-')}: {error}") from None
    return Config(**parsed)
