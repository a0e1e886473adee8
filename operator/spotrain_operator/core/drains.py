"""Drains: act on the warning. A notice (or a store node cordoned, or its pool removed) asks every rank for one
coordinated checkpoint, and the doomed workers are evicted once it is durable, unreachable or due."""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence

from spotrain_operator.core import actions as act
from spotrain_operator.core.model import Drain, NodeView, PodView, format_time
from spotrain_operator.core.pass_state import PassState
from spotrain_operator.core.termination import TerminationNotice

# A rendezvous store whose node is cordoned, or whose pool left the spec, moves without a cloud deadline: this bounds
# how long the move waits for the workers' checkpoint before it goes ahead anyway.
STORE_MOVE_DEADLINE = datetime.timedelta(minutes=5)


def _grace_seconds(deadline: datetime.datetime, now: datetime.datetime, margin: float) -> int:
    """An evicted pod's grace: the time left before its node goes, and never less than the safety margin, so that a
    notice seen late (a 30 s notice read after 25 s, an operator that just failed over) still leaves the SIGTERM
    checkpoint time to run."""
    return max(math.ceil((deadline - now).total_seconds()), math.ceil(margin))



class Drains(PassState):
    def drain(self) -> None:
        for node_name, d in list(self.drains.items()):
            if (node := self.o.nodes.get(node_name)) is not None and not d.concerns(node):
                del self.drains[node_name]  # a new node reuses the name: the old node's drain is over
        live = self.live_workers()
        store = self.current_store()
        watched: dict[str, PodView] = {w.node: w for w in live if w.node}
        if store is not None and store.node:
            watched.setdefault(store.node, store)
        fresh: list[tuple[TerminationNotice, NodeView | None]] = []
        for node_name, pod in watched.items():
            node = self.o.nodes.get(node_name)
            if self.drain_of(node_name) is not None:
                continue
            notice = self.notice_for(pod, node)
            if notice is None and store is not None and store.node == node_name:
                why = self._store_move_reason(store)
                if why:
                    notice = TerminationNotice(node_name, "rendezvous", why, self.now + STORE_MOVE_DEADLINE)
            if notice:  # late ones too: a deadline already past still gets a checkpoint request and a graceful stop
                fresh.append((notice, node))
        if fresh:
            self._start_drains(fresh, live)
        self._act_when_due(store)
        self._forget_finished_drains()
        checkpointing = bool(self.drains)
        self.condition("Checkpointing", checkpointing, "InterruptionNotice" if checkpointing else "Idle",
                       "coordinated checkpoint requested before nodes are reclaimed" if checkpointing
                       else "no drain in progress")

    def _store_move_reason(self, store: PodView) -> str | None:
        """Why a healthy store should move although no cloud announced its node's end."""
        if not any(p.name == store.pool for p in self.spec.pools):
            return f"pool {store.pool} is no longer in spec.placement.pools"
        node = self.o.nodes.get(store.node or "")
        if node is not None and node.unschedulable:
            return f"node {node.name} is cordoned"
        return None

    def _start_drains(self, fresh: Sequence[tuple[TerminationNotice, NodeView | None]],
                      live: Sequence[PodView]) -> None:
        in_flight = next(iter(self.drains.values()), None)
        request_id = in_flight.request_id if in_flight else f"{self.o.job.uid[:8]}-{int(self.now.timestamp())}"
        for notice, node in fresh:
            self.drains[notice.node] = Drain(notice.node, notice.source, notice.deadline, request_id, self.now,
                                             node.uid if node else "")
        notices = [n for n, _ in fresh]
        nodes = ", ".join(sorted(n.node for n in notices))
        deadline = min(n.deadline for n in notices)
        # Notices of one burst may arrive over several reconciles; later ones ride on the checkpoint already
        # requested, so the event says which checkpoint covers them rather than announcing another.
        action = (f"covered by the coordinated checkpoint {request_id} already requested" if in_flight else
                  f"requesting coordinated checkpoint {request_id} before {format_time(deadline)}")
        self.event("InterruptionNotice", f"{len(notices)} node(s) will be reclaimed ({nodes}; "
                   f"{notices[0].reason}); {action}", warning=True)
        if not in_flight:
            self.actions.append(act.RequestCheckpoint(request_id, notices[0].reason, format_time(deadline),
                                                      tuple((w.name, w.ip) for w in live if w.ip)))

    def _durable(self, drain: Drain) -> bool:
        return any(t is not None and t.checkpoint_request_id == drain.request_id for t in self.o.trainers.values())

    def _act_when_due(self, store: PodView | None) -> None:
        margin = self.spec.termination.safety_margin_seconds
        live = self.live_workers()
        by_node = {w.node: w for w in live if w.node}
        retried: set[str] = set()
        for node_name, d in list(self.drains.items()):
            worker = by_node.get(node_name)
            holds_store = store is not None and store.node == node_name
            if worker is None and not holds_store:
                continue
            durable = self._durable(d)
            unreachable = worker is not None and worker.name in self.o.trainers and self.o.trainers[worker.name] is None
            due = self.now >= d.deadline - datetime.timedelta(seconds=margin)
            if not (durable or unreachable or due or not live):
                if d.request_id not in retried:
                    retried.add(d.request_id)
                    self._request_again(d, live)
                continue
            why = ("checkpoint durable" if durable else "control endpoint unreachable" if unreachable else
                   "no worker to checkpoint" if not live else "deadline minus safety margin reached")
            if holds_store:
                self.store_move = f"{d.source}: {why}"
            if worker is None:
                continue
            trainer = self.o.trainers.get(worker.name)
            if not durable and trainer and trainer.step is not None and trainer.checkpoint_step is not None:
                self.lost_steps += max(0, trainer.step - trainer.checkpoint_step)
            self.record_preemption(worker, f"interruption notice ({d.source}), drained: {why}")
            self.removed.add(worker.name)
            outcome = "durable" if durable else "unreachable" if unreachable else "deadline"
            self.actions.append(act.EvictPod(worker.name, _grace_seconds(d.deadline, self.now, margin), outcome,
                                             d.requested_at))

    def _request_again(self, drain: Drain, live: Sequence[PodView]) -> None:
        """A checkpoint request a worker answered with an error, or never received, is sent again until the
        deadline: workers whose endpoint answers but does not know the request get it once more (the same id is a
        no-op for those that have it)."""
        missing = tuple((w.name, w.ip) for w in live if w.ip and (t := self.o.trainers.get(w.name)) is not None
                        and not t.knows(drain.request_id))
        if missing:
            self.actions.append(act.RequestCheckpoint(drain.request_id, f"{drain.source} (retry)",
                                                      format_time(drain.deadline), missing))

    def _forget_finished_drains(self) -> None:
        """A drain ends when none of the job's pods is left on its node (or the node, or its name's owner, is gone);
        the node is then marked drained, which acknowledges an Azure Scheduled Event."""
        for node_name in list(self.drains):
            node = self.o.nodes.get(node_name)
            left = [p for p in self.o.pods if p.node == node_name and (p.active or p.deleting)]
            if node is None:
                del self.drains[node_name]
            elif not left:
                del self.drains[node_name]
                self.actions.append(act.MarkNodeDrained(node_name))
