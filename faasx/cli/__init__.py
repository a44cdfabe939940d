"""The ``faasx`` command: see what a run is doing without reading its log files.

::

    faasx status [RUN_DIR] [--watch] [--json]   blocks, managers, task counts, last errors of a live run
                                                (or the final counts of a finished one)
    faasx logs TASK_ID [RUN_DIR]                one task's path through the client, interchange,
                                                manager and worker logs, and what it printed
    faasx ps                                    faasx processes on this host, grouped by run
    faasx clean --older-than 7d [--dry-run]     remove old run directories under ./runinfo

``RUN_DIR`` defaults to the newest run under ``./runinfo``; it may be a run directory (one
``faasx.Executor``'s, or a Parsl run's ``runinfo/NNN``) or one executor's log directory in it.
``status`` talks to the run's control endpoint (``faasx.executor.control``): a Unix socket only the
run's own user can use.  Each subcommand lives in its own module.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    from faasx.cli import clean, logs, ps, status
    from faasx.version import VERSION
    parser = argparse.ArgumentParser(prog="faasx", description="Inspect faasx runs on this host.")
    parser.add_argument("--version", action="version", version=f"faasx {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (status, logs, ps, clean):
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from faasx.cli.runs import NoRun
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except NoRun as e:            # every command that reads a run: where it looked, and exit 2
        print(f"faasx {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:       # `faasx logs 7 | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
