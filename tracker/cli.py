"""The `peerix-tracker` command."""

import argparse
import asyncio
import sys

from peerix import __version__, logs

from . import config
from .db import DatabaseError


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    asyncio.run(serve(config.load(args)))
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        return args.func(args)
    except (config.ConfigError, DatabaseError) as error:
        print(f"peerix-tracker: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
