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
    """The tiny zoo (models + data in hub layouts), written once for the whole session.

    For quick local iterations, GENFEEDBACK_TEST_ZOO=DIR reuses a zoo written earlier by
    `python -m llava_plugin.toy --out DIR` (CI never sets it: there the zoo is always fresh).
    """
    from llava_plugin.toy import build_zoo, load_zoo

    prebuilt = os.environ.get("GENFEEDBACK_TEST_ZOO")
    if prebuilt:
        return load_zoo(prebuilt)
    return build_zoo(tmp_path_factory.mktemp("zoo"), seed=0)
