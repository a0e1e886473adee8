"""Scaling and placement calls: the join window, scale-down, workers stranded on capacity that does not come,
the fallback to on-demand and the return to spot."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

from spotrain_operator.core import actions as act
from spotrain_operator.core import placement
from spotrain_operator.core.model import PodView, format_time
from spotrain_operator.core.pass_state import PassState
from spotrain_operator.core.pods import (
    render_worker,
)
from spotrain_operator.core.provisioning import PROBE_ROLE, render_probe


class Scaling(PassState):
    def scale(self) -> None:
        spec = self.spec
        live = self.live_workers()
        target = min(max(spec.target_nodes, spec.min_nodes), spec.max_nodes)
        self._scale_down(live, target)
        self._replace_stranded(self.live_workers())
        live = self.live_workers()
        spot_offers = self._offerings(fallback_active=False)
        missing = target - len(live)
        # Spot is short when the workers still missing have no spot offering left. A spot worker that is merely
        # Pending is not a shortage: every autoscaled node starts that way; one whose node does not come is
        # re-placed (and its zone cooled down) by _replace_stranded, which is what leads to a shortage.
        short_of_spot = missing > placement.spot_capacity(spot_offers, spec)
        if short_of_spot and self.pending_since is None:
            self.pending_since = self.now
        elif not short_of_spot:
            self.pending_since = None
        # Fall back only once spot has been short for spec.fallback.after: falling back on the first Unschedulable
        # spot worker ignored `after` and flapped between spot and on-demand.
        fallback_after = datetime.timedelta(seconds=spec.fallback.after_seconds) if spec.fallback else None
        fallback_active = bool(fallback_after is not None and self.pending_since is not None
                               and self.now - self.pending_since >= fallback_after)
        available = self._offerings(fallback_active=True) if fallback_active else spot_offers

        count = self._batched(missing, sum(o.free_nodes for o in available), bool(live))
        choices = placement.choose(spec, available, live, count)
        if choices:
            was_fallback = [c for c in choices if not spec.pool(c.pool).spot]
            if was_fallback:
                self.event("FallbackToOnDemand", f"spot capacity short for {self._since_text()}; placing "
                           f"{len(was_fallback)} worker(s) on on-demand pool {was_fallback[0].pool}", warning=True)
            self._create(choices)
            self.event("ScaleUp", f"world size {len(live)} -> {len(live) + len(choices)} nodes "
                       f"(target {target}): " + ", ".join(f"{c.pool}/{c.zone}" for c in choices))
        elif missing > 0 and not available:
            self.message = (f"{len(live)}/{target} workers; no free node in pools "
                            f"{', '.join(p.name for p in placement.worker_pools(spec, fallback_active))}"
                            + (f" (cooldown: {', '.join(sorted(self.cooldowns))})" if self.cooldowns else ""))
        self._return_to_spot(spot_offers)
        self.condition("FallbackActive", fallback_active or any(
            not spec.pool(w.pool).spot for w in self.live_workers() if spec.fallback and w.pool == spec.fallback.pool),
            "SpotCapacityShort" if fallback_active else "SpotAvailable",
            "workers run on the on-demand fallback pool" if fallback_active else "workers run on spot")

    def _offerings(self, fallback_active: bool, workers: Sequence[PodView] | None = None,
                   cooldowns: Mapping[str, datetime.datetime] | None = None) -> list[placement.Offering]:
        return placement.offerings(
            self.spec, self.o.nodes.values(), self.workers() if workers is None else workers,
            self.cooldowns if cooldowns is None else cooldowns, self.now, fallback_active,
            node_pools=self.o.node_pools, room=self.o.node_room)

    def _replace_stranded(self, live: list[PodView]) -> None:
        """A pending worker (or return-to-spot probe) whose node will not come is placed again elsewhere: at once
        when its pool and zone can no longer offer a node at all (the zone lost its last node while the worker was
        being placed, its NodePool reached its limits), as soon as the autoscaler reports it cannot serve them
        (``Observed.unservable``), and after the pool's provisioningTimeout otherwise (the autoscaler did not
        deliver); in the last two cases with the pool and zone cooled down so the next offering is tried."""
        anywhere = {(o.pool, o.zone) for o in self._offerings(fallback_active=True, workers=[], cooldowns={})}
        probes = [p for p in self.o.pods if p.role == PROBE_ROLE and p.active]
        for w in [*live, *probes]:
            if w.phase != "Pending" or w.node or w.name in self.removed:
                continue
            key = placement.cooldown_key(w.pool, w.zone)
            if w.unschedulable_since and (w.pool, w.zone) not in anywhere:
                self.remove(w, f"{key} can offer no node; placing the {w.role} elsewhere")
            elif why := self.o.unservable.get(w.name):
                until = self._cool_down(key)
                self.remove(w, f"the autoscaler cannot serve {key}")
                self.event("CapacityUnavailable", f"the autoscaler cannot provision a node in {key} for {w.role} "
                           f"{w.name} ({why}); {key} avoided until {until}", warning=True)
            elif w.created is not None and self.now - w.created >= datetime.timedelta(
                    seconds=self.spec.pool(w.pool).provisioning_timeout_seconds):
                until = self._cool_down(key)
                self.remove(w, f"no node for {key} within its provisioning timeout")
                waited = int((self.now - w.created).total_seconds())
                self.event("ProvisioningTimeout", f"{w.role} {w.name} waited {waited} s for a node in {key}; {key} "
                           f"avoided until {until}", warning=True)

    def _cool_down(self, key: str) -> str:
        """Avoids a pool and zone for spec.placement.cooldown; returns until when, as text."""
        self.cooldowns[key] = self.now + datetime.timedelta(seconds=self.spec.cooldown_seconds)
        return format_time(self.cooldowns[key])

    def _since_text(self) -> str:
        if self.pending_since is None:
            return "now"
        return f"{int((self.now - self.pending_since).total_seconds())} s"

    def _batched(self, missing: int, room: int, running: bool) -> int:
        """Joins restart every worker, so above min they are batched over spec.elastic.scaleUpWindow; the first
        workers, and any needed to get back to min, are created at once."""
        if missing <= 0 or room <= 0:
            self.scale_up_after = None
            return 0
        live = len(self.live_workers())
        if not running or live < self.spec.min_nodes:
            self.scale_up_after = None
            return min(missing, room)
        if self.scale_up_after is None:
            self.scale_up_after = self.now + datetime.timedelta(seconds=self.spec.scale_up_window_seconds)
            return 0
        if self.now < self.scale_up_after:
            return 0
        self.scale_up_after = None
        return min(missing, room)

    def _create(self, choices: Sequence[placement.Choice]) -> None:
        mtbf = None
        if self.start_time and self.preemptions:
            mtbf = (self.now - self.start_time).total_seconds() / self.preemptions
        for choice in choices:
            self.serial += 1
            self.actions.append(act.CreatePod(render_worker(self.o.job, self.spec, choice, self.serial, self.round,
                                                            mtbf)))

    def _scale_down(self, live: list[PodView], target: int) -> None:
        extra = len(live) - target
        if extra <= 0:
            return
        # Pending first, then on-demand, then the newest: the cheapest way back to the target.
        order = sorted(live, key=lambda w: (w.phase != "Pending", self.spec.pool(w.pool).spot, -w.serial))
        for w in order[:extra]:
            self.remove(w, "scale down")
        reason = "MaxBelowWorldSize" if self.spec.max_nodes < len(live) else "ScaleDown"
        self.event(reason, f"world size {len(live)} -> {target} nodes: spec.elastic now allows at most "
                   f"{self.spec.max_nodes} (target {target}); removing {extra} worker(s) gracefully")
        self.condition("SpecChange", True, reason, f"scaled from {len(live)} to {target} workers after a spec update")

    def _return_to_spot(self, spot_offers: Sequence[placement.Offering]) -> None:
        """Moves workers from the on-demand fallback back to spot once spot capacity has really arrived: spot nodes
        that exist and are free. An autoscaled spot pool shows no such node until something asks for one, so while
        workers run on on-demand one probe pod (the worker's size and placement, running nothing) asks for it; once
        the probe runs, its node is there and one worker moves. A probe that gets no node times out like a worker
        and costs the job nothing: the workers keep training on on-demand meanwhile."""
        fb = self.spec.fallback
        probes = [p for p in self.o.pods if p.role == PROBE_ROLE and p.active and p.name not in self.removed]
        on_demand = [w for w in self.live_workers() if fb and w.pool == fb.pool and not self.spec.pool(w.pool).spot]
        if not fb or not fb.return_to_spot or not on_demand or self.pending_since is not None:
            for p in probes:
                self.remove(p, "no probe needed", grace=0)
            return
        if any(w.phase == "Pending" for w in self.live_workers()):
            return
        arrived = [p for p in probes if p.phase == "Running" and p.node]
        spot_live = [w for w in self.live_workers() if w.pool != fb.pool]
        existing = [placement.Offering(o.pool, o.zone, o.existing, o.existing) for o in spot_offers if o.existing > 0]
        for p in arrived:
            # The probe's node is the capacity that arrived: removing the probe makes room there for the worker
            # that moves. (A node whose room is unknown already counts as free among the existing offerings.)
            self.remove(p, "spot capacity arrived", grace=0)
            if p.node in self.o.node_room:
                existing.append(placement.Offering(p.pool, p.zone, 1, 1))
        room = sum(o.free_nodes for o in existing)
        if room > 0:
            choices = placement.choose(self.spec, existing, spot_live, min(room, len(on_demand)))
            if choices:
                for w in sorted(on_demand, key=lambda w: -w.serial)[: len(choices)]:
                    self.remove(w, "returning to spot")
                self._create(choices)
                self.event("ReturnToSpot", f"spot capacity is back: moving {len(choices)} worker(s) from on-demand "
                           "to " + ", ".join(f"{c.pool}/{c.zone}" for c in choices))
                return
        if probes:
            return  # one probe at a time
        hoped = [o for o in spot_offers if o.free_nodes > o.existing]
        for choice in placement.choose(self.spec, hoped, spot_live, 1):
            self.serial += 1
            pool = self.spec.pool(choice.pool)
            self.actions.append(act.CreatePod(render_probe(
                self.o.job, choice, self.serial, self.round, placement.pool_node_selector(self.spec, pool),
                placement.pool_tolerations(self.spec, pool), placement.worker_request(self.spec))))
            self.event("SpotProbe", f"asking {choice.pool}/{choice.zone} for a spot node with a probe pod; "
                       f"workers stay on on-demand until it runs")
