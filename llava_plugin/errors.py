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


def missing_local_path(location) -> bool:
    """A location written as a local path (absolute, ./, ../ or ~) that does not exist: not a hub id to
    look up, so "does not exist" is the whole answer (a loader would call it a malformed repo id, or
    blame a corrupt file)."""
    from pathlib import Path

    return str(location).startswith(("/", ".", "~")) and not Path(location).expanduser().exists()


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


class DiskFullError(GenfeedbackError, OSError):
    """A checkpoint, export or results write that ran out of disk space (cleaned away)."""


# what torch (its zip writer), safetensors and DeepSpeed say when a write fails, without saying why
_FAILED_WRITE = ("basic_ios::clear", "iostream error", "unexpected pos", "failed writing", "write failed")


def _causes(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _free_bytes(path) -> int:
    import shutil
    from pathlib import Path

    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def is_disk_full(err: BaseException, path, need_bytes: int) -> bool:
    """ENOSPC (or a quota), said as such or wrapped by a library; a write that failed without a reason
    counts when the disk under `path` has less than `need_bytes` free."""
    import errno

    for cause in _causes(err):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(cause).lower()
        if "no space left" in text or "os error 28" in text or "quota exceeded" in text:
            return True
        if any(marker in text for marker in _FAILED_WRITE):
            return _free_bytes(path) < need_bytes
    return False


def naming_disk_full(path, need_bytes, cleanup=()):
    """A context for the writes of one checkpoint, export or result under `path`: a full disk becomes a
    `DiskFullError` "no space left on <path>: need about N MB" after the half-written `cleanup` paths
    are removed. `need_bytes`: an int, or a callable computing it only when needed."""
    import contextlib
    import shutil
    from pathlib import Path

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except DiskFullError:
            raise
        except Exception as err:
            need = need_bytes() if callable(need_bytes) else need_bytes
            if not is_disk_full(err, path, need):
                raise
            for leftover in map(Path, cleanup):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
            raise DiskFullError(f"no space left on {path}: need about {_megabytes(need)} MB "
                                f"({_megabytes(_free_bytes(path))} MB free after removing the partial write); free "
                                "space there or write to another disk") from err

    return guard()


def _megabytes(size: int) -> str:
    mb = size / 2**20
    return f"{mb:.0f}" if mb >= 10 else f"{mb:.1f}"


def tensor_bytes(tensors) -> int:
    """Bytes of the tensors in a state dict (or any iterable of tensors): what writing them needs."""
    values = tensors.values() if hasattr(tensors, "values") else tensors
    return sum(t.numel() * t.element_size() for t in values if hasattr(t, "element_size"))
