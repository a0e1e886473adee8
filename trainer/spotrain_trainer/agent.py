"""torchrun as ``spotrain-launch`` runs it: ``python -m spotrain_trainer.agent [torchrun arguments]``.

It is torchrun (``torch.distributed.run.main``) with one log record reworded. Workers that took a checkpoint on a
notice exit with ``EXIT_CHECKPOINTED_ON_NOTICE`` (75), non-zero on purpose (a worker exiting 0 makes its agent
close the rendezvous for every node), and torchrun logs every non-zero exit as an error: ``failed (exitcode: 75)
local_rank: 0 (pid: ...) of binary: ...``, which reads like a crash in the pod's log. :class:`NoticeExitFilter`
turns that record (and only that one) into a warning that says what happened; torchrun's behaviour is unchanged.
"""

from __future__ import annotations

import logging
import sys

from .constants import EXIT_CHECKPOINTED_ON_NOTICE

#: The logger and message of torchrun's record for failed workers (torch/distributed/elastic/multiprocessing/api.py,
#: ``SubprocessContext._poll``: ``logger.error("failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s", ...)``).
TORCHRUN_LOGGER = "torch.distributed.elastic.multiprocessing.api"
TORCHRUN_FAILED = "failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s"


class NoticeExitFilter(logging.Filter):
    """Rewords torchrun's "failed (exitcode: 75)" error as the expected end of an interrupted generation."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            record.msg == TORCHRUN_FAILED
            and isinstance(args, tuple)
            and args
            and args[0] == EXIT_CHECKPOINTED_ON_NOTICE
        ):
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.msg = (
                "workers took a checkpoint on notice and exited as planned (exitcode: %s, first local_rank: %s, "
                "pid: %s, binary: %s): not a crash; the agent restarts them from that checkpoint"
            )
        return True


def main(argv: list[str] | None = None) -> None:
    logging.getLogger(TORCHRUN_LOGGER).addFilter(NoticeExitFilter())
    from torch.distributed.run import main as torchrun

    torchrun(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
