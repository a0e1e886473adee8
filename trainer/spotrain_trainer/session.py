"""The API a training script uses.

    import spotrain_trainer as st

    with st.Session() as session:                       # process group, notice handling, storage
        model = DDP(Net())                              # or fully_shard(...), or a plain module
        opt = torch.optim.AdamW(model.parameters())
        sampler = st.ElasticDistributedSampler(dataset, batch_size=per_rank_batch)
        loader = DataLoader(dataset, batch_size=per_rank_batch, sampler=sampler)
        start = session.restore(model=model, optimizer=opt, scheduler=sched, state={"sampler": sampler})
        for batch in session.iterate(loader, epochs=10):  # checkpoints when due and on notice
            ...train one step...
        # or, without a DataLoader: for step in session.steps(total_steps): ...
    # leaving the block normally: final checkpoint, completion marker, termination message, exit 0

On a notice (SIGTERM, or a request to the pod's control endpoint) every rank takes the same checkpoint at
the same step, makes it durable, reports it and the process exits with ``EXIT_CHECKPOINTED_ON_NOTICE`` (75):
``steps()``/``iterate()`` raise :class:`CheckpointedOnNotice`, a ``SystemExit``, so ``finally`` blocks inside the
loop still run; leaving the ``with`` block with it ends the process at once (``fast_exit``). A worker never exits 0
on an interruption: that would make its torchrun agent close the rendezvous for every node.

What is saved: the model and optimizer(s) through ``get_state_dict``/``set_state_dict`` (DDP, FSDP2 and plain
modules; sharded tensors are resharded on load at a different world size), the scheduler, every object in
``state`` (global: the same on all ranks, e.g. a sampler position) and, under per-rank keys, the RNG states and
every object in ``rank_state`` (DCP keeps a single copy of a value saved under the same key by every rank).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import random
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from spotrain_protocol import CheckpointRef, CheckpointRequest, CompletionRecord, envvars
from spotrain_protocol import status as keys

from .checkpoint.commit import CheckpointError, utc_now_rfc3339
from .checkpoint.dcp import Checkpointer, CheckpointRecord
from .checkpoint.storage import open_storage
from .config import TrainerConfig
from .constants import EXIT_CHECKPOINTED_ON_NOTICE, EXIT_NOTICE_CHECKPOINT_FAILED
from .failures import record_script_failures
from .interval import IntervalPolicy
from .notice import (
    NoticeMonitor,
    coordinate_flags,
    parse_deadline,
    reduces_cpu_tensors,
    second_save_fits,
)
from .statefiles import read_json
from .status import StatusReporter, status_path

log = logging.getLogger("spotrain_trainer")

T = TypeVar("T")

_META_KEY = "spotrain"
_RANK_KEY = "spotrain_rank"
_APP_KEY = "app"
_USER_PREFIX = "state."


class CheckpointedOnNotice(SystemExit):
    """Raised out of ``Session.steps()`` once the checkpoint taken on notice is durable (exit code 75)."""

    def __init__(self, step: int, request_id: str | None) -> None:
        super().__init__(EXIT_CHECKPOINTED_ON_NOTICE)
        self.step = step
        self.request_id = request_id


class NoticeCheckpointFailed(SystemExit):
    """The checkpoint on notice could not be made durable (exit code 76); the error is in the status."""

    def __init__(self, step: int, error: str) -> None:
        super().__init__(EXIT_NOTICE_CHECKPOINT_FAILED)
        self.step = step
        self.error = error


class _AppState(Stateful):
    """Model, optimizers and scheduler as one DCP ``Stateful``."""

    def __init__(self, model: torch.nn.Module | None, optimizers: Sequence[torch.optim.Optimizer], scheduler: Any):
        self.model = model
        self.optimizers = tuple(optimizers)
        self.scheduler = scheduler

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.model is not None:
            msd, osd = get_state_dict(self.model, self.optimizers)
            out["model"] = msd
            if self.optimizers:
                out["optim"] = osd
        if self.scheduler is not None:
            out["scheduler"] = copy.deepcopy(self.scheduler.state_dict())
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.model is not None:
            set_state_dict(
                self.model,
                self.optimizers,
                model_state_dict=state_dict["model"],
                optim_state_dict=state_dict.get("optim", {}),
            )
        if self.scheduler is not None and "scheduler" in state_dict:
            self.scheduler.load_state_dict(state_dict["scheduler"])


class _UserState(Stateful):
    """A user object with state_dict/load_state_dict, or a plain dict updated in place."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def state_dict(self) -> dict[str, Any]:
        if isinstance(self.obj, dict):
            return copy.deepcopy(self.obj)
        return copy.deepcopy(self.obj.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if isinstance(self.obj, dict):
            self.obj.clear()
            self.obj.update(state_dict)
        else:
            self.obj.load_state_dict(state_dict)


def _check_stateful(kind: str, key: str, obj: Any) -> None:
    """Fail in restore(), naming the key, rather than at the first checkpoint (which may be the preemption)."""
    if isinstance(obj, dict) or all(callable(getattr(obj, m, None)) for m in ("state_dict", "load_state_dict")):
        return
    hint = ""
    if isinstance(obj, torch.utils.data.DistributedSampler):
        hint = (
            ": a DistributedSampler keeps no position; use spotrain_trainer.ElasticDistributedSampler, which resumes "
            "mid-epoch at any world size, and iterate with session.iterate(loader, epochs=...)"
        )
    raise TypeError(
        f"{kind}[{key!r}] is a {type(obj).__name__}, which is not a dict and has no state_dict()/load_state_dict()"
        + hint
    )


def _capture_rng() -> dict[str, Any]:
    out: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        out["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return out


def _apply_rng(state: Mapping[str, Any]) -> None:
    if "python" in state:
        random.setstate(state["python"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError) as exc:  # a different number of devices
            log.warning("could not restore CUDA RNG state: %s", exc)
    if "numpy" in state:
        try:
            import numpy as np

            np.random.set_state(state["numpy"])
        except ImportError:
            pass


def checkpoint_kind(reason: str) -> str:
    """The status/metrics kind of a checkpoint taken for ``reason``: ``notice`` (``notice:...``, see
    ``_checkpoint_on_notice``), ``regular``, ``final``, or ``manual`` (``checkpoint_now``, whatever its reason)."""
    if reason.startswith("notice:"):
        return "notice"
    return reason if reason in ("regular", "final") else "manual"


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


class Session:
    """One worker's view of an elastic, preemptible training job (see the module docstring).

    Creating it installs the SIGTERM handler (first, so that a notice during start-up is not lost), initialises
    the default process group if the script has not (gloo on CPU, ``cpu:gloo,cuda:nccl`` with CUDA; a world
    of one outside torchrun), creates a gloo group reserved for checkpoints, and opens the checkpoint storage.

    Args:
        config: settings; by default read from the environment (:meth:`TrainerConfig.from_env`).
        backend: process group backend when the session creates the group.
        checkpoint_every_steps: take regular checkpoints every N steps instead of by time (overrides
            ``SPOTRAIN_CHECKPOINT_EVERY_STEPS``; the time-based interval is the default).
        install_signal_handler: handle SIGTERM (only the main thread can).
        fast_exit: after a checkpoint on notice, leave the ``with`` block with ``os._exit(75)`` instead of a
            slow interpreter teardown (seconds with torch loaded). Everything written is fsynced by then.
        max_checkpoint_failures: regular checkpoints that may fail in a row before training stops with
            :class:`CheckpointError` (every failure is reported in the status and the metrics).
    """

    def __init__(
        self,
        *,
        config: TrainerConfig | None = None,
        backend: str | None = None,
        checkpoint_every_steps: int | None = None,
        install_signal_handler: bool = True,
        fast_exit: bool = True,
        max_checkpoint_failures: int = 3,
    ) -> None:
        self.notice = NoticeMonitor(None)
        if install_signal_handler:
            self.notice.install()
        if not logging.getLogger().handlers:
            rank_env = os.environ.get("RANK", "0")
            logging.basicConfig(
                level=os.environ.get(envvars.LOG_LEVEL, "INFO"),
                format=f"%(asctime)s %(levelname)s [rank {rank_env}] %(name)s: %(message)s",
            )
        self.config = config or TrainerConfig.from_env()
        self.fast_exit = fast_exit
        cfg = self.config
        self._owns_pg = False
        timeout = timedelta(seconds=cfg.pg_timeout_seconds)
        if not dist.is_initialized():
            if backend is None:
                backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
                dist.init_process_group(backend=backend, timeout=timeout)
            else:  # a plain `python train.py`: a world of one
                dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
            self._owns_pg = True
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = _env_int("LOCAL_RANK", 0)
        self.restart_count = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        # A gloo group reserved for checkpoints: async checkpoints run collectives from a background thread.
        self._ckpt_group = dist.new_group(backend="gloo", timeout=timeout)
        # The per-step flags are a CPU tensor. A default group the script created with a backend that has no CPU
        # side (``init_process_group("nccl")``, the usual torchrun pattern) cannot reduce it: the flags then go
        # over a gloo group of their own. Not over the checkpoint group: an async checkpoint runs collectives on
        # it from a background thread, and collectives of two threads on one group would interleave.
        self._flag_group = None if reduces_cpu_tensors(None) else dist.new_group(backend="gloo", timeout=timeout)

        self.is_local_leader = self.local_rank == 0
        state_dir = cfg.state_dir
        if self.is_local_leader:
            state_dir.mkdir(parents=True, exist_ok=True)
        self.status = StatusReporter(
            status_path(state_dir) if self.is_local_leader else None,
            job=cfg.job_name,
            pod=cfg.pod_name,
            min_interval=cfg.status_interval_seconds,
        )
        # Every local rank watches the request file (a stat per step), so that any of them can cut a long wait
        # inside a step short (notice_pending); the local leader alone reports the request as handled.
        previous = read_json(status_path(state_dir)) or {}
        self.notice.watch(state_dir, self.status.get(keys.HANDLED_REQUEST_ID) or previous.get(keys.HANDLED_REQUEST_ID))

        self.storage = open_storage(cfg.checkpoint_uri, s3=cfg.s3, staging_dir=cfg.staging_dir)
        if not self.storage.writes_in_place and not cfg.staging_dir_set and self.is_local_leader:
            log.warning(
                "%s is not set: checkpoints are staged in %s, which in a container is its writable layer (small, "
                "and counted against the pod's ephemeral storage); mount a volume and set %s to it",
                envvars.STAGING_DIR,
                cfg.staging_dir,
                envvars.STAGING_DIR,
            )
        self.checkpointer = Checkpointer(
            self.storage,
            group=self._ckpt_group,
            rank=self.rank,
            world_size=self.world_size,
            local_rank=self.local_rank,
            keep_last=cfg.keep_last,
            cache_dir=cfg.staging_dir / "restore",
            job=cfg.job_name,
            pod=cfg.pod_name,
            writer_threads=cfg.writer_threads,
            on_commit=self._on_commit,
            pinned_staging=torch.cuda.is_available(),
        )
        iv = cfg.interval
        self.interval = IntervalPolicy(
            mode=iv.mode,
            fixed_seconds=iv.fixed_seconds,
            min_seconds=iv.min_seconds,
            max_seconds=iv.max_seconds,
            mtbf_seconds=iv.mtbf_seconds,
        )
        self.every_steps = checkpoint_every_steps or iv.every_steps

        self.step = 0
        self.total_steps: int | None = None
        self.restored_step: int | None = None
        self._app: _AppState | None = None
        self._user_state: dict[str, _UserState] = {}
        self._rank_state: dict[str, _UserState] = {}
        self._restored = False
        self._completed = False
        self._closed = False
        self._last_ckpt_started = time.monotonic()
        self._next_due_step: int | None = None
        self._sps: float | None = None
        self._last_boundary: tuple[float, int] | None = None
        self._consecutive_failures = 0
        self.max_consecutive_failures = max(1, max_checkpoint_failures)
        # The step of the checkpoint an operator request made durable in this generation, and that request's
        # deadline (unix time): a SIGTERM after it takes a second save only when one fits (second_save_fits).
        self._request_checkpoint_step: int | None = None
        # The step a steps()/iterate() loop has handed out and not finished (see _start_loop).
        self._open_step: int | None = None
        self._notice_deadline: float | None = None

        self.status.update(
            phase="starting",
            world_size=self.world_size,
            rank=self.rank,
            restart_count=self.restart_count,
            # How many worker groups this pod has started: each start follows a rendezvous round.
            rendezvous_round=int(self.status.get("rendezvous_round") or 0) + 1,
            # The rendezvous this group formed in (torchrun's run id): after a store move, the operator sees here
            # that this pod's workers train on the new store.
            **{keys.RENDEZVOUS_ID: os.environ.get("TORCHELASTIC_RUN_ID") or None},
            completed=False,
            error=None,
            checkpoint_interval_seconds=self._interval_for_status(),
        )
        self.status.flush(force=True)
        # A crash of the script itself is counted against the job's failure budget; a peer's loss is not.
        record_script_failures(self.status, lambda: self.step)
        log.info(
            "session: rank %d/%d local_rank %d restart %d, checkpoints in %s",
            self.rank,
            self.world_size,
            self.local_rank,
            self.restart_count,
            self.storage.uri,
        )

    # ------------------------------------------------------------------------------------ context manager
    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.complete()
            self.close()
            return
        if isinstance(exc, CheckpointedOnNotice | NoticeCheckpointFailed):
            self.close()
            if self.fast_exit:
                # Everything the session wrote is fsynced. Tearing down an interpreter with torch loaded takes
                # seconds, which would only delay the agent's restart (or the pod's end): exit right away.
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(int(exc.code) if isinstance(exc.code, int) else 1)
            return
        self._fail(exc)
        return

    # -------------------------------------------------------------------------------------------- restore
    def restore(
        self,
        *,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        scheduler: Any = None,
        state: Mapping[str, Any] | None = None,
        rank_state: Mapping[str, Any] | None = None,
    ) -> int:
        """Register what to checkpoint and load the newest committed checkpoint into it (collective).

        ``state``: objects with ``state_dict``/``load_state_dict`` (or plain dicts) that are the same on every
        rank. ``rank_state``: the same, but different per rank (saved under per-rank keys; a rank that did not
        exist when the checkpoint was taken keeps its fresh state). Returns the step to continue from.
        """
        if self._restored:
            raise RuntimeError("restore() was already called")
        if optimizer is None:
            optimizers: tuple[torch.optim.Optimizer, ...] = ()
        elif isinstance(optimizer, torch.optim.Optimizer):
            optimizers = (optimizer,)
        else:
            optimizers = tuple(optimizer)
        self._app = _AppState(model, optimizers, scheduler)
        for kind, objects in (("state", state), ("rank_state", rank_state)):
            for key, obj in (objects or {}).items():
                _check_stateful(kind, key, obj)
        self._user_state = {k: _UserState(v) for k, v in (state or {}).items()}
        self._rank_state = {k: _UserState(v) for k, v in (rank_state or {}).items()}
        self.status.update(phase="starting")
        self.status.flush(force=True)

        loaded_rank_state: dict[str, Any] = {}

        def make_target(keys: set[str]) -> dict[str, Any]:
            target: dict[str, Any] = {_META_KEY: {"step": 0, "world_size": 0}}
            if self._app is not None and (self._app.model is not None or self._app.scheduler is not None):
                target[_APP_KEY] = self._app
            for name, obj in self._user_state.items():
                target[_USER_PREFIX + name] = obj
            rank_key = f"{_RANK_KEY}.{self.rank}"
            if rank_key in keys:
                loaded_rank_state.clear()
                target[_RANK_KEY] = {str(self.rank): b""}
                loaded_rank_state["target"] = target[_RANK_KEY]
            return target

        result = self.checkpointer.restore(make_target)
        if result is None:
            self.step = 0
            log.info("no committed checkpoint in %s: starting from step 0", self.storage.uri)
        else:
            self.step = result.step
            self.restored_step = result.step
            if "target" in loaded_rank_state:
                blob = loaded_rank_state["target"][str(self.rank)]
                per_rank = pickle.loads(blob) if isinstance(blob, bytes | bytearray) and blob else {}
                if "rng" in per_rank:
                    _apply_rng(per_rank["rng"])
                for name, obj in self._rank_state.items():
                    if name in per_rank.get("user", {}):
                        obj.load_state_dict(per_rank["user"][name])
            for step, why in result.skipped:
                log.warning("skipped committed checkpoint step %d: %s", step, why)
            log.info(
                "restored step %d (saved at world size %d, now %d)",
                result.step,
                result.marker.world_size,
                self.world_size,
            )
            self.status.update(last_checkpoint=self._status_record(result.record, None))
        self._restored = True
        self._last_ckpt_started = time.monotonic()
        if self.every_steps:
            self._next_due_step = (self.step // self.every_steps + 1) * self.every_steps
        self.status.update(step=self.step, restored_step=self.restored_step, phase="training")
        self.status.flush(force=True)
        return self.step

    # ---------------------------------------------------------------------------------------------- steps
    def steps(self, total_steps: int) -> Iterator[int]:
        """Yield the step indices still to run (``step`` .. ``total_steps - 1``).

        Before each step (and after the last) all ranks agree on whether to checkpoint; on a notice this
        raises :class:`CheckpointedOnNotice` once the coordinated checkpoint is durable. For a DataLoader and
        epochs use :meth:`iterate`: ``zip(loader, session.steps(n))`` leaves a step unfinished at the end of each
        epoch, and the next loop refuses to start.
        """
        if not self._restored:
            self.restore()
        self._start_loop()
        self.total_steps = total_steps
        self.status.update(phase="training")
        while True:
            self._boundary(total_steps)
            if self.step >= total_steps:
                return
            self._open_step = self.step
            yield self.step
            self._open_step = None
            self.step += 1

    def iterate(self, loader: Iterable[T], *, epochs: int) -> Iterator[T]:
        """Yield ``loader``'s batches for the epochs still to run, one step per batch.

        The loader's sampler must be an :class:`~spotrain_trainer.data.ElasticDistributedSampler` registered in
        :meth:`restore`'s ``state``: the session owns the step boundary (the checkpoint decision before each
        batch, as in :meth:`steps`) and the data position (``sampler.advance()`` after each step,
        ``sampler.set_epoch()`` between epochs), so a checkpoint always holds the position of its step and a
        resumed job, at any world size, continues with the next unused sample. ``sampler.epoch`` is the epoch.
        """
        from .data import ElasticDistributedSampler

        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, ElasticDistributedSampler):
            sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
        if not isinstance(sampler, ElasticDistributedSampler):
            raise TypeError(
                "iterate() needs a DataLoader whose sampler is a spotrain_trainer.ElasticDistributedSampler "
                f"(got {type(sampler).__name__}): it is the data position the checkpoints keep"
            )
        if not self._restored or not any(u.obj is sampler for u in self._user_state.values()):
            raise RuntimeError(
                "pass the loader's sampler to session.restore(..., state={'sampler': sampler}) before iterate(): "
                "otherwise its position is not checkpointed"
            )
        batch_size = getattr(loader, "batch_size", sampler.batch_size)
        if batch_size is not None and batch_size != sampler.batch_size:
            raise ValueError(
                f"the DataLoader's batch_size {batch_size} differs from the sampler's batch_size {sampler.batch_size}"
            )
        if getattr(loader, "drop_last", False):
            raise ValueError("use drop_last=False: the sampler already gives every rank a batch at every step")
        self._start_loop()
        self.status.update(phase="training")
        checked_step: int | None = None  # one boundary per step, also where an epoch ends

        def boundary() -> None:
            nonlocal checked_step
            if checked_step != self.step:
                self._boundary(None)
                checked_step = self.step

        while True:
            if sampler.epoch >= epochs:
                boundary()
                return
            batches = iter(loader)
            while True:
                boundary()
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                self._open_step = self.step
                yield batch
                self._open_step = None
                self.step += 1
                sampler.advance()
            if sampler.steps_left:
                raise RuntimeError(
                    f"the DataLoader ended epoch {sampler.epoch} with {sampler.steps_left} step(s) of its sampler left"
                )
            sampler.set_epoch(sampler.epoch + 1)

    def _start_loop(self) -> None:
        if self._open_step is not None:
            raise RuntimeError(
                f"step {self._open_step} of an earlier steps()/iterate() loop was handed out but never finished (its "
                "loop was left, e.g. by zip(loader, session.steps(n)) when the loader ran out); a new loop would "
                "repeat it. Iterate the loader through the session instead: for batch in session.iterate(loader, "
                "epochs=N)"
            )

    def _boundary(self, total_steps: int | None) -> None:
        now = time.monotonic()
        if self._last_boundary is not None:
            t_prev, s_prev = self._last_boundary
            if self.step > s_prev and now > t_prev:
                rate = (self.step - s_prev) / (now - t_prev)
                self._sps = rate if self._sps is None else 0.8 * self._sps + 0.2 * rate
        self._last_boundary = (now, self.step)
        self._collect(self.checkpointer.poll())

        notice_local = self.notice.local_flag()
        more = total_steps is None or self.step < total_steps
        due_local = self.rank == 0 and more and self._regular_due(now)
        busy_local = self.checkpointer.busy()
        # Ranks learn the outcome of an asynchronous checkpoint at slightly different steps; deciding to give
        # up through the same all-reduce makes every rank raise at the same step.
        fatal_local = self._consecutive_failures >= self.max_consecutive_failures
        notice, due, busy, fatal = coordinate_flags(
            [notice_local, due_local, busy_local, fatal_local], group=self._flag_group
        )
        if fatal:
            self.status.update(phase="failed", error=f"{self.max_consecutive_failures} checkpoints in a row failed")
            self.status.flush(force=True)
            raise CheckpointError(
                f"{self.max_consecutive_failures} checkpoints in a row failed; last: "
                f"{self.status.get('last_checkpoint_error')}"
            )
        if notice:
            self._checkpoint_on_notice()
        if due and not busy:
            self._regular_checkpoint()
        self.status.update(
            step=self.step,
            steps_per_second=None if self._sps is None else round(self._sps, 6),
            checkpoint_in_flight_step=self.checkpointer.inflight_step,
        )
        self.status.flush()

    def _regular_due(self, now: float) -> bool:
        if self.checkpointer.last_committed_step == self.step:
            return False
        if self.every_steps:
            return self._next_due_step is not None and self.step >= self._next_due_step
        return self.interval.due(now - self._last_ckpt_started)

    def _interval_for_status(self) -> float | None:
        return None if self.every_steps else round(self.interval.interval_seconds(), 3)

    # ------------------------------------------------------------------------------------ checkpointing
    def _state_dict(self) -> dict[str, Any]:
        sd: dict[str, Any] = {_META_KEY: {"step": self.step, "world_size": self.world_size}}
        if self._app is not None and (self._app.model is not None or self._app.scheduler is not None):
            sd[_APP_KEY] = self._app
        for name, obj in self._user_state.items():
            sd[_USER_PREFIX + name] = obj
        per_rank = {"rng": _capture_rng(), "user": {k: v.state_dict() for k, v in self._rank_state.items()}}
        sd[_RANK_KEY] = {str(self.rank): pickle.dumps(per_rank)}
        return sd

    def _regular_checkpoint(self) -> None:
        self._last_ckpt_started = time.monotonic()
        if self.every_steps:
            self._next_due_step = (self.step // self.every_steps + 1) * self.every_steps
        try:
            rec = self.checkpointer.save(
                self.step, self._state_dict(), asynchronous=self.config.async_checkpoints, reason="regular"
            )
        except CheckpointError as exc:
            self._collect(exc)
            return
        if rec is not None:
            self._collect(rec)
        else:
            self.status.update(checkpoint_in_flight_step=self.step)

    def _collect(self, outcome: CheckpointRecord | BaseException | None) -> None:
        """Account for the outcome of a regular checkpoint (async ones arrive here via poll/wait). Never raises:
        giving up after repeated failures is decided collectively at the next step boundary."""
        if outcome is None:
            return
        if isinstance(outcome, BaseException):
            self._consecutive_failures += 1
            self.status.count_failure(str(outcome))
            self.status.flush(force=True)
            log.error(
                "regular checkpoint failed (%d in a row): %s", self._consecutive_failures, outcome, exc_info=outcome
            )
            return
        self._consecutive_failures = 0
        cost = outcome.stall_seconds if self.config.async_checkpoints else outcome.duration_seconds
        self.interval.observe(cost, outcome.duration_seconds)
        self.status.update(checkpoint_interval_seconds=self._interval_for_status())

    def _on_commit(self, record: CheckpointRecord) -> None:
        """Called on every rank once a checkpoint is durable (possibly from the background thread)."""
        kind = checkpoint_kind(record.reason)
        self.status.count_checkpoint(kind, record.stall_seconds)
        if kind == "notice":
            # The notice handler reports it, together with handled_request_id, in one status write.
            return
        self.status.update(
            last_checkpoint=self._status_record(record, None),
            last_checkpoint_error=None,
            checkpoint_in_flight_step=None,
        )
        self.status.flush(force=True)

    def _status_record(self, record: CheckpointRecord, request_id: str | None) -> dict[str, Any]:
        rec = record.to_status()
        rec[keys.CHECKPOINT_REQUEST_ID] = request_id
        return rec

    def _checkpoint_on_notice(self) -> None:
        # Let a checkpoint in flight finish first: its collectives use the checkpoint group, and so do ours.
        self._collect(self.checkpointer.wait())
        # Every local rank reads the pod's request file, so every one of them can mark the request handled below.
        req: CheckpointRequest | None = self.notice.pending_request()
        mine = None if req is None else (req.id, req.reason)
        estimate = self._save_estimate_seconds()
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(
            gathered,
            (mine, self.notice.sigterm_received, self._notice_deadline, estimate, time.time()),
            group=self._ckpt_group,
        )
        request_ids = tuple(dict.fromkeys(g[0][0] for g in gathered if g[0] is not None))
        reasons = [g[0][1] for g in gathered if g[0] is not None]
        sigterm = any(g[1] for g in gathered)
        if sigterm:
            reasons.append("sigterm")
        reason = "notice:" + (",".join(dict.fromkeys(reasons)) or "unknown")
        request_id = mine[0] if mine is not None else (request_ids[0] if request_ids else None)
        last = self.checkpointer.last_committed
        if (
            sigterm
            and not request_ids
            and self._request_checkpoint_step is not None
            and (last is None or last.step != self.step)
        ):
            # The eviction that follows an operator request: the state of the request's checkpoint is durable, and
            # a second full save is only worth it when it surely fits before the deadline. All ranks decide alike
            # from the gathered values (rank 0's clock, the latest-known deadline, the slowest rank's estimate).
            # Once that deadline is past, its nodes are gone: this SIGTERM is another event (a join, a scale-down,
            # a later notice), and it gets its checkpoint like any other.
            deadlines = [g[2] for g in gathered if g[2] is not None]
            notice_over = bool(deadlines) and gathered[0][4] >= min(deadlines)
            if not notice_over and not second_save_fits(
                deadline_unix=min(deadlines) if deadlines else None,
                now_unix=gathered[0][4],
                estimate_seconds=max(g[3] for g in gathered),
            ):
                self._exit_without_second_save(deadlines, max(g[3] for g in gathered), gathered[0][4])
        log.warning("notice (%s) at step %d: coordinated checkpoint", reason, self.step)
        self.status.update(phase="checkpointing", step=self.step)
        self.status.flush(force=True)
        try:
            if last is not None and last.step == self.step:
                record = last  # the current state is already durable
                log.info("step %d is already committed; nothing to write", self.step)
            else:
                saved = self.checkpointer.save(
                    self.step,
                    self._state_dict(),
                    asynchronous=False,
                    reason=reason,
                    request_id=request_ids[0] if request_ids else None,
                    request_ids=request_ids,
                )
                assert saved is not None
                record = saved
        except CheckpointError as exc:
            self.status.count_failure(str(exc))
            self.status.update(phase="failed", error=f"checkpoint on notice failed: {exc}")
            self.status.flush(force=True)
            log.error("checkpoint on notice failed at step %d: %s", self.step, exc)
            raise NoticeCheckpointFailed(self.step, str(exc)) from exc
        # Durable now: every rank marks the request it checkpointed for as handled (a rank that kept seeing it
        # pending would take another checkpoint at every step); the local leader reports it in the status.
        current = self.notice.pending_request()
        handled = current.id if current is not None and current.id in request_ids else (mine[0] if mine else None)
        if handled is not None:
            self.notice.mark_handled(handled)
            self.status.update(handled_request_id=handled)
        if request_ids:
            self._request_checkpoint_step = self.step
            deadline = current.deadline if current is not None and current.id == handled else None
            self._notice_deadline = parse_deadline(deadline or (req.deadline if req is not None else None))
        self.status.update(
            last_checkpoint=self._status_record(record, request_id),
            last_checkpoint_error=None,
            checkpoint_in_flight_step=None,
            phase="starting" if sigterm else "training",
        )
        self.status.flush(force=True)
        if not sigterm:
            # The operator asked, nobody is being stopped yet: the state is durable, so keep training. The operator
            # evicts the doomed pods next; their SIGTERM brings every rank back here for a second checkpoint when
            # it fits before the deadline (see second_save_fits), and only then do all ranks exit, while the doomed
            # agents are already shutting down. Exiting now instead would restart every agent, the doomed ones too,
            # and a doomed agent that rejoined the next rendezvous round before its eviction would stall the
            # survivors.
            log.warning("checkpoint on notice durable at step %d; training on until the eviction", self.step)
            return
        self._exit_on_notice(request_id)

    def _exit_on_notice(self, request_id: str | None) -> None:
        log.warning(
            "checkpoint on notice durable at step %d; exiting %d so that torchrun restarts the workers from it "
            "(the expected end of an interrupted generation, not a crash)",
            self.step,
            EXIT_CHECKPOINTED_ON_NOTICE,
        )
        raise CheckpointedOnNotice(self.step, request_id)

    def _exit_without_second_save(self, deadlines: list[float], estimate: float, now: float) -> None:
        # The newest durable state: the requested checkpoint, or a regular one committed since.
        kept = int(self.checkpointer.last_committed_step or self._request_checkpoint_step or 0)
        left = f"{min(deadlines) - now:.1f}s" if deadlines else "an unknown time"
        log.warning(
            "SIGTERM at step %d after the checkpoint of step %d the operator requested: a full save takes about "
            "%.1fs and %s is left before the deadline, so no second save (steps %d..%d will run again); exiting %d",
            self.step,
            self._request_checkpoint_step,
            estimate,
            left,
            kept,
            self.step - 1,
            EXIT_CHECKPOINTED_ON_NOTICE,
        )
        self.status.update(phase="starting", step=self.step)
        self.status.flush(force=True)
        raise CheckpointedOnNotice(kept, None)

    def _save_estimate_seconds(self) -> float:
        """How long the last full save took here (write and upload, not only the stall; 0 if none yet)."""
        last = self.checkpointer.last_committed
        return 0.0 if last is None else max(last.duration_seconds, 0.0)

    def checkpoint_now(self, reason: str = "manual", *, asynchronous: bool = False) -> CheckpointRecord | None:
        """Checkpoint the current step now (collective; every rank must call it at the same step).

        Synchronous: returns the committed record (raises CheckpointError if it cannot be made durable).
        Asynchronous: returns None once the snapshot is taken; :meth:`wait_for_checkpoint` gives the record.
        """
        self._collect(self.checkpointer.wait())
        last = self.checkpointer.last_committed
        if last is not None and last.step == self.step:
            return last
        return self.checkpointer.save(self.step, self._state_dict(), asynchronous=asynchronous, reason=reason)

    def wait_for_checkpoint(self) -> CheckpointRecord | None:
        """Wait for the asynchronous checkpoint in flight; its record (None if none; raises if it failed)."""
        outcome = self.checkpointer.wait()
        if isinstance(outcome, BaseException):
            self.status.count_failure(str(outcome))
            raise CheckpointError(str(outcome)) from outcome
        if outcome is not None:
            self._collect(outcome)
        return outcome

    # ----------------------------------------------------------------------------------------- complete
    def complete(self) -> None:
        """Final checkpoint, completion marker in storage, termination message; status ``completed``."""
        if self._completed:
            return
        if not self._restored:
            self.restore()
        self.status.update(phase="checkpointing")
        self.status.flush(force=True)
        self._collect(self.checkpointer.wait())
        last = self.checkpointer.last_committed
        if last is None or last.step != self.step:
            try:
                self.checkpointer.save(self.step, self._state_dict(), asynchronous=False, reason="final")
            except CheckpointError as exc:
                self.status.update(phase="failed", error=f"final checkpoint failed: {exc}")
                self.status.flush(force=True)
                raise
        marker = {
            "spotrain": "completed",
            "step": self.step,
            "job": self.config.job_name,
            "world_size": self.world_size,
            "time": utc_now_rfc3339(),
        }
        error: list[Any] = [None]
        if self.rank == 0:
            try:
                self.storage.write_completed((json.dumps(marker, sort_keys=True) + "\n").encode())
            except Exception as exc:
                error = [str(exc)]
        dist.broadcast_object_list(error, src=0, group=self._ckpt_group)
        if error[0]:
            self.status.update(phase="failed", error=f"completion marker: {error[0]}")
            self.status.flush(force=True)
            raise CheckpointError(f"could not write the completion marker: {error[0]}")
        if self.is_local_leader:
            final = self.checkpointer.last_committed
            self._write_termination_log(CompletionRecord(
                step=self.step,
                checkpoint=None if final is None else CheckpointRef(step=final.step, uri=final.uri, time=final.time),
            ).to_message())
        self._completed = True
        self.status.update(phase="completed", completed=True, step=self.step)
        self.status.flush(force=True)
        log.info("job complete at step %d", self.step)

    def _write_termination_log(self, message: str) -> None:
        path = self.config.termination_log
        if not path.parent.is_dir():
            return
        try:
            # Written in place: in a pod /dev/termination-log is a bind-mounted file that cannot be renamed over.
            with open(path, "w") as f:
                f.write(message)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            log.warning("could not write the termination message to %s: %s", path, exc)

    # -------------------------------------------------------------------------------------------- close
    def close(self) -> None:
        """Wait for an in-flight checkpoint, release the checkpoint thread and the process group."""
        if self._closed:
            return
        self._closed = True
        self._collect(self.checkpointer.wait())
        self.checkpointer.shutdown(wait=True)
        self.status.flush(force=True)
        self.notice.uninstall()
        if self._owns_pg and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as exc:
                log.debug("destroy_process_group: %s", exc)

    def _fail(self, exc: BaseException) -> None:
        self.status.update(phase="failed", error=f"{type(exc).__name__}: {exc}")
        self.status.flush(force=True)
        if not self.checkpointer.wait_for(timeout=30.0):
            # A checkpoint thread stuck in a collective with a lost peer would keep the interpreter from
            # exiting (executor threads are joined at exit): exit now so the agent can restart the workers.
            log.error("checkpoint in flight did not finish after a failure; exiting immediately", exc_info=exc)
            logging.shutdown()
            sys.stderr.flush()
            os._exit(1)
        self._closed = True
        self.checkpointer.shutdown(wait=False)
        self.notice.uninstall()

    # ------------------------------------------------------------------------------------------- helpers
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def completed(self) -> bool:
        return self._completed

    @property
    def notice_pending(self) -> bool:
        """True once this process got SIGTERM or this pod got a checkpoint request that is not handled yet.
        Training code that can block for long inside a step (waiting for data, say) may check it and return
        early: the coordinated checkpoint is taken at the next step boundary."""
        return self.notice.local_flag()

    def status_snapshot(self) -> dict[str, Any]:
        with self.status._lock:
            return dict(self.status.data)
