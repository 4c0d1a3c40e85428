"""The HTML report: one self-contained page of a ``Report`` or a ``Comparison``.

``write_html(results, path)`` writes it (``--html FILE``, ``Report.to_html``,
``Comparison.to_html``), ``html_page`` gives its text, ``check_html_target``
says before any work whether it may be written. ``page`` builds the page
from the package's data files (``page.html``, ``style.css``, ``script.js``);
``data`` makes the JSON its script draws.
"""

from __future__ import annotations

from .data import DEFAULT_METRIC, SPECTRUM_POINTS
from .page import check_html_target, html_page, write_html

__all__ = ["DEFAULT_METRIC", "SPECTRUM_POINTS", "check_html_target", "html_page", "write_html"]
