"""The `lumen` command: argument parsing only; every subcommand calls a library function.

Each area registers its own subcommands (data.py, model.py, review.py) so the CLI and the
Dagster assets are thin callers of the same code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pipelines.errors import LumenError


def build_parser() -> argparse.ArgumentParser:
    from lumen_cli import data, model, review

    parser = argparse.ArgumentParser(
        prog="lumen",
        description="Lumen pipeline: sources -> instruction/heatmap shards -> model -> review in FiftyOne.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in (data, model, review):
        area.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        rc = args.func(args)
    except LumenError as exc:  # bad input: one clear line, no traceback
        print(f"lumen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lumen: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
