"""The `peerix-tracker` command."""

import argparse
import asyncio
import secrets
import sys
from pathlib import Path

from peerix import __version__
from peerix.common import logs
from peerix.common.secrets import SecretFileError, add_token

from . import config
from .admin import AdminError
from .storage import DatabaseError


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    asyncio.run(serve(config.load(args)))
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from .admin import run

    return run(args)


def cmd_token(args: argparse.Namespace) -> int:
    """A new network or admin token; with FILE, also added to that token file."""
    token = secrets.token_urlsafe(24)  # 32 characters, 192 random bits
    if args.file:
        add_token(args.file, token)
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peerix-tracker",
                                     description="The peerix tracker: which online peers hold which store paths.")
    parser.add_argument("--version", action="version", version=f"peerix-tracker {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log verbosity (default: info)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve the tracker API and dashboard",
        description="Serve the tracker. Settings come from --config FILE (TOML, keys as the flags without "
                    "dashes: offline_after = \"3m\") and from flags, which win.")
    config.add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    token = commands.add_parser(
        "token", help="make a token for token_file or admin_token_file",
        description="Print a new random token (32 characters). With FILE, also add it to that token file as a "
                    "new line (the file is made with mode 0600 if missing): tokens are rotated by listing the new "
                    "one beside the old.")
    token.add_argument("file", nargs="?", type=Path, metavar="FILE", help="token file to add it to")
    token.set_defaults(func=cmd_token)

    admin = commands.add_parser(
        "admin", help="list, remove and purge peers, read the audit trail, through the admin API",
        description="Administer a running tracker through its admin API (the tracker needs an admin_token_file).")
    admin.add_argument("--url", default=f"http://127.0.0.1:{config.DEFAULT_PORT}",
                       help="the tracker's address (default: %(default)s)")
    admin.add_argument("--token-file", type=Path, help="file holding an admin token (mode 0600)")
    admin.add_argument("--ca-file", type=Path, help="CA certificate(s) an https tracker's certificate must chain to "
                                                    "(default: the system's CAs)")
    actions = admin.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("peers", help="every peer, online or not, with its path count")
    listing.add_argument("--json", action="store_true", help="print JSON")
    actions.add_parser("health", help="the tracker's health")
    audit = actions.add_parser("audit", help="the audit trail: membership changes, admin actions, refused writes")
    audit.add_argument("--since", metavar="WHEN", help="only events since WHEN: a duration ago (3m, 12h, 7d), an "
                                                       "ISO 8601 time or Unix seconds")
    audit.add_argument("--json", action="store_true", help="print the events as JSON lines")
    for action, summary in (("remove", "remove a peer and everything it announced"),
                            ("purge", "drop a peer's paths; it announces its set afresh")):
        parser_ = actions.add_parser(action, help=summary)
        parser_.add_argument("peer", metavar="PEER", help="peer id, a unique prefix of it, or the peer's name")
    admin.set_defaults(func=cmd_admin)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        return args.func(args)
    except (config.ConfigError, DatabaseError, AdminError, SecretFileError) as error:
        print(f"peerix-tracker: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
