"""What each phase of a rescale costs, in seconds: the simulator's parameters.

The defaults were measured with the tiny model of ``examples/train_tiny.py`` on the devcluster with real
torchrun workers (``bench/rescale_bench.py``; the run is cited below). The regular checkpoints' stall and
durability are the tiny model's too (kilobytes of state). ``scaled()`` adds the time to move a bigger model's
state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

# bench/rescale_bench.py --repeats 3, run on 2026-12-01 05:03-05:11 UTC on the 2-core development machine
# (devcluster, 3 workers of bench/rescale_train.py through the pod runner, moto S3, the operator with --resync 2;
# load average about 2-3, helpers' tests running), after spotrain-launch's agents began leaving the rendezvous on a
# signal and its last call became 2 s. P50s: notice -> request 0.089 s, -> durable 0.324 s, -> eviction 0.741 s,
# doomed pod stopped 1.86 s; the survivors' last step at 3 -> the new workers start 3.74 s (a join: 1.88 s);
# import 1.96 s, process group 1.60 s, restore 1.26 s, first step 0.01 s; notice -> first step at 2: 9.4 s
# (P95 9.7 s). Without notice: 15.6 s from the kill to the new workers (the dead agent cannot leave: its
# heartbeats expire), 21.2 s to the first step, 6 steps lost. A join: node Ready -> first step at 3 after 15.9 s.
# A rendezvous store lost: first step after 17.1 s, nothing lost; a planned store move: 16.8 s, nothing lost.
MEASURED = "bench/rescale_bench.py --repeats 3, 2026-12-01, 2-core dev machine (docs/benchmarks.md)"


@dataclass(frozen=True)
class Costs:
    operator_reaction_s: float = 0.089  # a Node's notice -> checkpoint request at the workers
    operator_poll_s: float = 0.417  # checkpoint durable -> eviction (the operator polls draining trainers)
    notice_checkpoint_s: float = 0.235  # checkpoint request -> durable (synchronous, all ranks; tiny model)
    # Regular checkpoints of the tiny model: a synchronous one takes what the measured notice checkpoint took; an
    # asynchronous one is durable as late and stalls training only for the snapshot (assumed: kilobytes of state).
    checkpoint_stall_s: float = 0.02
    checkpoint_durable_s: float = 0.155
    checkpoint_sync_s: float = 0.155
    stop_s: float = 1.122  # SIGTERM -> the worker processes have exited (eviction -> doomed pod stopped)
    rendezvous_s: float = 0.76  # the agents form the next round and spawn workers (a join: 1.88 s minus stop_s)
    # A round that an evicted peer left: the departing agent leaves the rendezvous (spotrain_trainer.agent), so
    # what remains is torch's last call (last_call_timeout 2 s in spotrain-launch). Measured: 3.74 s from the
    # survivors' last step to their new workers after a notice, 1.88 s after a join.
    departed_peer_s: float = 1.859
    restart_s: float = 3.556  # worker processes start: interpreter and torch import 1.96 s, process group 1.60 s
    restore_s: float = 1.262  # load the last checkpoint (tiny model, moto S3)
    first_step_s: float = 0.009  # the first step at the new size beyond a normal one
    # A peer killed without notice: the extra time before the survivors re-form, mostly its heartbeats expiring
    # (keep_alive_interval 5 s x keep_alive_max_attempt 3), which a dead agent cannot cut short.
    failure_detect_s: float = 11.903
    join_detect_s: float = 2.515  # a new agent up -> the running workers are stopped for the join
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
