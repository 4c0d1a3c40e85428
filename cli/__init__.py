"""The ``spectra`` command line: a thin shell over the public ``spectra`` API."""
