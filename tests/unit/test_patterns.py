"""rank_pattern / alpha_pattern keys matched as peft matches them.

peft's ``utils/other.py`` ``get_pattern_key`` takes the first key (in the
dict's order) for which ``re.match(rf"(.*\\.)?({key})$", module)`` holds:
anchored at the end and at a whole name part, the key itself a regular
expression. spectra's rule is compared with peft's own function on keys that
tell wrong rules apart (a suffix that is not a name part, ``0.attention``
against ``10.attention``, a key that is a suffix of a later one, regex keys),
and then through a real adapter against peft's own float64 merge (where the
first key is the first of the saved file, which peft writes with sorted keys).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import spectra
from spectra.loaders.methods import lora
from tests.helpers.adapters import random_peft_model, save_peft_adapter
from tests.helpers.checks import DTYPES, dtype_id, reference_sigma

MODULES = [
    "encoder.layer.0.attention.self.key",
    "encoder.layer.10.attention.self.key",
    "encoder.layer.1.attention.self.key",
    "encoder.layer.0.attention.self.query",
    "encoder.layer.3.attention.self.value",
    "encoder.layer.4.attention.self.value",
    "encoder.layer.7.attention.self.value",
    "encoder.layer.0.attention.output.dense",
    "encoder.layer.0.output.dense",
    "model.layers.2.self_attn.q_proj",
    "model.layers.12.self_attn.q_proj",
    "query",
]
PATTERNS = [
    # '0.attention' must not match layer 10's: the key starts at a name part
    {"0.attention.self.key": 2, "key": 5},
    # the first key wins, even when a later one is longer and more specific
    {"key": 3, "layer.0.attention.self.key": 7},
    {"self.key": 3, "key": 4, "encoder.layer.1.attention.self.key": 8},
    # a suffix that is not a whole name part does not match
    {"ayer.0.attention.self.key": 9, "elf.query": 6, "ery": 1},
    # 'output.dense' is a suffix of 'attention.output.dense': both modules take it
    {"output.dense": 2, "attention.output.dense": 6},
    {"attention.output.dense": 6, "output.dense": 2},
    # keys are regular expressions
    {r"layer\.[34]\.attention\.self\.value": 12, "value": 1},
    {r"layers\.\d\.self_attn\.q_proj": 3, "q_proj": 5},
    {"2.self_attn.q_proj": 4},
    {"query": 2},
    {},
]


@pytest.mark.parametrize("patterns", PATTERNS, ids=lambda p: ",".join(p) or "empty")
def test_pattern_rule_is_peft_get_pattern_key(patterns):
    from peft.utils.other import get_pattern_key

    for module in MODULES:
        expected = get_pattern_key(list(patterns), module)  # the module itself when none match
        found = lora.pattern_value(patterns, module)
        if expected not in patterns:
            assert found is None, (module, found)
        else:
            assert found == (expected, patterns[expected]), module


def test_pattern_rule_on_keys_worked_out_by_hand():
    """The same rule, values written out: no peft in the loop."""
    first = {"0.attention.self.key": 2, "key": 5}
    assert lora.pattern_value(first, "encoder.layer.0.attention.self.key") == (
        "0.attention.self.key",
        2,
    )
    assert lora.pattern_value(first, "encoder.layer.10.attention.self.key") == ("key", 5)
    order = {"key": 3, "layer.0.attention.self.key": 7}
    assert lora.pattern_value(order, "encoder.layer.0.attention.self.key") == ("key", 3)
    part = {"elf.query": 6}
    assert lora.pattern_value(part, "encoder.layer.0.attention.self.query") is None
    regex = {r"layer\.[34]\.attention\.self\.value": 12}
    assert lora.pattern_value(regex, "encoder.layer.4.attention.self.value")[1] == 12
    assert lora.pattern_value(regex, "encoder.layer.7.attention.self.value") is None


# A real adapter whose patterns only the exact rule reads right. peft writes
# adapter_config.json with sort_keys=True (config.py, save_pretrained), so
# "first" is first in sorted order once saved, for peft's reload as for spectra.
RANK_PATTERN = {
    "key": 2,  # every key: r = 2 ...
    "layer.0.attention.self.key": 6,  # ... this later key (also later sorted) never wins
    "ayer.1.attention.self.value": 3,  # not a whole name part: no match
    "5.attention.self.value": 6,  # layer 5 only
}
ALPHA_PATTERN = {
    "self.query": 4,  # every query but layer 2's: sorted, that key comes first
    "layer.2.attention.self.query": 12,
    r"layer\.[34]\.attention\.self\.value": 16,  # a regex: layers 3 and 4
}
# (layer, role) → (r, α) by peft's rule, worked out by hand; the rest r = 4, α = 8.
EXPECTED = {
    **{(layer, "k"): (2, 8) for layer in range(6)},
    **{(layer, "q"): (4, 4) for layer in range(6)},
    (2, "q"): (4, 12),
    (3, "v"): (4, 16),
    (4, "v"): (4, 16),
    (5, "v"): (6, 8),
}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_a_real_adapter_with_tricky_patterns_matches_peft_merge(tmp_path, minilm_dir, dtype):
    from peft import LoraConfig

    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["query", "key", "value"],
        rank_pattern=RANK_PATTERN,
        alpha_pattern=ALPHA_PATTERN,
    )
    model = random_peft_model(minilm_dir, config, seed=17)
    adapter = save_peft_adapter(model, tmp_path / "patterns", minilm_dir, dtype)
    saved = json.loads((adapter.path / "adapter_config.json").read_text())
    assert list(saved["alpha_pattern"]) == sorted(ALPHA_PATTERN)  # the order both read
    report = spectra.analyze(adapter.path, modules="q,k,v")
    assert len(report.rows) == 18
    for row in report.rows:
        key = (row["layer"], row["role"])
        rank, alpha = EXPECTED.get(key, (4, 8))
        assert row["adapter_rank"] == rank, key
        assert row["scale"] == pytest.approx(alpha / rank, rel=1e-15), key
        expected = reference_sigma(adapter.reference[key])
        sigma = report.spectrum(*key)
        assert len(sigma) == rank
        np.testing.assert_allclose(sigma, expected[:rank], rtol=1e-9)
