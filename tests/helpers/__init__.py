"""What the tests share, imported as ``tests.helpers.<module>`` (never from a conftest).

- ``models``: the one set of tiny-model builders (the packaged MiniLM and its
  fine-tunes, tiny LLaMA, Phi-3 and GPT-2 configs and models);
- ``adapters``: real peft adapters on MiniLM and their float64 merged reference;
- ``checks``: the dtypes tests run over, numpy's reference spectrum, reads of
  a checkpoint captured as they are yielded, relative errors;
- ``browser``: finding headless Chromium for the HTML report's tests.

The fixtures over these (``minilm_dir``, ``lora_adapter``, ``finetunes``, …)
are in ``tests/conftest.py``.
"""
