"""What a checkpoint's files say about the training that made them, as one summary.

Trainers leave their settings beside the weights, each in its own place and
names: kohya's sd-scripts in the ``ss_*`` keys of the ``.safetensors``
header (the fields lora-inspector shows: network, dim and alpha, learning
rates, optimizer, steps, epochs, the dataset's tags), diffusers a LoraConfig
per model part under ``lora_adapter_metadata``, MLX-LM and torchtune their
``adapter_config.json`` (torchtune also its ``recipe_state.pt``), the
Hugging Face Trainer a ``trainer_state.json``. Each reader here turns one of
them into the same summary, so that ``inspect`` and ``report.json`` show it
alike::

    {"written_by": "kohya-ss sd-scripts", "source": "lora.safetensors",
     "fields": {"network": "networks.lora", "rank": 16, "alpha": 8.0, ...},
     "tags": {"1girl": 120, ...}}

``fields`` keeps the trainer's meaning under spectra's one name for it
(``rank``, ``alpha``, ``learning_rate``, ``optimizer``, ``steps``,
``epochs``, ``batch_size``, ``seed``, ``base_model``, …), values as numbers
where they are numbers; ``tags`` (kohya) counts each dataset tag over every
folder, most frequent first. A reader returns ``{}`` when its files say
nothing, and never raises on a malformed value: the raw text is kept.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

__all__ = ["diffusers", "kohya", "mlx", "torchtune", "trainer_state"]

TAGS_SHOWN = 20  # the most frequent dataset tags a kohya summary keeps

# kohya sd-scripts' ss_* keys (train_network.py's metadata), under spectra's names.
_KOHYA_FIELDS = {
    "ss_network_module": "network",
    "ss_network_dim": "rank",
    "ss_network_alpha": "alpha",
    "ss_network_args": "network_args",
    "ss_network_dropout": "dropout",
    "ss_learning_rate": "learning_rate",
    "ss_unet_lr": "unet_lr",
    "ss_text_encoder_lr": "text_encoder_lr",
    "ss_lr_scheduler": "lr_scheduler",
    "ss_lr_warmup_steps": "warmup_steps",
    "ss_optimizer": "optimizer",
    "ss_steps": "steps",
    "ss_max_train_steps": "max_steps",
    "ss_epoch": "epoch",
    "ss_num_epochs": "epochs",
    "ss_batch_size_per_device": "batch_size",
    "ss_total_batch_size": "total_batch_size",
    "ss_gradient_accumulation_steps": "gradient_accumulation",
    "ss_num_train_images": "images",
    "ss_num_reg_images": "regularisation_images",
    "ss_resolution": "resolution",
    "ss_mixed_precision": "mixed_precision",
    "ss_seed": "seed",
    "ss_noise_offset": "noise_offset",
    "ss_min_snr_gamma": "min_snr_gamma",
    "ss_clip_skip": "clip_skip",
    "ss_base_model_version": "base_model_version",
    "ss_sd_model_name": "base_model",
    "ss_sd_model_hash": "base_model_hash",
    "ss_vae_name": "vae",
    "ss_training_started_at": "started",
    "ss_training_finished_at": "finished",
    "ss_output_name": "output_name",
    "ss_training_comment": "comment",
    "ss_sd_scripts_commit_hash": "sd_scripts_commit",
    "modelspec.architecture": "architecture",
    "modelspec.title": "title",
}
# MLX-LM's adapter_config.json (mlx_lm.lora's arguments), under spectra's names.
_MLX_FIELDS = {
    "model": "base_model",
    "fine_tune_type": "method",
    "num_layers": "layers_tuned",
    "learning_rate": "learning_rate",
    "optimizer": "optimizer",
    "lr_schedule": "lr_schedule",
    "iters": "steps",
    "batch_size": "batch_size",
    "grad_accumulation_steps": "gradient_accumulation",
    "max_seq_length": "max_seq_length",
    "seed": "seed",
    "data": "data",
    "mask_prompt": "mask_prompt",
    "grad_checkpoint": "grad_checkpoint",
}
# torchtune's recipe_state.pt (its recipes' checkpoint of the loop), under spectra's names.
_TORCHTUNE_STATE = {
    "seed": "seed",
    "epochs_run": "epochs_run",
    "total_epochs": "epochs",
    "max_steps_per_epoch": "max_steps_per_epoch",
    "steps_run": "steps",
}


def _value(text: object) -> object:
    """A metadata string as the number, bool, None or JSON it spells; else the text."""
    if not isinstance(text, str):
        return text
    stripped = text.strip()
    if stripped in ("None", "null", ""):
        return None
    if stripped in ("True", "False"):
        return stripped == "True"
    for parse in (int, float):
        try:
            return parse(stripped)
        except ValueError:
            pass
    if stripped[:1] in "{[":
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    return text


def _summary(written_by: str, source: Path, fields: dict, **more) -> dict[str, object]:
    kept = {name: value for name, value in fields.items() if value is not None}
    if not kept and not any(more.values()):
        return {}
    return {"written_by": written_by, "source": str(source), "fields": kept, **more}


def _dataset_tags(raw: object) -> dict[str, int]:
    """kohya's ``ss_tag_frequency`` ({folder: {tag: count}}), summed over folders, top first."""
    folders = _value(raw)
    if not isinstance(folders, dict):
        return {}
    counts: Counter[str] = Counter()
    for tags in folders.values():
        if isinstance(tags, dict):
            for tag, count in tags.items():
                if isinstance(count, int | float):
                    counts[str(tag).strip()] += int(count)
    return dict(counts.most_common(TAGS_SHOWN))


def kohya(metadata: dict[str, str], source: Path) -> dict[str, object]:
    """The training summary of a kohya / LyCORIS file's ``ss_*`` header metadata.

    Args:
        metadata: the ``__metadata__`` strings of the ``.safetensors`` header.
        source: the file they came from (shown as ``source``).

    Returns:
        The summary (module docstring), with ``tags`` from ``ss_tag_frequency``
        and ``datasets`` (folder → images, repeats) from ``ss_dataset_dirs``;
        ``{}`` when no ``ss_*`` key is there.

    Example:
        >>> header = {"ss_network_dim": "16", "ss_optimizer": "AdamW"}
        >>> kohya(header, Path("a.safetensors"))["fields"]
        {'rank': 16, 'optimizer': 'AdamW'}
    """
    if not any(key.startswith("ss_") for key in metadata):
        return {}
    fields = {name: _value(metadata[key]) for key, name in _KOHYA_FIELDS.items() if key in metadata}
    datasets = _value(metadata.get("ss_dataset_dirs"))
    return _summary(
        "kohya-ss sd-scripts",
        source,
        fields,
        tags=_dataset_tags(metadata.get("ss_tag_frequency")),
        datasets=datasets if isinstance(datasets, dict) else {},
    )


def diffusers(metadata: dict[str, object], source: Path) -> dict[str, object]:
    """The training summary of a diffusers LoRA file: its LoraConfig per model part.

    Args:
        metadata: the parsed ``lora_adapter_metadata`` JSON (``unet.r``,
            ``unet.lora_alpha``, ``text_encoder.r``, …).
        source: the file it came from.

    Returns:
        The summary with ``fields`` named ``<part>.<field>`` (``unet.rank``,
        ``unet.alpha``, ``unet.target_modules``, …); ``{}`` for no metadata.

    Example:
        >>> diffusers({"unet.r": 4, "unet.lora_alpha": 4}, Path("w.safetensors"))["fields"]
        {'unet.rank': 4, 'unet.alpha': 4}
    """
    names = {"r": "rank", "lora_alpha": "alpha", "target_modules": "target_modules"}
    names |= {"use_dora": "use_dora", "use_rslora": "use_rslora", "lora_dropout": "dropout"}
    fields = {}
    for key, value in metadata.items():
        part, _, name = str(key).rpartition(".")
        if name in names:
            fields[f"{part}.{names[name]}" if part else names[name]] = value
    return _summary("diffusers (lora_adapter_metadata)", source, fields)


def mlx(config: dict[str, object], source: Path) -> dict[str, object]:
    """The training summary of an MLX-LM ``adapter_config.json`` (the trainer's arguments).

    Args:
        config: the parsed config.
        source: the config file.

    Returns:
        The summary: base model, method, layers tuned, the LoRA parameters
        (``rank``, ``scale``, ``dropout``, ``keys``), learning rate,
        optimizer, steps, batch size, seed, data; ``{}`` for an empty config.

    Example:
        >>> config = {"fine_tune_type": "lora", "iters": 600, "lora_parameters": {"rank": 8}}
        >>> mlx(config, Path("adapter_config.json"))["fields"]
        {'method': 'lora', 'steps': 600, 'rank': 8}
    """
    fields = {name: config[key] for key, name in _MLX_FIELDS.items() if key in config}
    parameters = config.get("lora_parameters")
    if isinstance(parameters, dict):
        for key in ("rank", "scale", "dropout", "keys"):
            if key in parameters:
                fields[key] = parameters[key]
    return _summary("MLX-LM (adapter_config.json)", source, fields)


def torchtune(folder: Path) -> dict[str, object]:
    """The training summary of a torchtune output: ``adapter_config.json`` and the loop's state.

    torchtune writes the adapter's ``r``, ``lora_alpha`` and
    ``target_modules`` to ``adapter_config.json`` beside ``adapter_model.pt``,
    and its recipes checkpoint the loop (seed, epochs run, total epochs) in
    ``recipe_state.pt``, beside the weights or in a ``recipe_state/`` folder
    next to them. The state is read with ``weights_only=True`` and memory
    mapped, so its optimizer tensors are never read.

    Args:
        folder: the folder holding ``adapter_model.pt``.

    Returns:
        The summary; ``{}`` when neither file is there.

    Example:
        >>> torchtune(Path("no-such-folder"))
        {}
    """
    fields: dict[str, object] = {}
    config_path = folder / "adapter_config.json"
    config = _json_object(config_path)
    for key, name in (("r", "rank"), ("lora_alpha", "alpha"), ("target_modules", "target_modules")):
        if key in config:
            fields[name] = config[key]
    state_path = next(
        (
            p
            for p in (
                folder / "recipe_state.pt",
                folder.parent / "recipe_state" / "recipe_state.pt",
            )
            if p.is_file()
        ),
        None,
    )
    if state_path is not None:
        fields |= _recipe_state(state_path)
    return _summary("torchtune", state_path or config_path, fields)


def _recipe_state(path: Path) -> dict[str, object]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a state spectra cannot read says nothing about the training
        return {}
    if not isinstance(state, dict):
        return {}
    return {
        name: int(state[key]) if hasattr(state[key], "__int__") else state[key]
        for key, name in _TORCHTUNE_STATE.items()
        if key in state
    }


def trainer_state(path: Path) -> dict[str, object]:
    """The training summary of a Hugging Face Trainer's ``trainer_state.json`` beside ``path``.

    A Trainer's ``checkpoint-N/`` folder holds it next to the weights or the
    adapter: the step and epoch reached, the planned steps and epochs, the
    batch size, and the last logged learning rate and loss.

    Args:
        path: the checkpoint folder, or a weights file in it.

    Returns:
        The summary; ``{}`` when there is no ``trainer_state.json``.

    Example:
        >>> trainer_state(Path("no-such-folder"))
        {}
    """
    folder = path if path.is_dir() else path.parent
    source = folder / "trainer_state.json"
    state = _json_object(source)
    if not state:
        return {}
    names = {
        "global_step": "steps",
        "max_steps": "max_steps",
        "epoch": "epoch",
        "num_train_epochs": "epochs",
        "train_batch_size": "batch_size",
        "best_metric": "best_metric",
    }
    fields = {name: state[key] for key, name in names.items() if key in state}
    logged = [entry for entry in state.get("log_history", []) if isinstance(entry, dict)]
    for key, name in (("learning_rate", "last_learning_rate"), ("loss", "last_loss")):
        values = [entry[key] for entry in logged if key in entry]
        if values:
            fields[name] = values[-1]
    return _summary("Hugging Face Trainer (trainer_state.json)", source, fields)


def _json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
