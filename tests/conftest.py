"""Shared fixtures. Everything runs offline on the tiny zoo, built once per session."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """The tiny zoo (models + data in hub layouts), written once for the whole session."""
    from llava_plugin.toy import build_zoo

    return build_zoo(tmp_path_factory.mktemp("zoo"), seed=0)
