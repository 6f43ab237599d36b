"""Shared command-line plumbing: logging flags, and mapping errors to exit codes.

Exit codes: 0 ok, 1 user error (:class:`~xtrt.errors.XtrtError`), 2 usage error (argparse).
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from xtrt.errors import XtrtError

__all__ = ["add_common_args", "configure_logging", "run_main"]


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add -v/--verbose and -q/--quiet."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and tracebacks on errors")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="warnings and the summary line only; no progress bars")


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Configure the ``xtrt`` logger tree (only ever called by a ``__main__``)."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[xtrt] %(message)s" if not verbose
                                           else "[%(name)s %(levelname)s] %(message)s"))
    root = logging.getLogger("xtrt")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``, turning an XtrtError into one line on stderr and exit code 1.

    ``-v`` anywhere in argv keeps the traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in args or "--verbose" in args
    try:
        return int(main(args) or 0)
    except XtrtError as exc:
        if verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", 2)  # xtrt.outdir.Interrupted carries SIGTERM too
        name = "SIGTERM" if signum == 15 else "SIGINT"
        staged = "; nothing was written (the staging folder was removed)" \
            if hasattr(exc, "signum") else ""
        print(f"error: interrupted by {name}{staged}", file=sys.stderr)
        return 128 + signum
    except SystemExit as exc:  # argparse usage errors arrive here with code 2
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
