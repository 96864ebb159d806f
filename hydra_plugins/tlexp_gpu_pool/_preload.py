"""Imported by the gpu_pool's fork server: imports the modules the launcher named (in
``TLEXP_POOL_PRELOAD``) once, so every job forked from it starts with them loaded.

Nothing here may start CUDA or threads: a fork copies only the forking thread, and CUDA
cannot be used in a child of a process that started it. If something did, the fork server
says so on its stderr and the jobs still work (they start CUDA themselves; torch refuses a
CUDA started before the fork with its own message).
"""

from __future__ import annotations

import os
import sys

from hydra_plugins.tlexp_gpu_pool._worker import preload

preload([m for m in os.environ.get("TLEXP_POOL_PRELOAD", "").split(",") if m])
if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
    sys.stderr.write("gpu_pool: a preloaded module started CUDA in the fork server; jobs on GPUs will fail\n")
