"""One file per format family, each reading real files written by the tool that makes them."""
