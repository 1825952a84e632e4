"""The `peerix` command."""

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from . import __version__, config, logs
from .nix.signing import SecretKey
from .secrets import SecretFileError, load_secret_key, write_secret
from .store.local import StoreError

log = logging.getLogger("peerix")


def cmd_keygen(args: argparse.Namespace) -> int:
    key = SecretKey.generate(args.name)
    write_secret(args.secret_file, key.to_text(), overwrite=args.force)
    args.public_file.write_text(key.public.to_text())  # no newline, as nix-store --generate-binary-cache-key
    print(key.public.to_text())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .daemon import host_key, run

    settings = config.load(args)
    asyncio.run(run(settings, host_key(settings)))
    return 0


def cmd_public_key(args: argparse.Namespace) -> int:
    print(load_secret_key(args.secret_file).public.to_text())
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    import json
    import time

    import httpx

    try:
        peers = httpx.get(f"{args.url.rstrip('/')}/api/v1/peers", timeout=5).raise_for_status().json()["peers"]
    except (httpx.HTTPError, ValueError, KeyError) as error:
        print(f"peerix peers: cannot ask the daemon at {args.url}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(peers, indent=2))
        return 0
    rows = [("NAME", "SOURCE", "PEER", "ADDRESSES", "LAST SEEN", "REPUTATION")]
    for peer in peers:
        seen = f"{time.time() - peer['last_seen']:.0f}s ago" if peer.get("last_seen") else "-"
        rep = peer.get("reputation")
        reputation = "-" if rep is None else (
            f"{rep['successes']} ok/{rep['failures']} failed"
            + (f", {rep['latency_ms']} ms" if rep["latency_ms"] is not None else "")
            + (", backing off" if rep["backing_off"] else ""))
        addresses = ",".join(peer["direct_addresses"]) or peer.get("relay_url") or "-"
        rows.append((peer.get("name") or "?", peer["source"], peer["peer_id"][:12], addresses, seen, reputation))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
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

    peers = commands.add_parser("peers", help="list the peers the local daemon knows",
                                description="List the peers the running daemon knows: source (lan, static, "
                                            "tracker), addresses, last seen and reputation.")
    peers.add_argument("--url", default=f"http://127.0.0.1:{config.DEFAULT_PORT}",
                       help="the daemon's HTTP address (default: %(default)s)")
    peers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    peers.set_defaults(func=cmd_peers)

    demo = commands.add_parser("demo", help="serve a fresh closure from one chroot store to another with real Nix",
                               description="Build a small closure, serve it from host A with peerix and substitute "
                                           "it into host B with real Nix (needs nix; uses a temporary directory).")
    demo.add_argument("--keep", action="store_true", help="keep the temporary hosts for inspection")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        return args.func(args)
    except (SecretFileError, StoreError, config.ConfigError) as error:
        print(f"peerix: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
