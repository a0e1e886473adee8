"""The rendezvous store and its rounds: a store for every round, a planned move whose workers re-join the new
store in their own pods, a lost store whose round starts over with new workers, and the old store's removal."""

from __future__ import annotations

import datetime
from collections import Counter

from spotrain_operator.core import actions as act
from spotrain_operator.core import placement
from spotrain_operator.core.pass_state import PassState
from spotrain_operator.core.pods import (
    render_control_secret,
    render_rendezvous,
    render_rendezvous_service,
)
from spotrain_operator.core.provisioning import render_rendezvous_pdb
from spotrain_operator.wellknown import ROUND_LABEL

# How long the workers of a moved store have to re-join the new one in their own pods (their agents restart the
# worker processes, which take their SIGTERM checkpoint, and join): past it, the ones still on the old round are
# replaced by new pods, as after a store lost without notice.
REJOIN_TIMEOUT = datetime.timedelta(minutes=3)


class Rounds(PassState):
    def ensure_rendezvous(self) -> None:
        stores = [p for p in self.o.pods if p.role == "rendezvous"]
        previous = self.current_store()
        if self.round == 0 or previous is None or self.store_move:
            planned = bool(self.store_move and previous is not None)
            if planned and previous is not None:
                self.event("RendezvousMoved", f"rendezvous store {previous.name} leaves node {previous.node} "
                           f"({self.store_move}); round {self.round + 1} starts on a new store, and the workers "
                           "re-join it in their own pods once it runs")
            elif self.round > 0:
                self.event("RendezvousLost", f"rendezvous store of round {self.round} was lost without notice; "
                           f"starting round {self.round + 1}; {self._steps_lost_text()}", warning=True)
            # Only a planned move keeps the workers: their agents are told where the new store is. Without notice
            # the old round's agents have lost their store, and its workers restart in the new round as new pods.
            self.moving_from, self.move_started = (self.round, self.now) if planned else (0, None)
            self.round += 1
            zone = self._rendezvous_zone(avoid=previous.zone if previous else None)
            self.actions.append(act.EnsureObject(render_rendezvous_service(self.o.job, self.spec, self.round)))
            self.actions.append(act.EnsureObject(render_rendezvous_pdb(self.o.job)))
            if self.o.job.control_token:  # the workers' control token (pods.render_control_secret)
                self.actions.append(act.EnsureObject(render_control_secret(self.o.job)))
            self.actions.append(act.CreatePod(render_rendezvous(self.o.job, self.spec, zone, self.round)))
        self._rejoin()
        on_new_store = [w for w in self.live_workers() if w.round == self.round and w.ready and w.phase == "Running"]
        formed = len(on_new_store) >= self.spec.min_nodes and not self.rejoining_workers()
        for p in stores:
            if p.round == self.round or not p.active or p.name in self.removed:
                continue
            # The old store serves the old round's agents until they have stopped (their SIGTERM checkpoint needs the
            # rendezvous alive); it goes once the new round has formed, or at once when its node is lost anyway.
            old_round_running = any(w.round == p.round and (w.active or w.deleting) for w in self.workers())
            if formed or not old_round_running or not self._node_ok(p):
                self.remove(p, "old rendezvous round", grace=0)
        rejoining = {w.name for w in self.rejoining_workers()}
        for w in self.workers():
            if w.round != self.round and w.active and w.name not in rejoining:
                # An agent cannot join a store it has never seen: old-round workers restart in the new round.
                self.remove(w, f"rendezvous round {self.round} started")

    def _rejoin(self) -> None:
        """A planned store move: once the new store runs, every worker of the old round is told where it is (again
        each pass until its trainer reports the new round); one that reports it takes the new round's label. A
        worker whose endpoint cannot be reached, or that has not re-joined within REJOIN_TIMEOUT, is replaced."""
        rejoining = self.rejoining_workers()
        if not rejoining:
            self.moving_from, self.move_started = 0, None
            return
        store = self.current_store()
        if store is None or store.phase != "Running" or not store.ready or not store.ip:
            return  # ready: its TCP readiness probe passed, the store listens
        rendezvous_id = self.o.job.rendezvous_id(self.round)
        overdue = self.move_started is not None and self.now >= self.move_started + REJOIN_TIMEOUT
        told = []
        for w in rejoining:
            trainer = self.o.trainers.get(w.name)
            if trainer is not None and trainer.rendezvous_id == rendezvous_id:
                self.actions.append(act.LabelPod(w.name, ((ROUND_LABEL, str(self.round)),)))
            elif (w.name in self.o.trainers and trainer is None) or overdue or not w.ip:
                why = "has not re-joined in time" if overdue else "cannot be told where the store is"
                self.remove(w, f"rendezvous round {self.round} started; the worker {why}")
            else:
                told.append((w.name, w.ip or ""))
        if told:
            self.actions.append(act.MoveRendezvous(rendezvous_id, f"{store.ip}:{self.spec.rendezvous_port}",
                                                   self.round, tuple(told)))

    def _steps_lost_text(self) -> str:
        kept = self.last_checkpoint.get("step")
        steps = [t.step for t in self.o.trainers.values() if t is not None and t.step is not None]
        if isinstance(kept, int) and steps:
            return f"{max(0, max(steps) - kept)} steps since the checkpoint of step {kept} are lost"
        if isinstance(kept, int):
            return f"training resumes from the checkpoint of step {kept}; the steps after it are lost"
        return "no durable checkpoint is known: training restarts from the start"

    def _rendezvous_zone(self, avoid: str | None = None) -> str | None:
        """The zone of the stable pool with the most nodes that could take the store now (zone spreading does not
        apply to one pod); a store that moves prefers another zone than the one it leaves, where one exists."""
        pool = self.spec.pool(self.spec.rendezvous_pool_name)
        tolerations = placement.pool_tolerations(self.spec, pool)
        zones = Counter(n.zone for n in self.o.nodes.values()
                        if n.zone and pool.matches(dict(n.labels)) and placement.node_accepts(n, tolerations))
        return min(zones, key=lambda z: (z == avoid, -zones[z], z)) if zones else None
