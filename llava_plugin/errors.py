"""The toolkit's one error base class.

A `GenfeedbackError` is a failure the user can fix: a bad flag, config value, file, sample or
checkpoint. Its message is one line that names the file, sample or flag and says what to do;
every CLI prints it as `error: ...` and exits with code 2 (llava_plugin.cli), with a traceback
only under --debug. Anything else escaping a CLI is a bug in genfeedback and keeps its traceback.
"""
from __future__ import annotations


class GenfeedbackError(Exception):
    """A user-fixable failure; the message names what is wrong and what to do."""
