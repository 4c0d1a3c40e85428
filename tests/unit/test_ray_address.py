"""A Ray cluster address nothing answers at is refused at once, not retried for minutes.

``ray.init(address=...)`` retries an address that does not answer for many
minutes; spectra opens a TCP connection first (``executors.check_reachable``).
Port 1 on this machine refuses at once, and ``.invalid`` names never resolve
(RFC 2606).
"""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra.analysis.executors import check_reachable
from spectra.errors import SpectraError


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "nohost.invalid:6379"])
def test_an_address_nothing_answers_at_is_refused(address):
    with pytest.raises(SpectraError, match="no Ray cluster answers at"):
        check_reachable(address, timeout=2)


def test_what_is_no_address_is_refused_naming_the_forms():
    with pytest.raises(SpectraError, match="expected a cluster address HOST:PORT"):
        check_reachable("spectra-demo/checkpoints/ft")


def test_analyze_refuses_it_in_seconds_in_python_and_on_the_command_line(finetunes):
    import ray

    assert not ray.is_initialized()  # else the address would not be used
    finetune = finetunes("single")
    start = time.monotonic()
    with pytest.raises(SpectraError, match=r"ray='127.0.0.1:1': no Ray cluster answers"):
        spectra.analyze(finetune.path, base=finetune.base, layers="0", ray="127.0.0.1:1")
    arguments = [str(finetune.path), "--base", str(finetune.base), "--layers", "0"]
    result = CliRunner().invoke(cli, ["analyze", *arguments, "--ray", "127.0.0.1:1", "-q"])
    assert result.exit_code == 1
    assert result.output.startswith("error: --ray 127.0.0.1:1: no Ray cluster answers at")
    assert len(result.output.strip().splitlines()) == 1
    assert time.monotonic() - start < 30
