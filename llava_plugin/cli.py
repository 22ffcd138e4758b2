"""What every genfeedback command line shares: launcher flags, the error-to-exit-code rule.

    parser = argparse.ArgumentParser(...); add_launcher_flags(parser)
    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        return guarded(lambda: dispatch(args), debug=args.debug)
    sys.exit(run_cli(main))

- `add_launcher_flags`: the `deepspeed` launcher passes `--local_rank=N` (torchrun sets LOCAL_RANK
  instead); the rank is read from the environment either way, so the flag is accepted and unused.
  `--debug` shows tracebacks.
- `guarded`: a `GenfeedbackError` (llava_plugin.errors) becomes one line on stderr and exit code 2.
- `run_cli`: the process entry point; after a clean run every rank leaves the process group together.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

from llava_plugin.errors import GenfeedbackError

DEBUG_ENV = "GENFEEDBACK_DEBUG"


def add_launcher_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true",
                        help=f"show Python tracebacks for user errors too (or set {DEBUG_ENV}=1)")


def guarded(command: Callable[[], int], *, debug: bool = False) -> int:
    """Run a command; a `GenfeedbackError` becomes `error: ...` on stderr and exit code 2."""
    try:
        return command()
    except GenfeedbackError as err:
        if debug or os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2


def run_cli(main: Callable[[list[str] | None], int]) -> int:
    """The process entry point: main(argv) (which maps user errors with `guarded`); after a clean
    run every rank leaves the process group together. After an error there is no barrier: the
    other ranks may never reach it (the launcher ends them)."""
    try:
        code = main(sys.argv[1:])
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if code == 0:
        from llava_plugin import distributed

        distributed.shutdown()
    return code
