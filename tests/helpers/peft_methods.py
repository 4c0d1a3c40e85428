"""What the peft 0.21 method tests read back from a saved adapter file: its tensors' dtypes.

Each test first checks its premise, that peft wrote the file in the dtype
asked (``float_dtypes``), and lists every tensor of the file to check that
none vanished (``file_dtypes``), reading only the file's header.
"""

from __future__ import annotations

from pathlib import Path

import torch

# torch dtype → its name in a safetensors header
SAFETENSORS_DTYPE = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
}
_TORCH_DTYPE = {name: dtype for dtype, name in SAFETENSORS_DTYPE.items()}


def file_dtypes(folder: Path) -> dict[str, str]:
    """Each tensor of ``folder``'s adapter_model.safetensors → its dtype ("F32", "I64", …)."""
    from safetensors import safe_open

    with safe_open(str(Path(folder) / "adapter_model.safetensors"), "pt") as file:
        return {name: file.get_slice(name).get_dtype() for name in file.keys()}  # noqa: SIM118


def float_dtypes(folder: Path) -> set[torch.dtype | str]:
    """The floating dtypes of ``folder``'s adapter file (a name where torch has none here)."""
    names = {name for name in file_dtypes(folder).values() if name.startswith(("F", "BF"))}
    return {_TORCH_DTYPE.get(name, name) for name in names}
