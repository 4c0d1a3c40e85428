"""Full fine-tunes in training layouts: FSDP distributed checkpoints and DeepSpeed ZeRO folders.

Each checkpoint is written by its own library: ``torch.distributed.checkpoint.save``
(in one process with ``no_dist=True``, as accelerate lays it out, and by two
gloo ranks holding sharded DTensors) and DeepSpeed's ``engine.save_checkpoint``
(ZeRO 2 and 3, run in a subprocess). The base is a tiny LLaMA saved with
``save_pretrained``; the reference ΔW is the tuned state dict minus the base's,
in float64, taken from the tensors the test wrote (never read back by spectra).
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra.errors import FormatError, MissingBaseError
from spectra.loaders.naming.architectures import canonical_name
from tests.helpers.checks import DTYPES, assert_same_reads, dtype_id, read_deltas, relative_error
from tests.helpers.models import llama_config

ALL = "all"


def _tiny_llama(dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = llama_config(hidden=32, intermediate=48, heads=4, vocab=50)
    return LlamaForCausalLM(config).to(dtype), config


def _tuned(base: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Every weight moved by noise (added in float32, stored back in the base's dtype)."""
    generator = torch.Generator().manual_seed(seed)
    tuned = {}
    for name, tensor in base.items():
        noise = 0.02 * torch.randn(tensor.shape, generator=generator)
        tuned[name] = (tensor.float() + noise).to(tensor.dtype).contiguous()
    return tuned


class Pair:
    """A base model folder, the tuned state dict and the reference ΔW per tensor name."""

    def __init__(self, root: Path, dtype: torch.dtype):
        model, _ = _tiny_llama(dtype, seed=0)
        self.base = root / "base"
        model.save_pretrained(str(self.base))
        base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.tuned = _tuned(base_state, seed=1)
        self.reference = {
            name: (self.tuned[name].double() - base_state[name].double()).numpy()
            for name in base_state
        }


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    made = {}

    def pair(dtype: torch.dtype) -> Pair:
        if dtype not in made:
            made[dtype] = Pair(tmp_path_factory.mktemp(f"llama-{dtype_id(dtype)}"), dtype)
        return made[dtype]

    return pair


def _wrapped(name: str) -> str:
    """The name as FSDP with activation checkpointing writes it inside a decoder layer."""
    return name.replace("self_attn.", "_fsdp_wrapped_module._checkpoint_wrapped_module.self_attn.")


def _write_dcp(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    """accelerate's layout: ``{"model": state_dict}`` saved by DCP in ``pytorch_model_fsdp_0/``."""
    import torch.distributed.checkpoint as dcp

    target = folder / "pytorch_model_fsdp_0"
    wrapped = {_wrapped(name): tensor for name, tensor in state.items()}
    dcp.save(
        {"model": wrapped, "step": 7},
        storage_writer=dcp.FileSystemWriter(str(target)),
        no_dist=True,
    )
    (folder / "random_states_0.pkl").write_bytes(b"")  # what else accelerate leaves there
    return folder


def _check(checkpoint, pair: Pair) -> list:
    reads = read_deltas(checkpoint, modules=ALL)
    assert reads, "nothing analysed"
    for read in reads:
        name = canonical_name(read.delta.name)
        reference = pair.reference[name]
        assert relative_error(read.dense, reference) < 1e-6, read.delta.key
    return reads


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_fsdp_dcp_folder_matches_the_state_dict_written(tmp_path, pairs, dtype):
    pair = pairs(dtype)
    folder = _write_dcp(tmp_path / "checkpoint-7", pair.tuned)
    for path in (folder, folder / "pytorch_model_fsdp_0"):  # accelerate's folder or the model's
        checkpoint = spectra.load(path, base=pair.base)
        assert checkpoint.format == "full"
        first = _check(checkpoint, pair)
        assert len(first) == 2 * 7  # q k v o gate up down in each of 2 layers
        assert_same_reads(first, _check(checkpoint, pair))  # read twice: the same tensors
        assert {r.delta.source_dtype for r in first} == {dtype}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_SHARDED_WRITER = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp

    def work(rank, folder, port):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=2)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor
        mesh = init_device_mesh("cpu", (2,))
        state = torch.load(os.path.join(folder, "tuned.pt"), weights_only=True)
        sharded = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in state.items()}
        dcp.save({"model": sharded}, checkpoint_id=os.path.join(folder, "pytorch_model_fsdp_0"))
        dist.barrier()
        # Leave without gloo's destructors: its teardown can abort ("terminate called
        # without an active exception") when the other rank closes first.
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)

    if __name__ == "__main__":
        mp.spawn(work, args=(sys.argv[1], int(sys.argv[2])), nprocs=2)
    """
)


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_dcp_sharded_over_two_ranks(tmp_path, pairs):
    """Each tensor split in row blocks over two ranks' files: DCP gathers both chunks."""
    pair = pairs(torch.bfloat16)
    torch.save(pair.tuned, tmp_path / "tuned.pt")
    script = tmp_path / "write.py"
    script.write_text(_SHARDED_WRITER)
    for _attempt in range(3):  # a free port can be taken before gloo binds it: try another
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path), str(_free_port())],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode == 0:
            break
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "pytorch_model_fsdp_0"
    assert sorted(p.name for p in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    checkpoint = spectra.load(folder, base=pair.base)
    assert_same_reads(_check(checkpoint, pair), _check(checkpoint, pair))
    files = checkpoint.source_files()
    assert folder / "__1_0.distcp" in files and folder / ".metadata" in files


def _dcp_tensor_names(folder: Path) -> list[str]:
    """The tensors of a DCP folder as PyTorch's own reader lists them (the inner names)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(folder)).read_metadata()  # our own file: plain pickle is fine
    return [
        metadata.planner_data[key][1]
        for key, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    ]


def _assert_nothing_dropped(checkpoint, tensors: list[str]) -> None:
    info = checkpoint.describe()
    analysed = {m.name for m in info.modules}
    left_out = dict(info.not_analysed)
    assert len(left_out) == len(info.not_analysed)
    for name in tensors:
        if name in left_out:
            assert left_out[name] and name not in analysed, name
        else:
            assert name in analysed, f"{name} is neither analysed nor listed"
    assert set(left_out) | analysed == set(tensors)


def test_fsdp_nothing_dropped(tmp_path, pairs):
    pair = pairs(torch.float32)
    folder = _write_dcp(tmp_path / "ckpt", pair.tuned)
    checkpoint = spectra.load(folder, base=pair.base)
    tensors = _dcp_tensor_names(folder / "pytorch_model_fsdp_0")
    assert any("_fsdp_wrapped_module" in name for name in tensors)
    _assert_nothing_dropped(checkpoint, tensors)
    reasons = dict(checkpoint.not_analysed())
    assert "norm" in reasons["model.norm.weight"]
    assert "layer" in reasons["lm_head.weight"]


def test_fsdp_metadata_asking_for_code_is_refused(tmp_path, pairs):
    folder = _write_dcp(tmp_path / "ckpt", pairs(torch.float32).tuned) / "pytorch_model_fsdp_0"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo spectra-ran-this > " + str(tmp_path / "ran"),))

    (folder / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(FormatError, match=r"\.metadata: refused to unpickle: .*system"):
        spectra.load(folder, base=pairs(torch.float32).base)
    assert not (tmp_path / "ran").exists()


def test_fsdp_missing_shard_file_is_named(tmp_path, pairs):
    pair = pairs(torch.float32)
    folder = _write_dcp(tmp_path / "ckpt", pair.tuned) / "pytorch_model_fsdp_0"
    (folder / "__0_0.distcp").unlink()
    checkpoint = spectra.load(folder, base=pair.base)  # names and shapes: the metadata only
    with pytest.raises(
        FormatError, match=r"pytorch_model_fsdp_0: cannot read tensor .*No such file.*distcp"
    ):
        list(checkpoint.deltas())


def test_fsdp_without_base_asks_for_it(tmp_path, pairs):
    folder = _write_dcp(tmp_path / "ckpt", pairs(torch.float32).tuned)
    with pytest.raises(MissingBaseError, match="needs the base model"):
        list(spectra.load(folder).deltas())


def test_inspect_lists_an_fsdp_checkpoint(tmp_path, pairs):
    pair = pairs(torch.bfloat16)
    folder = _write_dcp(tmp_path / "ckpt", pair.tuned)
    result = CliRunner().invoke(cli, ["inspect", str(folder), "--base", str(pair.base)])
    assert result.exit_code == 0, result.output
    assert "full fine-tune" in result.output
    assert "self_attn.k_proj" in result.output and "bfloat16" in result.output


# -- DeepSpeed ---------------------------------------------------------------

_ZERO_WRITER = textwrap.dedent(
    """
    import os, sys, torch
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=sys.argv[2], DS_ACCELERATOR="cpu")
    import importlib
    import deepspeed
    # a C++ CPU all-reduce kernel, compiled on first use (a minute): not needed for one rank
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    from transformers import LlamaConfig, LlamaForCausalLM
    root = sys.argv[1]
    config = LlamaConfig.from_pretrained(os.path.join(root, "config"))
    for stage in (2, 3):
        for precision in ("fp32", "bf16", "fp16"):
            model = LlamaForCausalLM(config)
            state = torch.load(os.path.join(root, f"tuned-{precision}.pt"), weights_only=True)
            model.load_state_dict(state)
            settings = {"train_batch_size": 1, "zero_optimization": {"stage": stage},
                        "zero_allow_untested_optimizer": True}
            if precision != "fp32":
                settings[precision] = {"enabled": True}
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=settings)
            engine.save_checkpoint(os.path.join(root, f"zero{stage}-{precision}"))
    """
)
_PRECISIONS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@pytest.fixture(scope="module")
def zero_folders(tmp_path_factory, pairs):
    """ZeRO-2 and ZeRO-3 checkpoints of the tuned weights, trained in fp32, bf16 and fp16.

    The tuned weights lie on the training dtype's grid, so DeepSpeed's fp32
    master weights hold them exactly.
    """
    pytest.importorskip("deepspeed")
    root = tmp_path_factory.mktemp("zero")
    _, config = _tiny_llama(torch.float32, seed=0)
    config.save_pretrained(str(root / "config"))
    for dtype, precision in _PRECISIONS.items():
        state = {k: v.float() for k, v in pairs(dtype).tuned.items()}
        torch.save(state, root / f"tuned-{precision}.pt")
    script = root / "write.py"
    script.write_text(_ZERO_WRITER)
    done = subprocess.run(
        [sys.executable, str(script), str(root), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_deepspeed_zero_consolidated_by_deepspeed(zero_folders, pairs, stage, dtype):
    pair = pairs(dtype)
    folder = zero_folders / f"zero{stage}-{_PRECISIONS[dtype]}"
    assert (folder / "latest").is_file() and (folder / "zero_to_fp32.py").is_file()
    tag = (folder / "latest").read_text().strip()
    for path in (folder, folder / tag):  # the folder with `latest`, or global_stepN itself
        checkpoint = spectra.load(path, base=pair.base)
        first = _check(checkpoint, pair)
        assert len(first) == 2 * 7
        assert_same_reads(first, _check(checkpoint, pair))
        # fp32 master weights against a base in ``dtype``: the coarser grid sets the floor
        assert {r.delta.source_dtype for r in first} == {dtype}
        assert {checkpoint.tuned.dtype(ref) for ref in checkpoint.tuned.modules.values()} == {
            torch.float32
        }


@pytest.mark.slow
@pytest.mark.deepspeed
def test_deepspeed_nothing_dropped(zero_folders, pairs):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = zero_folders / "zero3-bf16"
    tensors = list(get_fp32_state_dict_from_zero_checkpoint(str(folder), lazy_mode=True))
    checkpoint = spectra.load(folder, base=pairs(torch.bfloat16).base)
    _assert_nothing_dropped(checkpoint, tensors)
    files = checkpoint.source_files()
    assert any(p.name.endswith("_optim_states.pt") for p in files)


@pytest.mark.slow
@pytest.mark.deepspeed
def test_deepspeed_pickles_load_weights_only(zero_folders, pairs, monkeypatch):
    """Every torch.load DeepSpeed's consolidation makes is weights-only (no code runs)."""
    seen = []
    original = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    spectra.load(zero_folders / "zero2-fp16", base=pairs(torch.float16).base)
    assert seen and all(flag is True for flag in seen)


@pytest.mark.slow
@pytest.mark.deepspeed
def test_deepspeed_shard_asking_for_code_is_refused(tmp_path, zero_folders, pairs):
    import shutil

    folder = tmp_path / "zero"
    shutil.copytree(zero_folders / "zero2-fp32", folder)
    tag = (folder / "latest").read_text().strip()
    optim = next((folder / tag).glob("*_optim_states.pt"))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo ran > " + str(tmp_path / "ran"),))

    torch.save({"optimizer_state_dict": Evil()}, optim)
    with pytest.raises(FormatError, match=r"refused to unpickle: .*system"):
        spectra.load(folder, base=pairs(torch.float32).base)
    assert not (tmp_path / "ran").exists()


def test_deepspeed_missing_names_zero_to_fp32(tmp_path, monkeypatch, pairs):
    """Without deepspeed: one line naming the folder's zero_to_fp32.py and pip install deepspeed.

    The folder is laid out as DeepSpeed documents it (``latest``, ``global_stepN/``
    with model and optimizer states, ``zero_to_fp32.py`` beside them).
    """
    folder = tmp_path / "checkpoint-100"
    step = folder / "global_step100"
    step.mkdir(parents=True)
    (folder / "latest").write_text("global_step100")
    (folder / "zero_to_fp32.py").write_text("# DeepSpeed's script\n")
    torch.save({"module": {}}, step / "mp_rank_00_model_states.pt")
    torch.save(
        {"optimizer_state_dict": {}}, step / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    )
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed → ImportError
    monkeypatch.setitem(sys.modules, "deepspeed.utils", None)
    monkeypatch.setitem(sys.modules, "deepspeed.utils.zero_to_fp32", None)
    with pytest.raises(FormatError) as caught:
        spectra.load(folder, base=pairs(torch.float32).base)
    message = str(caught.value)
    assert "\n" not in message
    assert str(folder / "zero_to_fp32.py") in message and "pip install deepspeed" in message
    assert "global_step100" in message


def test_deepspeed_folder_without_latest_asks_for_the_step(tmp_path, pairs):
    folder = tmp_path / "run"
    for step in ("global_step10", "global_step20"):
        (folder / step).mkdir(parents=True)
        torch.save({"module": {}}, folder / step / "mp_rank_00_model_states.pt")
    (folder / "latest").write_text("global_step30")
    with pytest.raises(FormatError, match=r"latest: names 'global_step30'.*global_stepN"):
        spectra.load(folder, base=pairs(torch.float32).base)


def test_references_are_not_trivial(pairs):
    for dtype in DTYPES:
        assert all(np.any(ref != 0) for ref in pairs(dtype).reference.values())
