"""A training script's own failure, told apart from a peer's loss, recorded for the operator's failure budget.

torchrun restarts a failed worker group whatever the cause (``--max-restarts`` is large, since every preemption
costs the survivors a restart too), so a script that crashes at the same step every time would restart forever.
Each worker records an uncaught exception of its own (``script_failures`` and ``error`` in the pod's status, kept
across restarts); an error raised because a peer went away (the collective's connection closed, the store gone) is
not the script's and is not counted. The operator adds the reports up against ``spec.budgets.maxFailures``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from types import TracebackType

from spotrain_protocol import status as keys

from .status import StatusReporter

# What a collective raises when a peer process or node goes away (gloo, NCCL, the c10d store), as opposed to an
# error of the script's own: torch.distributed's error classes, and the messages of the RuntimeErrors that gloo
# raises when its connection to a peer breaks.
_PEER_LOSS_TYPES = ("DistNetworkError", "DistBackendError", "DistStoreError", "RendezvousConnectionError",
                    "RendezvousClosedError")
_PEER_LOSS_MESSAGE = re.compile(
    r"Connection (closed|reset) by peer|Broken pipe|Socket Timeout|ECONNRESET|EPIPE|Connection refused"
    r"|NCCL communicator was aborted|ProcessGroup.*(aborted|shut ?down)|store.*(closed|timed out)",
    re.IGNORECASE,
)
MAX_ERROR_CHARS = 1000


def is_peer_loss(error: BaseException) -> bool:
    """Whether ``error`` comes from losing a peer rather than from the training script itself."""
    for cls in type(error).__mro__:
        if cls.__name__ in _PEER_LOSS_TYPES:
            return True
    return bool(_PEER_LOSS_MESSAGE.search(str(error)))


def record_script_failures(status: StatusReporter, step: Callable[[], int | None]) -> None:
    """Chains a ``sys.excepthook`` that counts this worker's uncaught exceptions, except a peer's loss, in
    ``status`` (``script_failures``, ``error``, ``error_step``) before the traceback is printed and the process
    exits. SystemExit (a clean exit after a notice checkpoint included) never reaches an excepthook."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        if not is_peer_loss(error):
            status.update(script_failures=int(status.get(keys.SCRIPT_FAILURES) or 0) + 1,
                          error=f"{kind.__name__}: {error}"[:MAX_ERROR_CHARS], error_step=step(), phase="failed")
            status.flush(force=True)
        previous(kind, error, trace)

    sys.excepthook = hook
