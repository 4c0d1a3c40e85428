"""``Report``: the rows, spectra and metadata of one analysis, and how they are saved.

A report holds one row per (layer, role[, expert][, head]) with every metric of
``spectra.metrics``, the singular values of each ΔW, and the metadata of the
run (source paths, detected format, scales, device, method, versions,
warnings, the modules not analysed and those the selection left out:
``not_selected``, ``not_selected_note``). ``Report.save(dir)`` writes

- ``metrics.csv``: ``layer``, ``role`` (``module`` before 0.2), ``expert`` (only for
  mixture-of-experts rows), ``head`` (only when there are heads), ``name``,
  ``d_out``, ``d_in``, ``kind``, ``dtype``, ``scale`` (the adapter's scale,
  α/r and the like, also for the dense rebuilds of LoHa, LoKr and DoRA, from
  report.json's ``scales``; empty for a full fine-tune), ``adapter_rank``
  (the bound r of an adapter's update: r, n·r for a MultiLoRA sum; empty for
  a full fine-tune), ``rank_ceiling`` (the most rank this ΔW can have: r of
  a factored update, r₁·r₂ of LoHa, the product of LoKr's factor ranks,
  min(d_out, d_in) of any other dense ΔW; what the ``ceiling`` flag compares
  with), the floors below, then every metric under its METRICS.md name, then
  ``health`` (the row's flags, ``health.py``; earlier reports named it
  ``flags``, and ``load`` reads it as ``health``);
- ``spectra.safetensors``: the singular values of each row (float64, keyed
  by ``delta.spectrum_key``: ``L{layer}.{role}``, ``L{layer}.{role}.h{head}`` or
  ``L{layer}.{role}.e{expert}``);
- ``report.json``: the metadata, the column types and the SHA-256 of the two
  files above, so ``Report.load`` can refuse a folder whose files disagree.

Every row carries what its σ can be trusted down to: ``accuracy_floor`` (σ_1
times the SVD path's relative floor, ``svd.accuracy_floor``), ``noise_floor``
(the rounding floor of a dense ΔW subtracted from stored weights,
``metrics.rounding_floor``; empty when there is none) and
``share_above_floor`` (the share of Σσ above the larger of the two, the rank
tolerance; ``metrics.share_above``). Rows with ΔW ≠ 0 and less than
``NOISE_SHARE`` of Σσ above the tolerance are named in one warning per
report (``noise.noise_summary``): how many, which roles and layers, and the range
of their share above the floor.

The folder is written under a temporary name and renamed into place, so a
reader never sees half a report, and an existing report is replaced only
with ``force=True``. The package holds and stores results and judges rows;
``spectra.analysis`` makes them: ``rows`` (the ``Row`` type, its key, its
columns, CSV), ``results`` (``Report``: save, load, pandas), ``noise`` (rows
at their rounding floor) and ``health`` (the flags of a row).
"""

from .health import flag_lines, row_flags
from .noise import NOISE_SHARE, at_noise_floor, noise_summary, noise_warning
from .results import REPORT_FILES, Progress, Report, check_target, is_report, version_warning
from .rows import Row, csv_text, row_key, spectrum_key

__all__ = [
    "NOISE_SHARE",
    "REPORT_FILES",
    "Progress",
    "Report",
    "Row",
    "at_noise_floor",
    "check_target",
    "csv_text",
    "flag_lines",
    "is_report",
    "noise_summary",
    "noise_warning",
    "row_flags",
    "row_key",
    "spectrum_key",
    "version_warning",
]
