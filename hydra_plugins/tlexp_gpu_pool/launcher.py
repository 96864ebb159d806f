"""The pool: slots over the visible GPUs (or CPU slots), a fresh process per job.

Each job is a fresh process with its own ``CUDA_VISIBLE_DEVICES`` (so the device is fixed before
CUDA starts) and its own thread count, in its own process group. By default (``zygote``) it is
forked from a warm fork server (multiprocessing's forkserver) that imported torch, Lightning and the
task's modules once and never started CUDA, so a job starts in milliseconds; ``zygote=false`` starts
a fresh interpreter per job (``python -m hydra_plugins.tlexp_gpu_pool._worker``). Under tlexp's
sweep callback the fork server is itself a fork of the sweep's process, made right after its
imports and before any compute (:func:`fork_zygote_here`), so nothing is imported twice. A job's
config is composed just ahead of its start, while the earlier jobs run. The parent starts the next job the
moment any job ends, records every job in ``gpu_pool.json`` in the sweep folder (device, pid,
started/finished, status, exit code, error), and on Ctrl-C or SIGTERM stops every job's process
group before it returns.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

SUMMARY = "gpu_pool.json"
#: the job's stdout and stderr, in its own folder
JOB_OUTPUT = "job.out"
#: a failed job's error, in its own folder
JOB_ERROR = "error.txt"
#: most an exit status can say about how many jobs failed
MAX_EXIT = 100


class SweepJobsFailed(Exception):
    """Some jobs of a sweep failed; the others ran to the end. ``exit_status`` is how many failed."""

    def __init__(self, failed: int, total: int, sweep_dir: str, lines: Sequence[str]) -> None:
        self.failed, self.total, self.sweep_dir, self.lines = failed, total, sweep_dir, list(lines)
        self.exit_status = min(failed, MAX_EXIT)
        super().__init__(f"{failed} of {total} job(s) failed (see {Path(sweep_dir) / SUMMARY}): " + "; ".join(self.lines))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def visible_devices(configured: Sequence[Any] | None) -> list[str]:
    """GPU ids to hand out: configured ones, else CUDA_VISIBLE_DEVICES, else what torch counts."""
    if configured is not None:
        return [str(d) for d in configured]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        # NVML-based count where available: does not initialize CUDA in this process
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch or no driver: CPU jobs
        return []


def cores() -> int:
    """The CPU cores this process may run on (its affinity: taskset, a SLURM or cgroup cpuset),
    not every core of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1


@dataclass
class Slot:
    index: int
    device: str | None  # None: a CPU slot
    busy: bool = False


@dataclass
class Job:
    num: int
    overrides: list[str]
    config: DictConfig | None = None  # composed when the job starts
    dir: Path | None = None
    slot: Slot | None = None
    proc: subprocess.Popen | _Forked | None = None
    reader: threading.Thread | None = None
    result: bytes = b""
    record: dict[str, Any] = field(default_factory=dict)


class _Forked:
    """A job forked from the zygote, answering the few ``subprocess.Popen`` calls the pool makes."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.pid: int = process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("gpu_pool job", timeout or 0)
        return int(self.process.exitcode)


#: the environment variable through which the fork server learns what to preload
PRELOAD_ENV = "TLEXP_POOL_PRELOAD"


def zygote_context(modules: Sequence[str]) -> Any:
    """multiprocessing's forkserver, started (once per launching process) with ``modules``
    imported. Its children are forks of that warm process: fresh processes that skip the imports."""
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["hydra_plugins.tlexp_gpu_pool._preload"])
    # the server's own environment: what to preload, and torch's CUDA checks through NVML (an
    # import that asks torch.cuda.is_available() would otherwise start the CUDA driver in the
    # server, and no forked job could use CUDA after that)
    server_env = {PRELOAD_ENV: ",".join(modules), "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
    before = {k: os.environ.get(k) for k in server_env}
    os.environ.update(server_env)
    try:
        forkserver.ensure_running()
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return ctx


def fork_zygote_here(modules: Sequence[str]) -> bool:
    """Start the pool's fork server as a fork of this process, which imports ``modules`` first
    (the launching process needs them anyway, for instance for a sweep's featurize plan): the
    server then starts with them loaded at no cost, where multiprocessing's own server would start
    a fresh interpreter and import them all again (seconds of CPU that a small machine takes from
    the launching process). Only before this process has started CUDA or other threads (a fork
    copies only the forking thread); else False, and the launcher starts the usual fork server.

    The server is multiprocessing's own (its loop, its ``Process`` objects and sentinels), so the
    jobs are forked from it exactly as from the fresh-interpreter server."""
    import importlib
    import socket
    from multiprocessing import connection, forkserver, resource_tracker, util

    if not hasattr(os, "fork") or "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    # an import that asks torch.cuda.is_available() answers through NVML: it must not start the
    # CUDA driver here, where every job would inherit it
    before = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    try:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a job that needs it imports it (and says why it cannot)
                pass
    finally:
        if before is None:
            os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
        else:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = before
    torch = sys.modules.get("torch")
    if (torch is not None and torch.cuda.is_initialized()) or threading.active_count() > 1:
        return False
    server: Any = forkserver._forkserver  # type: ignore[attr-defined]
    with server._lock:
        resource_tracker.ensure_running()
        if server._forkserver_pid is not None:
            pid, _ = os.waitpid(server._forkserver_pid, os.WNOHANG)
            if not pid:
                return True  # running already
            os.close(server._forkserver_alive_fd)
            server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None
        with socket.socket(socket.AF_UNIX) as listener:
            address = connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]
            listener.bind(address)
            if not util.is_abstract_socket_namespace(address):  # type: ignore[attr-defined]
                os.chmod(address, 0o600)
            listener.listen()
            # every client holds the write end of the "alive" pipe; the server ends at its EOF
            alive_r, alive_w = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the fork server
                code = 0
                try:
                    os.close(alive_w)
                    server._lock = threading.Lock()  # held by the forking thread: a fresh one here
                    forkserver.main(listener.fileno(), alive_r, [])
                except SystemExit:
                    pass
                except BaseException:  # noqa: BLE001 - said on stderr; jobs then fail to start
                    code = 1
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(code)
            os.close(alive_r)
        server._forkserver_address, server._forkserver_alive_fd, server._forkserver_pid = address, alive_w, pid
        _forked_here.add(pid)
    return True


#: fork servers that :func:`fork_zygote_here` started (their pids)
_forked_here: set[int] = set()


def _fork_server_kind() -> str:
    """How the running fork server started: "forked" (from the launching process, imports
    shared) or "fresh interpreter" (multiprocessing's own, which imported them itself)."""
    from multiprocessing import forkserver

    pid = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    return "forked" if pid in _forked_here else "fresh interpreter"


def _task_reference(task_function: TaskFunction) -> dict[str, Any]:
    """How a fresh process finds the task function: its module and name (the worker unwraps the
    ``hydra.main`` decorator); a script run as ``__main__`` is re-run by path under another name."""
    module = getattr(task_function, "__module__", None)
    qualname = getattr(task_function, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(f"gpu_pool: the task function {task_function!r} must be defined at module level")
    ref: dict[str, Any] = {"module": module, "qualname": qualname, "path": None}
    if module == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if not main_file:
            raise ValueError("gpu_pool: the task function is in an interactive __main__; put it in a file or module")
        ref["path"] = os.path.abspath(main_file)
    return ref


class GpuPoolLauncher(Launcher):
    def __init__(self, slots: int | None = None, jobs_per_gpu: int = 1, devices: Sequence[Any] | None = None,
                 threads_per_job: int | None = None, kill_timeout_s: float = 10.0,
                 env: dict[str, str] | None = None, zygote: bool = True,
                 preload: Sequence[str] | None = None) -> None:
        if jobs_per_gpu < 1:
            raise ValueError(f"hydra.launcher.jobs_per_gpu: {jobs_per_gpu} must be at least 1")
        if slots is not None and slots < 1:
            raise ValueError(f"hydra.launcher.slots: {slots} must be at least 1")
        self.slots_cfg, self.jobs_per_gpu, self.devices_cfg = slots, jobs_per_gpu, devices
        self.threads_per_job, self.kill_timeout_s = threads_per_job, kill_timeout_s
        self.env = dict(env or {})
        self.zygote = zygote
        self.preload = list(preload) if preload is not None else ["torch", "pytorch_lightning"]
        self._ctx: Any = None
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    # ---- slots --------------------------------------------------------------------------------

    def make_slots(self) -> list[Slot]:
        devices = visible_devices(self.devices_cfg)
        if devices:
            n = len(devices) * self.jobs_per_gpu
            if self.slots_cfg is not None:
                n = min(n, self.slots_cfg)
            # round-robin over the devices: slot i uses device i mod len(devices)
            return [Slot(i, devices[i % len(devices)]) for i in range(n)]
        n = self.slots_cfg if self.slots_cfg is not None else max(1, cores() // 2)
        return [Slot(i, None) for i in range(n)]

    def _threads(self, n_slots: int) -> int:
        if self.threads_per_job is not None:
            return max(1, int(self.threads_per_job))
        return max(1, cores() // n_slots)

    # ---- launch -------------------------------------------------------------------------------

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        slots = self.make_slots()
        threads = self._threads(len(slots))
        task_ref = _task_reference(self.task_function)
        where = ", ".join(f"GPU {s.device}" for s in slots) if slots[0].device is not None else f"CPU, {threads} thread(s) each"
        log.info("gpu_pool: %d job(s) over %d slot(s) (%s)", len(job_overrides), len(slots), where)
        if self.zygote and self._ctx is None:
            modules = [*self.preload, *([task_ref["module"]] if task_ref["path"] is None else [])]
            try:
                self._ctx = zygote_context(modules)
            except Exception as e:  # noqa: BLE001 - fresh interpreters still work, only slower
                log.warning("gpu_pool: no fork server (%s: %s); each job starts a fresh interpreter",
                            type(e).__name__, e)
                self.zygote = False

        # each job's config is composed just ahead of its start (while the earlier jobs run), not all
        # before the first (the sweeper has checked that each composes)
        jobs = [self._make_job(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        # a sweeper that launches in batches (Optuna) calls launch again: keep the earlier batches' jobs
        earlier = _earlier_jobs(sweep_dir / SUMMARY, {j.num for j in jobs})
        summary: dict[str, Any] = {
            "launcher": "gpu_pool", "slots": len(slots), "jobs_per_gpu": self.jobs_per_gpu,
            "devices": sorted({s.device for s in slots if s.device is not None}), "threads_per_job": threads,
            "started_at": now_iso(), "jobs": [*earlier, *(j.record for j in jobs)],
            # how each job started: forked from the pool's fork server, or a fresh interpreter
            "fork_server": _fork_server_kind() if self.zygote and self._ctx is not None else None,
        }
        pending = list(jobs)
        running: list[Job] = []
        previous_term = _raise_on_sigterm()
        try:
            # the first slots' configs, so those jobs start back to back
            for job in pending[:len(slots)]:
                self._compose(job)
            while pending or running:
                for slot in slots:
                    if not slot.busy and pending:
                        job = pending.pop(0)
                        self._start(job, slot, task_ref, threads)
                        running.append(job)
                        self._write_summary(sweep_dir, summary)
                for job in list(running):
                    if job.proc is not None and job.proc.poll() is not None:
                        self._finish(job)
                        running.remove(job)
                        self._write_summary(sweep_dir, summary)
                # while jobs run: the next job's config, ready for the next free slot (one at a time:
                # a composition delays noticing a finished job by its length)
                if pending and pending[0].config is None:
                    self._compose(pending[0])
                else:
                    time.sleep(0.05)
        except BaseException:
            # Ctrl-C, SIGTERM or an error here: no job may outlive the sweep
            for job in running:
                self._stop(job)
            for job in running:
                job.record.update(status="interrupted", finished_at=now_iso())
            for job in pending:
                job.record.update(status="not started")
            summary["interrupted"] = True
            summary["finished_at"] = now_iso()
            self._write_summary(sweep_dir, summary)
            raise
        finally:
            if previous_term is not None:
                signal.signal(signal.SIGTERM, previous_term)

        failed = [j for j in jobs if j.record["status"] != "completed"]
        done = [j for j in summary["jobs"] if j.get("status") == "completed"]
        summary.update(finished_at=now_iso(), completed=len(done), failed=len(summary["jobs"]) - len(done))
        self._write_summary(sweep_dir, summary)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        error = None
        if failed:
            lines = [f"#{j.num} ({' '.join(j.overrides)}): {j.record.get('error_line', 'failed')}" for j in failed]
            error = SweepJobsFailed(len(failed), len(jobs), str(sweep_dir), lines)
            log.error("gpu_pool: %s", error)
        return [self._job_return(j, error) for j in jobs]

    def _make_job(self, num: int, overrides: list[str]) -> Job:
        job = Job(num, overrides)
        job.record.update(num=num, overrides=list(filter_overrides(overrides)), status="pending")
        return job

    def _compose(self, job: Job) -> None:
        """The job's config and folder (as Hydra's run_job will compute it in the worker)."""
        assert self.config is not None and self.hydra_context is not None
        num = job.num
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, job.overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        # the job's folder, as Hydra's run_job will compute it in the worker
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(sweep_config)
        try:
            job_dir = Path(str(OmegaConf.select(sweep_config, "hydra.sweep.dir"))) / str(
                OmegaConf.select(sweep_config, "hydra.sweep.subdir"))
        finally:
            if previous is not None:
                HydraConfig.instance().cfg = previous  # type: ignore[assignment]
        job.config, job.dir = sweep_config, job_dir.absolute()
        job.record["dir"] = str(job.dir)

    def _start(self, job: Job, slot: Slot, task_ref: dict[str, Any], threads: int) -> None:
        if job.config is None:
            self._compose(job)
        assert job.dir is not None
        slot.busy = True
        job.slot = slot
        job.dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        env["CUDA_VISIBLE_DEVICES"] = slot.device if slot.device is not None else ""
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        env["TLEXP_POOL_SLOT"] = str(slot.index)
        # the worker imports this package the way the parent did
        here = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([p for p in [*sys.path, env.get("PYTHONPATH", "")] if p] + [here])
        job_data = {
            "task": task_ref, "config": job.config, "hydra_context": self.hydra_context,
            "singleton_state": {"instances": Singleton.get_state()["instances"]}, "threads": threads,
            "error_file": str(job.dir / JOB_ERROR),
        }
        started = False
        if self.zygote and self._ctx is not None:
            try:
                self._fork(job, env, job_data)
                started = True
            except Exception as e:  # noqa: BLE001 - the fork server is gone: fresh interpreters from now on
                log.warning("gpu_pool: fork server failed (%s: %s); jobs start fresh interpreters", type(e).__name__, e)
                self.zygote = False
        if not started:
            self._exec(job, env, job_data)
        assert job.proc is not None
        job.record.update(status="running", pid=job.proc.pid, slot=slot.index, device=slot.device,
                          started_at=now_iso())
        log.info("gpu_pool: #%d started on %s: %s", job.num, f"GPU {slot.device}" if slot.device else "CPU",
                 " ".join(job.record["overrides"]))

    def _fork(self, job: Job, env: dict[str, str], job_data: dict[str, Any]) -> None:
        assert job.dir is not None
        from hydra_plugins.tlexp_gpu_pool._worker import forked_main

        read_conn, write_conn = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=forked_main, name=f"gpu_pool-{job.num}",
                                    args=(pickle.dumps(job_data), env, str(job.dir / JOB_OUTPUT), write_conn))
        try:
            process.start()
        finally:
            write_conn.close()
        job.proc = _Forked(process)
        job.reader = threading.Thread(target=self._receive_result, args=(job, read_conn), daemon=True)
        job.reader.start()

    def _exec(self, job: Job, env: dict[str, str], job_data: dict[str, Any]) -> None:
        assert job.dir is not None
        read_fd, write_fd = os.pipe()
        payload = pickle.dumps({**job_data, "result_fd": write_fd})
        out = open(job.dir / JOB_OUTPUT, "wb")
        try:
            job.proc = subprocess.Popen(
                [sys.executable, "-m", "hydra_plugins.tlexp_gpu_pool._worker"],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd(),
                pass_fds=(write_fd,), start_new_session=True,
            )
        finally:
            out.close()
            os.close(write_fd)
        job.reader = threading.Thread(target=self._read_result, args=(job, read_fd), daemon=True)
        job.reader.start()
        assert job.proc.stdin is not None
        job.proc.stdin.write(payload)
        job.proc.stdin.close()

    @staticmethod
    def _receive_result(job: Job, conn: Any) -> None:
        try:
            job.result = conn.recv_bytes()
        except (EOFError, OSError):  # the job died before it could say how it ended
            job.result = b""
        finally:
            conn.close()

    @staticmethod
    def _read_result(job: Job, fd: int) -> None:
        chunks = []
        with os.fdopen(fd, "rb") as f:
            while True:
                chunk = f.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        job.result = b"".join(chunks)

    def _finish(self, job: Job) -> None:
        assert job.proc is not None and job.slot is not None and job.dir is not None
        if job.reader is not None:
            job.reader.join(timeout=30)
        job.slot.busy = False
        code = job.proc.returncode
        outcome: dict[str, Any] = {}
        if job.result:
            try:
                outcome = pickle.loads(job.result)
            except Exception as e:  # noqa: BLE001 - a worker that died half-way through writing
                outcome = {"status": "failed", "error_line": f"unreadable result ({e})"}
        ok = code == 0 and outcome.get("status") == "completed"
        job.record.update(finished_at=now_iso(), exit_code=code, status="completed" if ok else "failed")
        if ok:
            job.record["return_value"] = _jsonable(outcome.get("return_value"))
            job.outcome = outcome  # type: ignore[attr-defined]
            log.info("gpu_pool: #%d completed", job.num)
            return
        line = outcome.get("error_line") or _last_line(job.dir / JOB_OUTPUT) or f"exit status {code}"
        if code is not None and code < 0:
            line = f"killed by signal {-code}" + (f" ({line})" if line else "")
        job.record["error_line"] = line
        error_file = job.dir / JOB_ERROR
        if not error_file.exists():
            # the worker could not write it (crashed, killed): say what is known
            job.dir.mkdir(parents=True, exist_ok=True)
            error_file.write_text(f"job #{job.num} failed, exit status {code} (its output: {JOB_OUTPUT})\n{line}\n")
        job.record["error"] = str(error_file)
        log.error("gpu_pool: #%d failed (exit status %s): %s", job.num, code, line)

    def _stop(self, job: Job) -> None:
        """SIGTERM to the job's whole process group, SIGKILL after kill_timeout_s."""
        proc = job.proc
        if proc is None or proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                try:  # a forked job stopped before it made its own process group
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    return
            try:
                proc.wait(timeout=self.kill_timeout_s if sig == signal.SIGTERM else 30)
            except subprocess.TimeoutExpired:
                continue
            break
        try:  # anything the job started that is still in its group
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _job_return(self, job: Job, error: BaseException | None) -> JobReturn:
        ret = JobReturn()
        ret.overrides = list(job.overrides)
        assert job.config is not None  # every job the sweep returns was started
        cfg = OmegaConf.to_container(job.config, resolve=False)
        assert isinstance(cfg, dict)
        hydra_part = cfg.pop("hydra", None)
        ret.cfg = OmegaConf.create(cfg)
        ret.hydra_cfg = OmegaConf.create({"hydra": hydra_part})
        ret.working_dir = str(job.dir)
        ret.task_name = str(job.config.hydra.job.name)
        outcome = getattr(job, "outcome", None)
        if job.record.get("status") == "completed" and outcome is not None:
            ret.status = JobStatus.COMPLETED
            ret.return_value = outcome.get("return_value")
        else:
            ret.status = JobStatus.FAILED
            ret.return_value = error
        return ret

    @staticmethod
    def _write_summary(sweep_dir: Path, summary: dict[str, Any]) -> None:
        path = sweep_dir / SUMMARY
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        os.replace(tmp, path)


def _earlier_jobs(path: Path, now: set) -> list[dict[str, Any]]:
    try:
        jobs = json.loads(path.read_text()).get("jobs", [])
    except (OSError, ValueError):
        return []
    return [j for j in jobs if isinstance(j, dict) and j.get("num") not in now]


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _raise_on_sigterm() -> Any:
    """SIGTERM to the sweep stops it like Ctrl-C does (the jobs are stopped, then it exits)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None
