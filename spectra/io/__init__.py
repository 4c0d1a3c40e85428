"""Where spectra meets the system: files, the Hub, memory and threads.

- ``hub``: paths and Hugging Face Hub ids to local folders (``locate``);
- ``atomic``: folders written under a temporary name and renamed into place,
  files that honour the umask;
- ``memory``: the allocator setting that keeps peak memory flat;
- ``workers``: reading ahead on a thread and ordered worker pools.

Nothing here knows about ΔW or spectra.
"""
