"""One job in a fresh process: ``python -m hydra_plugins.tlexp_gpu_pool._worker``.

Reads the job (its config, Hydra's context and the task function's name) from stdin as the
launcher wrote it, runs it through Hydra's ``run_job`` (so the job folder, ``.hydra/`` and
callbacks are exactly a basic launcher's), and writes the outcome to the pipe the launcher
passed. A failed job's traceback goes to ``error.txt`` in its own folder.
"""

from __future__ import annotations

import atexit
import importlib
import inspect
import os
import pickle
import runpy
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _resolve_task(ref: dict[str, Any]) -> Callable[..., Any]:
    if ref.get("path"):
        namespace = runpy.run_path(ref["path"], run_name="__tlexp_gpu_pool_main__")
        obj: Any = namespace
        parts = ref["qualname"].split(".")
        obj = namespace[parts[0]]
        for part in parts[1:]:
            obj = getattr(obj, part)
    else:
        obj = importlib.import_module(ref["module"])
        for part in ref["qualname"].split("."):
            obj = getattr(obj, part)
    # the module attribute is the hydra.main wrapper; the launcher calls the function it wraps
    return inspect.unwrap(obj)


def _set_threads(n: int) -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(n)


def _error_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def run_payload(job: dict[str, Any]) -> tuple[int, bytes]:
    """Run one job as the launcher described it: its exit status and its pickled outcome."""
    error_file = Path(job["error_file"])
    outcome: dict[str, Any]
    code = 0
    try:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobStatus, run_job, setup_globals

        _set_threads(job["threads"])
        from omegaconf.basecontainer import BaseContainer

        # resolvers are functions (not sent): keep this process's own, registered on import
        Singleton.set_state({**job["singleton_state"], "omegaconf_resolvers": BaseContainer._resolvers})
        setup_globals()
        task = _resolve_task(job["task"])
        ret = run_job(hydra_context=job["hydra_context"], task_function=task, config=job["config"],
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        if ret.status == JobStatus.COMPLETED:
            outcome = {"status": "completed", "return_value": ret._return_value}
        else:
            e = ret._return_value
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            error_file.parent.mkdir(parents=True, exist_ok=True)
            error_file.write_text(tb)
            sys.stderr.write(tb)
            outcome = {"status": "failed", "error_line": _error_line(e)}
            code = 1
    except SystemExit as e:
        # a task that exits (a CLI's user error: one line, exit status 2) fails this job only
        code = e.code if isinstance(e.code, int) else 1
        # the launcher writes error.txt from the job's last output line (its one-line message)
        outcome = {"status": "completed", "return_value": None} if code == 0 else {"status": "failed"}
    except BaseException as e:  # noqa: BLE001 - recorded, then this process ends with status 1
        tb = traceback.format_exc()
        error_file.parent.mkdir(parents=True, exist_ok=True)
        error_file.write_text(tb)
        sys.stderr.write(tb)
        outcome = {"status": "failed", "error_line": _error_line(e)}
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        data = pickle.dumps(outcome)
    except Exception:  # noqa: BLE001 - a return value that cannot be sent back
        data = pickle.dumps({"status": outcome["status"], "return_value": repr(outcome.get("return_value")),
                             "error_line": outcome.get("error_line")})
    return code, data


def main() -> int:
    """The fresh-interpreter way (``hydra.launcher.zygote=false``): the job on stdin."""
    job = pickle.loads(sys.stdin.buffer.read())
    out = os.fdopen(job["result_fd"], "wb")
    code, data = run_payload(job)
    out.write(data)
    out.close()
    return code


def forked_main(payload: bytes, env: dict[str, str], output: str, result: Any) -> None:
    """The zygote way: a child forked from the warm fork server (torch, Lightning and the task's
    modules already imported, CUDA not started). It becomes its own process group, takes the
    job's environment (``CUDA_VISIBLE_DEVICES`` before anything starts CUDA), sends its output
    to the job's ``job.out`` and its outcome down ``result`` (a one-way pipe)."""
    os.setsid()
    _end_with_parent()
    os.environ.clear()
    os.environ.update(env)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # Ctrl-C reaches the sweep, which stops this job's group; keep Python's default here
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code, data = run_payload(pickle.loads(payload))
    try:
        result.send_bytes(data)
        result.close()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    # a fresh interpreter's shutdown: this job's exit handlers (loggers, files) run here
    atexit._run_exitfuncs()
    sys.exit(code)


def _end_with_parent() -> None:
    """Linux: this job gets SIGTERM when the fork server ends, and the fork server ends when the
    sweep's process does, so even a sweep killed with SIGKILL leaves no job running.

    multiprocessing hands each child the write end of the server's "alive" pipe, which would keep
    the server (and so this job's parent) alive as long as the job runs: it is closed here, and
    the job starts its own fork server should it ever want one."""
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        try:
            os.close(server._forkserver_alive_fd)
        except OSError:
            pass
    server._forkserver_alive_fd = None
    server._forkserver_address = None
    server._forkserver_pid = None
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: Ctrl-C and SIGTERM still stop the jobs
        return
    if os.getppid() != parent:  # the parent ended before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def preload(modules: list[str]) -> None:
    """Imported once in the fork server: each job then starts with them already loaded."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a job that needs it imports it (and says why it cannot)
            pass


if __name__ == "__main__":
    sys.exit(main())
