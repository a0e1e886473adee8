"""What each phase of a rescale costs, in seconds: the simulator's parameters.

The defaults were measured with the tiny model of ``examples/train_tiny.py`` on the devcluster with real
torchrun workers (``bench/rescale_bench.py``; the run is cited below). The regular checkpoints' stall and
durability are the tiny model's too (kilobytes of state). ``scaled()`` adds the time to move a bigger model's
state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

# bench/rescale_bench.py --repeats 3, run once on 2026-12-01 02:05-02:12 UTC on the 2-core development machine
# (devcluster, 3 workers of bench/rescale_train.py through the pod runner, moto S3, the operator with --resync 2;
# load average about 2). P50s of that run: notice -> request 0.084 s, -> durable 0.239 s, -> eviction 0.318 s,
# doomed pod stopped 1.34 s; the survivors' last step at 3 -> the new workers start 19.6 s (a join: 1.66 s);
# import 1.54 s, process group 1.55 s, restore 0.78 s, first step 0.01 s; notice -> first step at 2: 24.1 s
# (P95 25.6 s). Without notice: 21.2 s from the kill to the new workers, 24.5 s to the first step, 6 steps lost.
# A join: node Ready -> replacement started 3.8 s (scaleUpWindow 3 s) -> survivors stop 2.3 s later -> first step
# at 3 after 13.9 s. A rendezvous store lost: first step after 14.7 s, nothing lost.
MEASURED = "bench/rescale_bench.py --repeats 3, 2026-12-01, 2-core dev machine (docs/benchmarks.md)"


@dataclass(frozen=True)
class Costs:
    operator_reaction_s: float = 0.084  # a Node's notice -> checkpoint request at the workers
    operator_poll_s: float = 0.079  # checkpoint durable -> eviction (the operator polls draining trainers)
    notice_checkpoint_s: float = 0.155  # checkpoint request -> durable (synchronous, all ranks; tiny model)
    # Regular checkpoints of the tiny model: a synchronous one takes what the measured notice checkpoint took; an
    # asynchronous one is durable as late and stalls training only for the snapshot (assumed: kilobytes of state).
    checkpoint_stall_s: float = 0.02
    checkpoint_durable_s: float = 0.155
    checkpoint_sync_s: float = 0.155
    stop_s: float = 1.02  # SIGTERM -> the worker processes have exited (eviction -> doomed pod stopped)
    rendezvous_s: float = 0.64  # the agents form the next round and spawn workers (a join: 1.66 s minus stop_s)
    # A round that a peer left (evicted or dead) waits for its heartbeats to expire and the last call: torchrun's
    # keep_alive_interval 5 s x keep_alive_max_attempt 3, plus last_call_timeout 5 s (spotrain-launch). Measured:
    # 19.6 s from the survivors' last step to their new workers after a notice, 1.66 s after a join.
    departed_peer_s: float = 17.95
    restart_s: float = 3.09  # worker processes start: interpreter and torch import 1.54 s, process group 1.55 s
    restore_s: float = 0.78  # load the last checkpoint (tiny model, moto S3)
    first_step_s: float = 0.01  # the first step at the new size beyond a normal one
    failure_detect_s: float = 1.57  # a peer killed without notice: the extra time before the survivors re-form
    join_detect_s: float = 2.32  # a new agent up -> the running workers are stopped for the join
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
            departed_peer_s=self.departed_peer_s * factor, restart_s=self.restart_s * factor,
            restore_s=self.restore_s * factor,
            first_step_s=self.first_step_s * factor, failure_detect_s=self.failure_detect_s * factor,
            join_detect_s=self.join_detect_s * factor, notice_checkpoint_s=self.notice_checkpoint_s * factor,
        )

    @property
    def rescale_s(self) -> float:
        """One rescale after a noticed preemption: stop, rendezvous (a peer left), restart, restore, first step."""
        return (self.stop_s + self.rendezvous_s + self.departed_peer_s + self.restart_s + self.restore_s
                + self.first_step_s)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rescale_s": round(self.rescale_s, 3), "measured": MEASURED}
