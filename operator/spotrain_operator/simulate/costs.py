"""What each phase of a rescale costs, in seconds: the simulator's parameters.

The defaults are the tiny model of ``examples/train_tiny.py`` on the devcluster with real torchrun workers
(``bench/rescale_bench.py``; see MEASURED below for the run they come from), plus the operator's reaction
measured by ``bench/operator_bench.py``. ``scaled()`` adds the time to move a bigger model's state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

# bench/rescale_bench.py, run once on the 2-core development machine (devcluster, 3 workers of
# examples/train_tiny.py through the pod runner, local moto S3); P50 per phase over its repeats. Until that
# run, the values come from REFERENCE.md's torchrun experiments (re-forming ~11 s after a graceful stop with
# last_call_timeout 2 s; ~15 s after SIGKILL: heartbeat 5 s x 3).
MEASURED = "bench/rescale_bench.py, see docs/benchmarks.md"


@dataclass(frozen=True)
class Costs:
    operator_reaction_s: float = 0.2  # a Node's notice -> checkpoint request at the workers (operator bench P50)
    operator_poll_s: float = 0.5  # durable checkpoint -> eviction: the operator polls draining trainers every 0.5 s
    notice_checkpoint_s: float = 1.0  # checkpoint request -> durable (synchronous, all ranks)
    checkpoint_stall_s: float = 0.1  # a regular asynchronous checkpoint stops training this long (snapshot)
    checkpoint_durable_s: float = 1.0  # ... and is durable this long after it started
    checkpoint_sync_s: float = 1.0  # a synchronous regular checkpoint (the baselines' torch.save) stops training
    stop_s: float = 1.0  # SIGTERM -> the worker processes have exited and the agent re-joins
    rendezvous_s: float = 6.0  # agents form the next round (last_call_timeout 5 s + store round trips)
    restart_s: float = 4.0  # worker processes start: interpreter, import torch, process group
    restore_s: float = 1.0  # load the last checkpoint
    first_step_s: float = 1.0  # the first step at the new size (warm-up, first collectives)
    failure_detect_s: float = 15.0  # survivors notice a peer that died without notice (heartbeats 5 s x 3)
    join_detect_s: float = 1.0  # an agent notices a node waiting to join (monitor interval)
    # Not measurable on the devcluster (KWOK nodes are instant): a cloud node's launch, boot, kubelet
    # registration and image pull before the container starts. An assumption (Karpenter launches typically
    # take about a minute), paid for like any node time.
    pod_start_s: float = 60.0
    step_s: float = 1.0  # one training step at full size: what "a step" means in the metrics
    state_gb: float = 0.0  # model + optimizer state beyond the tiny model's, moved on every checkpoint/restore
    bandwidth_gb_s: float = 1.0  # to and from checkpoint storage, per job
    snapshot_gb_s: float = 10.0  # device -> host copy that an asynchronous checkpoint stalls for

    def scaled(self) -> Costs:
        """The costs with ``state_gb`` of extra state written and read at ``bandwidth_gb_s``."""
        if self.state_gb <= 0:
            return self
        move = self.state_gb / self.bandwidth_gb_s
        return replace(
            self, state_gb=0.0,
            notice_checkpoint_s=self.notice_checkpoint_s + move,
            checkpoint_stall_s=self.checkpoint_stall_s + self.state_gb / self.snapshot_gb_s,
            checkpoint_durable_s=self.checkpoint_durable_s + move,
            checkpoint_sync_s=self.checkpoint_sync_s + move,
            restore_s=self.restore_s + move,
        )

    def with_overhead_factor(self, factor: float) -> Costs:
        """Every per-event restart phase multiplied by ``factor`` (the what-if sweep: a faster rescale)."""
        return replace(
            self, stop_s=self.stop_s * factor, rendezvous_s=self.rendezvous_s * factor,
            restart_s=self.restart_s * factor, restore_s=self.restore_s * factor,
            first_step_s=self.first_step_s * factor, failure_detect_s=self.failure_detect_s * factor,
            join_detect_s=self.join_detect_s * factor, notice_checkpoint_s=self.notice_checkpoint_s * factor,
        )

    @property
    def rescale_s(self) -> float:
        """One graceful rescale: stop, rendezvous, restart, restore, first step."""
        return self.stop_s + self.rendezvous_s + self.restart_s + self.restore_s + self.first_step_s

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rescale_s": round(self.rescale_s, 3), "measured": MEASURED}
