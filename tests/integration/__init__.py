"""The command line, comparisons, sweeps, the HTML page, the monitor, actions and the docs."""
