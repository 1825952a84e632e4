"""The `peerix` command."""

import argparse
import asyncio
import logging
import os
import re
import sys
from pathlib import Path

from . import __version__, logs
from .nix.signing import KeyFormatError, SecretKey
from .secrets import SecretFileError, read_secret, write_secret
from .store.local import StoreError

log = logging.getLogger("peerix")

DEFAULT_PORT = 12304


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, with IPv6 hosts in brackets ([::1]:12304)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_size(text: str) -> int:
    """Bytes, optionally with a K, M, G or T suffix (powers of 1024)."""
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 1073741824, 512M or 1G, got {text!r}")
    return int(match[1]) << (10 * " KMGT".index(match[2].upper() or " "))


def default_state_dir() -> Path:
    """systemd's StateDirectory, else /var/lib/peerix for root, else the XDG state directory."""
    if state := os.environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/peerix")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "peerix"


def load_secret_key(path: Path) -> SecretKey:
    try:
        return SecretKey.parse(read_secret(path))
    except KeyFormatError as error:
        raise SecretFileError(f"{path}: {error}") from None


def cmd_keygen(args: argparse.Namespace) -> int:
    key = SecretKey.generate(args.name)
    write_secret(args.secret_file, key.to_text(), overwrite=args.force)
    args.public_file.write_text(key.public.to_text())
    print(key.public.to_text())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    args.state_dir = args.state_dir or default_state_dir()
    key_file = args.sign_key_file or os.environ.get("NIX_SECRET_KEY_FILE")
    key = load_secret_key(Path(key_file)) if key_file else None
    if key is None:
        log.warning("no signing key (--sign-key-file or NIX_SECRET_KEY_FILE): narinfo carries only existing signatures")
    asyncio.run(serve(args, key))
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

    serve = commands.add_parser("serve", help="serve a Nix store as a signed binary cache",
                                description="Serve a Nix store over HTTP as a binary cache that Nix substitutes from.")
    serve.add_argument("--store-root", type=Path, default=Path("/"),
                       help="root of the Nix store: / or a chroot store such as /tmp/hostA (default: /)")
    serve.add_argument("--listen", type=parse_listen, default=("127.0.0.1", DEFAULT_PORT), metavar="HOST:PORT",
                       help=f"address to listen on (default: 127.0.0.1:{DEFAULT_PORT})")
    serve.add_argument("--sign-key-file", metavar="FILE",
                       help="secret key to sign narinfo with (default: $NIX_SECRET_KEY_FILE)")
    serve.add_argument("--priority", type=int, default=30,
                       help="Priority in nix-cache-info; lower wins, cache.nixos.org is 40 (default: 30)")
    serve.add_argument("--state-dir", type=Path, default=None,
                       help="where peerix keeps its state and NAR cache (default: $STATE_DIRECTORY, "
                            "/var/lib/peerix as root, else ~/.local/state/peerix)")
    serve.add_argument("--nar-cache-size", type=parse_size, default=1 << 30, metavar="SIZE",
                       help="disk budget for whole NARs of paths made of many small files, served "
                            "zero-copy once cached; 0 disables (default: 1G)")
    serve.add_argument("--access-log", action="store_true", help="log every HTTP request")
    serve.set_defaults(func=cmd_serve)

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
    except (SecretFileError, StoreError) as error:
        print(f"peerix: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
