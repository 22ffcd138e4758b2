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


def test_a_lost_peer_is_a_line_only_in_a_multi_process_run(capsys, monkeypatch):
    from llava_plugin import distributed

    def lost():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:38284")

    with pytest.raises(RuntimeError, match="Connection closed by peer"):  # one process: no peer to lose
        guarded(lost)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert guarded(lost) == 2
    assert capsys.readouterr().err == (
        "error: rank 1 stopped because another rank stopped first (its error is above; here: "
        "[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:38284)\n")
    with pytest.raises(RuntimeError, match="a bug on rank 1"):  # any other error keeps its traceback
        guarded(lambda: (_ for _ in ()).throw(RuntimeError("a bug on rank 1")))
