"""The toolkit's one error base class.

A `GenfeedbackError` is a failure the user can fix: a bad flag, config value, file, sample or
checkpoint. Its message is one line that names the file, sample or flag and says what to do;
every CLI prints it as `error: ...` and exits with code 2 (llava_plugin.cli), with a traceback
only under --debug. Anything else escaping a CLI is a bug in genfeedback and keeps its traceback.
"""
from __future__ import annotations


class GenfeedbackError(Exception):
    """A user-fixable failure; the message names what is wrong and what to do."""


class BadFileError(GenfeedbackError):
    """A file the toolkit reads is missing, truncated or not in its format."""


def _read_text(path, label: str, fix: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise BadFileError(f"{label} not found" + (f": {fix}" if fix else "")) from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadFileError(f"cannot read {label}: {err}") from None


def read_json(path, what: str = "", fix: str = ""):
    """JSON from `path`, or a `BadFileError` naming the file, where it breaks and what to do."""
    import json
    from pathlib import Path

    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    text = _read_text(path, label, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadFileError(f"{label} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                           f"{fix or 'it may be truncated: rewrite it'}") from None


def read_jsonl(path, what: str = "", fix: str = "", *, torn_last_line_ok: bool = False) -> list:
    """One JSON value per non-blank line of `path`, or a `BadFileError` naming the file and the line.
    With `torn_last_line_ok` (an append-only log that a kill can cut mid-write) a bad last line is dropped
    with a warning."""
    import json
    import logging
    from pathlib import Path

    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    lines = _read_text(path, label, fix).splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if torn_last_line_ok and number == len(lines):
                logging.getLogger(__name__).warning("%s: ignoring a torn last line (the run was killed while "
                                                    "writing it)", path)
                break
            raise BadFileError(f"{label}:{number} is not valid JSON ({err.msg}); "
                               f"{fix or 'it may be truncated: rewrite it'}") from None
    return rows
