"""What every command line shares (llava_plugin.cli): the deepspeed launcher's --local_rank, and user
errors as one line with exit code 2."""
import pytest

from llava_plugin.cli import guarded
from llava_plugin.config import ConfigError
from llava_plugin.errors import GenfeedbackError


@pytest.mark.parametrize("module, argv", [
    ("enhance.__main__", ["--local_rank=0", "presets"]),
    ("mllm_train.__main__", ["--local_rank=0", "pretrain", "--vision-tower", "v", "--llm", "l"]),
    ("mllm_train.__main__", ["--local-rank", "1", "finetune", "--lora"]),
])
def test_stage_clis_accept_the_deepspeed_launchers_local_rank(module, argv):
    import importlib

    args = importlib.import_module(module).build_parser().parse_args(argv)
    assert args.local_rank in (0, 1) and not args.debug


def test_user_errors_are_one_line_and_exit_2(capsys):
    def bad():
        raise ConfigError("optim.lr=0: must be > 0")

    assert guarded(bad) == 2
    err = capsys.readouterr().err
    assert err == "error: optim.lr=0: must be > 0\n"
    assert guarded(bad, debug=True) == 2
    assert "Traceback" in capsys.readouterr().err
    assert guarded(lambda: 0) == 0
    assert issubclass(ConfigError, GenfeedbackError) and issubclass(ConfigError, ValueError)

    def bug():
        raise RuntimeError("a genfeedback bug keeps its traceback")

    with pytest.raises(RuntimeError):
        guarded(bug)
