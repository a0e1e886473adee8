"""Constants shared by the launcher, the control server and the training session.

This module must stay importable without torch: the launcher and the control server use it.
"""

from __future__ import annotations

#: A worker that took a coordinated checkpoint because of a notice (SIGTERM or a control request) and made it
#: durable exits with this code. It is non-zero on purpose: a worker exiting 0 makes its torchrun agent close
#: the rendezvous for every node. (75 is EX_TEMPFAIL in sysexits.h: "try again later".)
EXIT_CHECKPOINTED_ON_NOTICE = 75

#: A worker that was asked to checkpoint on notice but could not make that checkpoint durable exits with this
#: code (the error is in the status file and the logs). The previous committed checkpoint is still valid.
EXIT_NOTICE_CHECKPOINT_FAILED = 76

#: Exit code of a worker whose job is complete (final checkpoint and completion marker written).
EXIT_COMPLETED = 0

# The control port, the state directory and its files, the termination log: spotrain_protocol.constants.
#: Under the temporary directory when the staging directory (spotrain_protocol.envvars.STAGING_DIR) is unset.
STAGING_DIR_NAME = "spotrain-staging"
DEFAULT_MAX_RESTARTS = 1_000_000
DEFAULT_KEEP_LAST = 3
DEFAULT_MIN_INTERVAL = 60.0
DEFAULT_MAX_INTERVAL = 3600.0
DEFAULT_MTBF = 3600.0

# Names inside the checkpoint storage.
COMMIT_FILE = "COMMIT"
COMPLETED_FILE = "COMPLETED"
STEP_DIR_PREFIX = "step-"
COMMIT_FORMAT = "spotrain-checkpoint/1"

PHASES = ("starting", "training", "checkpointing", "completed", "failed")
