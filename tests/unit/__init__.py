"""Pure functions and small pieces: metrics, σ, selection, registry, imports, reports, flags."""
