"""The part a container runtime plays for one container: ``python -m spotrain_dev.podrunner --shim -- argv``.

It is a child subreaper, so torchrun's workers (which run in sessions of their own) stay in its process tree;
SIGTERM to the shim goes to the container's main process only (PID 1 in a pod), and when the main process exits,
or the runner asks for a hard kill (:data:`HARD_KILL_SIGNAL`), or the runner dies (the shim's
``PR_SET_PDEATHSIG`` is SIGHUP), everything left in the tree is SIGKILLed. Imports neither kubernetes nor torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

from spotrain_trainer.processes import process_tree

PARENT_ENV = "SPOTRAIN_PODRUNNER_PARENT"  # the runner's pid: a shim whose parent is already gone exits at once
HARD_KILL_SIGNAL = signal.SIGUSR1  # runner -> shim: SIGKILL the whole container now

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def kill_descendants(root: int) -> None:
    """SIGKILL to everything ``root`` started (not to ``root``)."""
    for pid in process_tree(root)[1:]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def shim_main(argv: list[str]) -> int:
    """The container runtime's part for one container: runs ``argv`` as the main process and exits with its
    code (128 + N when killed by signal N); see the module docstring for the signals."""
    if not argv:
        print("podrunner shim: no command", file=sys.stderr)
        return 127
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGHUP), 0, 0, 0)
    parent = os.environ.pop(PARENT_ENV, "")
    if parent.isdigit() and os.getppid() != int(parent):
        return 137  # the runner died before PR_SET_PDEATHSIG took effect
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    me = os.getpid()
    main_pid = 0
    main_status: int | None = None
    hard = False

    def on_term(signum: int, frame: object) -> None:
        if main_pid and main_status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(main_pid, signal.SIGTERM)

    def on_hard(signum: int, frame: object) -> None:
        nonlocal hard
        hard = True
        kill_descendants(me)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # restored to default in the child by posix_spawn's setsigdef
    signal.signal(HARD_KILL_SIGNAL, on_hard)
    signal.signal(signal.SIGHUP, on_hard)
    try:
        main_pid = os.posix_spawnp(argv[0], argv, dict(os.environ), setsigdef=(signal.SIGINT,))
    except OSError as exc:
        print(f"podrunner shim: cannot run {argv[0]}: {exc}", file=sys.stderr, flush=True)
        return 127
    if hard:
        kill_descendants(me)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == main_pid:
            main_status = status
        if main_status is not None or hard:
            # PID 1 of a container has exited (or the container is being killed): nothing else in it survives.
            kill_descendants(me)
    # Done: a late signal (say, to the whole process group) must not turn the exit status into "killed".
    for signum in (signal.SIGTERM, signal.SIGHUP, HARD_KILL_SIGNAL):
        signal.signal(signum, signal.SIG_IGN)
    if main_status is None:
        return 137
    code = os.waitstatus_to_exitcode(main_status)
    return 128 - code if code < 0 else code
