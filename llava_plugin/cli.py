"""What every genfeedback command line shares: launcher flags, the error-to-exit-code rule.

    parser = argparse.ArgumentParser(...); add_launcher_flags(parser)
    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        return guarded(lambda: dispatch(args), debug=args.debug)
    sys.exit(run_cli(main))

- `add_launcher_flags`: the `deepspeed` launcher passes `--local_rank=N` (torchrun sets LOCAL_RANK
  instead); the rank is read from the environment either way, so the flag is accepted and unused.
  `--debug` shows tracebacks.
- `guarded`: a `GenfeedbackError` (llava_plugin.errors) becomes one line on stderr and exit code 2; so
  does, on the other ranks of a multi-process run, the collective that finds the failed rank gone.
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
    """Run a command; a `GenfeedbackError` becomes `error: ...` on stderr and exit code 2, and so does a
    collective that finds another rank gone (that rank prints the cause)."""
    debug = debug or os.environ.get(DEBUG_ENV) == "1"
    try:
        return command()
    except GenfeedbackError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from llava_plugin import distributed

        if debug or not distributed.lost_a_peer(err):
            raise
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        print(f"error: rank {distributed.rank()} stopped because another rank stopped first (its error is "
              f"above; here: {detail})", file=sys.stderr)
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
