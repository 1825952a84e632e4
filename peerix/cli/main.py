"""The `peerix` command."""

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .. import __version__
from ..common import logs
from ..common.secrets import SecretFileError, load_secret_key, write_secret
from ..daemon import config
from ..nix.signing import SecretKey
from ..store.local import StoreError


class CommandError(Exception):
    """What a person can act on: printed as one line, exit status 2."""


def cmd_keygen(args: argparse.Namespace) -> int:
    key = SecretKey.generate(args.name)
    write_secret(args.secret_file, key.to_text(), overwrite=args.force)
    try:
        args.public_file.parent.mkdir(parents=True, exist_ok=True)
        args.public_file.write_text(key.public.to_text())  # no newline, as nix-store --generate-binary-cache-key
    except OSError as error:
        raise CommandError(f"cannot write {args.public_file}: {error.strerror}") from None
    print(key.public.to_text())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..daemon.run import run
    from ..net.endpoint import BindError
    from ..net.lan import LanError
    from ..net.tracker_client import TrackerError

    try:
        asyncio.run(run(config.load(args)))
    except (BindError, LanError, TrackerError) as error:
        raise CommandError(str(error)) from None
    return 0


def cmd_public_key(args: argparse.Namespace) -> int:
    print(load_secret_key(args.secret_file).public.to_text())
    return 0


def ask_daemon(url: str, path: str, timeout: float = 10) -> dict:
    import httpx

    try:
        return httpx.get(f"{url.rstrip('/')}{path}", timeout=timeout).raise_for_status().json()
    except (httpx.HTTPError, ValueError) as error:
        raise CommandError(f"cannot ask the daemon at {url}: {error}") from None


def hash_of(text: str) -> str:
    """The hash part of a store path, a basename or a bare hash."""
    from ..nix.storepath import is_hash_part

    candidate = text.rstrip("/").rsplit("/", 1)[-1][:32]
    if not is_hash_part(candidate):
        raise CommandError(f"{text!r} is not a store path or hash")
    return candidate


def cmd_status(args: argparse.Namespace) -> int:
    from ..common.units import ago, counted, duration

    health = ask_daemon(args.url, "/health")
    if "store_root" not in health:
        raise CommandError(f"{args.url} is not a peerix daemon: its /health says nothing of a store "
                           "(a tracker? it has peerix-tracker admin)")
    if args.json:
        print(json.dumps(health, indent=2))
        return 0 if health.get("status") == "ok" else 1
    network = health.get("network") or {}
    tracker = network.get("tracker")
    cache = health.get("nar_cache")
    status = health["status"]
    if tracker and tracker.get("in_backoff"):
        status += f": the tracker failed, asked again in {duration(tracker.get('backoff_s') or 0)}"
    if tracker:
        announced = tracker.get("announced_paths")
        tracker_line = tracker["url"] + ", " + (
            "nothing announced yet" if announced is None else
            f"{counted(announced, 'path')} announced {ago(tracker.get('last_announce'), time.time())}")
        if tracker.get("last_error"):
            tracker_line += f"; last error: {tracker['last_error']}"
    else:
        tracker_line = "none: LAN and static peers only"
    peers = f"{network.get('peers_known', 0)} known"
    sources = [f"{network[key]} {where}" for key, where in (("lan_peers", "on the LAN or static"),
                                                          ("tracker_peers", "named by the tracker"))
               if network.get(key) is not None]
    if sources:
        peers += f" ({', '.join(sources)})"
    peers += f", {network.get('peers_backing_off', 0)} backing off, {network.get('peers_banned', 0)} banned"
    lines = [
        f"status      {status} (peerix {health['version']})",
        f"identity    {network.get('name')}, peer {network.get('peer_id')}",
        f"signing key {health.get('signing_key')}",
        f"store       {health['store_root']}: {health.get('paths', '?')} paths, database {health.get('database')}",
        f"tracker     {tracker_line}",
        f"peers       {peers}",
        f"addresses   {', '.join(network.get('direct_addresses') or []) or '-'}"
        + (f", relay {network['relay_url']}" if network.get("relay_url") else ""),
    ]
    if cache:
        lines.append(f"nar cache   {cache['entries']} NARs, {cache['bytes'] / 2**20:.1f} MiB")
    print("\n".join(lines))
    return 0 if health.get("status") == "ok" else 1


def cmd_why(args: argparse.Namespace) -> int:
    from .why import describe

    why = ask_daemon(args.url, f"/api/v1/why/{hash_of(args.path)}", timeout=30)
    print(json.dumps(why, indent=2) if args.json else describe(why))
    return 0 if why["substitutable"] else 1


def cmd_peers(args: argparse.Namespace) -> int:
    from ..common.units import ago
    from ..http.dashboard import admitted_text, reputation_text

    peers = ask_daemon(args.url, "/api/v1/peers")["peers"]
    if args.json:
        print(json.dumps(peers, indent=2))
        return 0
    if not peers:
        print("no peers known yet: LAN and static peers appear once they announce themselves, a tracker's peers "
              "once it names them for a path this host looked up")
        return 0
    now = time.time()
    rows = [("NAME", "SOURCE", "PEER", "ADDRESSES", "LAST SEEN", "ANSWERED", "REPUTATION")]
    rows += [(peer.get("name") or "?", peer["source"], peer["peer_id"][:12],
              ",".join(peer["direct_addresses"]) or peer.get("relay_url") or "-",
              ago(peer.get("last_seen"), now), admitted_text(peer.get("admitted")),
              reputation_text(peer.get("reputation"))) for peer in peers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from .fetch import FetchError, fetch

    try:
        fetch(args.url, args.paths, args.store)
    except FetchError as error:
        print(f"peerix fetch: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoError, run_demo

    try:
        run_demo(keep=args.keep)
    except DemoError as error:
        print(f"peerix demo: {error}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peerix", description="Peer-to-peer binary cache for Nix.")
    parser.add_argument("--version", action="version", version=f"peerix {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log verbosity (default: info)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keygen = commands.add_parser("keygen", help="create a Nix-compatible signing key pair",
                                 description="Create an ed25519 key pair in Nix's format (name:base64).")
    keygen.add_argument("name", help="key name, e.g. host.example.org-1")
    keygen.add_argument("--secret-file", type=Path, required=True, help="where to write the secret key (mode 0600)")
    keygen.add_argument("--public-file", type=Path, required=True, help="where to write the public key")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing secret file")
    keygen.set_defaults(func=cmd_keygen)

    public_key = commands.add_parser("public-key", help="print the public key of a secret key file",
                                     description="Print the Nix public key (name:base64) of a secret key file.")
    public_key.add_argument("secret_file", type=Path, metavar="SECRET_FILE")
    public_key.set_defaults(func=cmd_public_key)

    serve = commands.add_parser(
        "serve", help="run the daemon: a signed binary cache of the local store and the peer network",
        description="Serve the local Nix store over HTTP as a binary cache that Nix substitutes from, share it "
                    "with peers over iroh, and fetch from peers what the local store lacks.")
    config.add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    def daemon_command(name: str, func: Callable[[argparse.Namespace], int], summary: str,
                       description: str, json_output: bool = True) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=summary, description=description)
        command.add_argument("--url", default=f"http://127.0.0.1:{config.DEFAULT_PORT}",
                             help="the daemon's HTTP address (default: %(default)s)")
        if json_output:
            command.add_argument("--json", action="store_true", help="print JSON")
        command.set_defaults(func=func)
        return command

    daemon_command("status", cmd_status, "the local daemon's health, identity, tracker and counts",
                   "Show the running daemon's health, identity, tracker connection and counts.")
    daemon_command("peers", cmd_peers, "list the peers the local daemon knows",
                   "List the peers the running daemon knows: source (lan, static, tracker), addresses, last seen "
                   "and reputation.")
    why = daemon_command("why", cmd_why, "explain whether and from where a path would be substituted",
                         "Ask the running daemon what would happen if Nix asked for PATH now: local or from which "
                         "peer, and what policy decides about each peer's copy. Changes nothing.")
    why.add_argument("path", metavar="PATH", help="a store path, its basename or its 32-character hash")
    fetch = daemon_command("fetch", cmd_fetch, "substitute paths and their closures, showing progress",
                           "Substitute store paths (with their closures) with nix-store --realise, showing how "
                           "much the daemon has delivered, at what rate, and the time left. Quiet when piped.",
                           json_output=False)
    fetch.add_argument("paths", nargs="+", metavar="PATH", help="store paths")
    fetch.add_argument("--store", metavar="DIR", help="a chroot store root to fetch into (then only the daemon "
                                                       "is used as substituter)")

    demo = commands.add_parser("demo", help="three hosts and a tracker on this machine, substituting with real Nix",
                               description="Start a tracker and three hosts (chroot stores in a temporary "
                                           "directory, peerix daemons on loopback); host C's Nix installs paths "
                                           "that only A and B hold, through C's peerix. Needs nix.")
    demo.add_argument("--keep", action="store_true", help="keep the temporary hosts for inspection")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        return args.func(args)
    except (SecretFileError, StoreError, config.ConfigError, CommandError) as error:
        print(f"peerix: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

