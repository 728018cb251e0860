"""`python -m quote_client tail [...]`: the command-line tools of the client package. The
tail's own options are parsed by quote_client.tail, so `tail --help` shows them."""

from __future__ import annotations

import argparse
import sys

PROG = "python -m quote_client"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "tail":
        from .tail import main as tail_main

        return tail_main(args[1:], prog=f"{PROG} tail")
    parser = argparse.ArgumentParser(
        prog=PROG, description="Command-line tools built on the Python quote client.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("tail", help="a live, in-place ticker in the terminal (see tail --help)")
    parser.parse_args(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
