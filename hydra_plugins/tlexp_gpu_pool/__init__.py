"""``hydra/launcher=gpu_pool``: each job in a fresh process, a fixed number of slots per visible
GPU (or ``slots`` CPU jobs), the next job starting as soon as a slot frees.

Hydra finds this plugin in the ``hydra_plugins`` namespace package; the launcher itself knows
nothing of tlexp beyond calling the task function it is given.
"""

from hydra_plugins.tlexp_gpu_pool.config import GpuPoolLauncherConf
from hydra_plugins.tlexp_gpu_pool.launcher import GpuPoolLauncher, SweepJobsFailed

__all__ = ["GpuPoolLauncher", "GpuPoolLauncherConf", "SweepJobsFailed"]
