"""Headless Chromium for the HTML report's browser tests: Debian's path first, then PATH."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_PATHS = ("/usr/bin/chromium",)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """``$SPECTRA_CHROMIUM``, Debian's ``/usr/bin/chromium`` or a Chromium on PATH; else None."""
    chosen = os.environ.get("SPECTRA_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).is_file() else None
    for path in CHROMIUM_PATHS:
        if Path(path).is_file():
            return path
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def chromium_or_skip() -> str:
    """The browser's path; without one a skip saying why, or a failure where ``CI=true``.

    ``.ci/run`` installs Chromium before the tests, so in CI a missing browser
    is a broken set-up, never a quiet skip.
    """
    found = find_chromium()
    if found is not None:
        return found
    reason = (
        "no headless Chromium found ($SPECTRA_CHROMIUM, /usr/bin/chromium, or "
        f"{', '.join(CHROMIUM_NAMES)} on PATH): the HTML report's browser tests need one; "
        "install it with `apt-get install -y chromium` (as root)"
    )
    if os.environ.get("CI", "").strip().lower() in ("true", "1"):
        pytest.fail(f"{reason}. CI=true, where .ci/run installs it: failing, not skipping")
    pytest.skip(reason)
