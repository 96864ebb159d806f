"""The launcher's config node, ``hydra/launcher=gpu_pool``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class GpuPoolLauncherConf:
    _target_: str = "hydra_plugins.tlexp_gpu_pool.launcher.GpuPoolLauncher"
    #: jobs at once. null: jobs_per_gpu × the GPUs, or 1 job per 2 CPU cores without GPUs (the
    #: cores this process may run on: its affinity, e.g. taskset or a SLURM allocation).
    #: With GPUs a larger value is capped at jobs_per_gpu × GPUs.
    slots: Optional[int] = None
    #: jobs sharing one GPU at a time
    jobs_per_gpu: int = 1
    #: GPU ids to hand out (each job sees one as CUDA_VISIBLE_DEVICES). null: the ids in the
    #: launching process's CUDA_VISIBLE_DEVICES, else every GPU torch counts; [] forces CPU jobs.
    devices: Optional[List[str]] = None
    #: torch/OpenMP threads per job; null: the CPU cores (as above) divided by the slots
    threads_per_job: Optional[int] = None
    #: on Ctrl-C: seconds between asking a job to stop (SIGTERM) and killing it (SIGKILL)
    kill_timeout_s: float = 10.0
    #: extra environment variables for every job
    env: Dict[str, str] = field(default_factory=dict)
    #: start each job as a fork of a warm fork server that imported ``preload`` (and the task's
    #: module) once, before CUDA starts: a fresh process per job in milliseconds, not seconds.
    #: false: each job starts a fresh Python interpreter (``python -m …_worker``).
    zygote: bool = True
    #: modules the fork server imports once (missing ones are skipped)
    preload: List[str] = field(default_factory=lambda: ["torch", "pytorch_lightning", "tlexp.train"])


ConfigStore.instance().store(group="hydra/launcher", name="gpu_pool", node=GpuPoolLauncherConf, provider="tlexp")
