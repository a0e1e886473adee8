"""Coordinated DCP checkpoints: save (synchronous or ``dcp.async_save``), commit, retain, restore.

Every method here is collective over ``group`` (a gloo process group reserved for checkpoints, so that an
asynchronous checkpoint's collectives in the background thread never interleave with the training loop's
collectives on the default group). All ranks must call them in the same order.

Save protocol for step N (all ranks):

1. DCP writes this rank's ``__{rank}_*.distcp`` (rank 0 also ``.metadata``) to ``storage.write_dir``: the final
   directory on a local/volume path, a node-local staging directory for S3. With ``async_save`` training only
   stalls for the snapshot (state dict + copy to CPU); the rest runs in a background thread.
2. Each rank hashes its files (SHA-256) and makes them durable (fsync, or upload with retries).
3. ``all_gather_object`` of the per-rank file lists (or errors). Rank 0 writes the ``COMMIT`` marker only if
   every rank succeeded, then broadcasts the outcome: every rank learns the same result.
4. Rank 0 applies retention (keep the newest N committed; never the checkpoint this generation loaded).

Restore: rank 0 lists the committed steps; the local rank 0 of each node checks the newest one's listing against
its marker; then every rank loads it through :class:`VerifyingReader`, which fetches and verifies only the files
the rank's load plan reads. Any failure on any rank (a vote over the group) falls back to the next older one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner

from spotrain_protocol import status as keys

from .commit import (
    CheckpointError,
    CommitMarker,
    FileInfo,
    IntegrityError,
    check_sizes,
    hash_file,
    plan_retention,
    step_dir_name,
    utc_now_rfc3339,
    verify_local_files,
)
from .storage import CheckpointStorage

log = logging.getLogger(__name__)

METADATA_FILE = ".metadata"


@dataclass
class CheckpointRecord:
    """A committed (durable) checkpoint, as reported in the status."""

    step: int
    uri: str
    time: str
    unix_time: float
    duration_seconds: float
    stall_seconds: float
    bytes: int
    world_size: int
    reason: str
    request_id: str | None = None
    request_ids: tuple[str, ...] = ()

    def to_status(self) -> dict[str, Any]:
        return {
            keys.CHECKPOINT_STEP: self.step,
            keys.CHECKPOINT_URI: self.uri,
            keys.CHECKPOINT_TIME: self.time,
            "unix_time": self.unix_time,
            "duration_seconds": round(self.duration_seconds, 6),
            "stall_seconds": round(self.stall_seconds, 6),
            "bytes": self.bytes,
            "world_size": self.world_size,
            "reason": self.reason,
            keys.CHECKPOINT_REQUEST_ID: self.request_id,
        }

    @classmethod
    def from_marker(cls, marker: CommitMarker, uri: str) -> CheckpointRecord:
        return cls(
            step=marker.step,
            uri=uri,
            time=marker.time,
            unix_time=marker.unix_time,
            duration_seconds=float(marker.duration_seconds or 0.0),
            stall_seconds=float(marker.extra.get("stall_seconds") or marker.duration_seconds or 0.0),
            bytes=marker.total_bytes,
            world_size=marker.world_size,
            reason=marker.reason,
            request_id=marker.request_id,
            request_ids=tuple(marker.extra.get("request_ids") or ()),
        )


@dataclass
class RestoreResult:
    step: int
    marker: CommitMarker
    record: CheckpointRecord
    skipped: list[tuple[int, str]]  # newer committed checkpoints that could not be loaded, and why


def own_files(directory: Path, rank: int) -> list[str]:
    """The files ``rank`` wrote into ``directory`` during a DCP save."""
    prefix = f"__{rank}_"
    names = [n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(".distcp")]
    if rank == 0 and (directory / METADATA_FILE).exists():
        names.append(METADATA_FILE)
    return sorted(names)


class Checkpointer:
    def __init__(
        self,
        storage: CheckpointStorage,
        *,
        group: Any,
        rank: int,
        world_size: int,
        local_rank: int,
        keep_last: int,
        cache_dir: Path,
        job: str | None = None,
        pod: str | None = None,
        writer_threads: int = 1,
        on_commit: Callable[[CheckpointRecord], None] | None = None,
        pinned_staging: bool = False,
    ) -> None:
        self.storage = storage
        self.group = group
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.keep_last = keep_last
        self.cache_dir = Path(cache_dir)
        self.job = job
        self.pod = pod
        self.writer_threads = writer_threads
        self.on_commit = on_commit
        self.protect: set[int] = set()
        self.last_committed: CheckpointRecord | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotrain-checkpoint")
        self._inflight: Future[CheckpointRecord] | None = None
        self._inflight_step: int | None = None
        self._lock = threading.Lock()
        # With CUDA state, asynchronous saves stage into one pinned host copy kept between saves (DCP's
        # cache_staged_state_dict): copying from the GPU into pinned memory is what keeps the stall short.
        self._pinned_writer: FileSystemWriter | None = None
        if pinned_staging:
            self._pinned_writer = FileSystemWriter(
                self.cache_dir,
                sync_files=storage.writes_in_place,
                thread_count=writer_threads,
                cache_staged_state_dict=True,
            )

    # ------------------------------------------------------------------------------------------- status
    @property
    def last_committed_step(self) -> int | None:
        rec = self.last_committed
        return None if rec is None else rec.step

    def busy(self) -> bool:
        fut = self._inflight
        return fut is not None and not fut.done()

    @property
    def inflight_step(self) -> int | None:
        return self._inflight_step if self._inflight is not None else None

    def poll(self) -> CheckpointRecord | BaseException | None:
        """The outcome of a finished asynchronous checkpoint (once), or None."""
        fut = self._inflight
        if fut is None or not fut.done():
            return None
        self._inflight = None
        exc = fut.exception()
        return exc if exc is not None else fut.result()

    def wait(self) -> CheckpointRecord | BaseException | None:
        """Wait for the asynchronous checkpoint in flight, if any; its outcome (once), or None."""
        fut = self._inflight
        if fut is None:
            return None
        with contextlib.suppress(BaseException):  # the outcome is reported through poll()
            fut.result()
        return self.poll()

    def wait_for(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the checkpoint in flight; True if none is left running."""
        fut = self._inflight
        if fut is None:
            return True
        with contextlib.suppress(BaseException):  # only waiting
            fut.result(timeout=timeout)
        return fut.done()

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)

    # --------------------------------------------------------------------------------------------- save
    def _clear_step(self, step: int) -> str | None:
        """Rank 0 removes what storage holds for ``step``; every rank gets the same error message, or None."""
        error: str | None = None
        if self.rank == 0:
            try:
                self.storage.clear_step(step)
            except Exception as exc:
                error = f"clearing {step_dir_name(step)}: {exc}"
        outcome = [error]
        dist.broadcast_object_list(outcome, src=0, group=self.group)
        return outcome[0]

    def save(
        self,
        step: int,
        state_dict: dict[str, Any],
        *,
        asynchronous: bool,
        reason: str = "regular",
        request_id: str | None = None,
        request_ids: tuple[str, ...] = (),
    ) -> CheckpointRecord | None:
        """Checkpoint ``state_dict`` as step ``step``.

        Synchronous: returns the committed record or raises :class:`CheckpointError` on every rank.
        Asynchronous: returns None once the snapshot is taken; :meth:`poll`/:meth:`wait` give the outcome.
        """
        if self._inflight is not None:
            raise RuntimeError("a checkpoint is still in flight; wait() for it first")
        t0 = time.monotonic()
        if self.storage.writes_in_place:
            # DCP writes straight into the final directory: remove leftovers before anyone writes.
            clear_error = self._clear_step(step)
            if clear_error:
                raise CheckpointError(clear_error)
        local_dir = self.storage.write_dir(step, self.rank)
        # fsync matters where the files stay (a local/volume path); a staging copy only has to be readable for
        # the upload, and the commit marker is written only once the uploaded objects are confirmed.
        writer = FileSystemWriter(local_dir, sync_files=self.storage.writes_in_place, thread_count=self.writer_threads)
        if asynchronous:
            if self._pinned_writer is not None:
                self._pinned_writer.reset(local_dir)
                writer = self._pinned_writer
            try:
                try:
                    fut_or_resp = dcp.async_save(state_dict, storage_writer=writer, process_group=self.group)
                except ValueError:
                    if self._pinned_writer is None:
                        raise
                    # The state's structure changed since the pinned copy was made (optimizer state appears after
                    # the first step): make a new copy.
                    self._pinned_writer.state_dict_cache = None
                    fut_or_resp = dcp.async_save(state_dict, storage_writer=writer, process_group=self.group)
            except (Exception, CheckpointException) as exc:
                raise CheckpointError(f"async checkpoint of step {step} could not start: {exc}") from exc
            # Newer torch answers an AsyncSaveResponse (staging and upload futures), older torch the upload future;
            # staging is done either way: FileSystemWriter stages blocking.
            upload = cast("Future[Any]", getattr(fut_or_resp, "upload_completion", fut_or_resp))
            stall = time.monotonic() - t0
            self._inflight_step = step
            self._inflight = self._executor.submit(
                self._finish, step, local_dir, t0, stall, reason, request_id, request_ids, upload
            )
            return None
        dcp_error: BaseException | None = None
        try:
            dcp.save(state_dict, storage_writer=writer, process_group=self.group)
        except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
            dcp_error = exc
        stall = time.monotonic() - t0
        return self._finish(step, local_dir, t0, stall, reason, request_id, request_ids, None, dcp_error)

    def _finish(
        self,
        step: int,
        local_dir: Path,
        t0: float,
        stall: float,
        reason: str,
        request_id: str | None,
        request_ids: tuple[str, ...],
        upload: Future[Any] | None,
        dcp_error: BaseException | None = None,
    ) -> CheckpointRecord:
        error: str | None = None
        if upload is not None:
            try:
                upload.result()
            except BaseException as exc:
                dcp_error = exc
        if dcp_error is not None:
            error = f"DCP write failed on rank {self.rank}: {dcp_error!r}"

        if not self.storage.writes_in_place:
            # Staged checkpoints: clear the step in storage once, before anyone uploads.
            clear_error = self._clear_step(step)
            if clear_error and error is None:
                error = clear_error

        files: dict[str, FileInfo] = {}
        t_written = time.monotonic()
        t_hashed = t_published = t_written
        if error is None:
            try:
                names = own_files(local_dir, self.rank)
                files = {n: hash_file(local_dir / n) for n in names}
                t_hashed = time.monotonic()
                self.storage.publish(step, local_dir, names)
                t_published = time.monotonic()
            except Exception as exc:
                error = f"rank {self.rank} ({self.pod}): {exc}"
        log.debug(
            "step %d: written after %.3fs, hashed in %.3fs, published in %.3fs",
            step,
            t_written - t0,
            t_hashed - t_written,
            t_published - t_hashed,
        )

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, (files, error), group=self.group)

        outcome_obj: list[Any] = [None]
        if self.rank == 0:
            errors = [e for _, e in gathered if e]
            if errors:
                outcome_obj = [("error", "; ".join(errors))]
            else:
                merged: dict[str, FileInfo] = {}
                for part, _ in gathered:
                    for name, info in part.items():
                        if name in merged:
                            errors.append(f"file {name} written by two ranks")
                        merged[name] = info
                if METADATA_FILE not in merged:
                    errors.append(".metadata missing")
                if errors:
                    outcome_obj = [("error", "; ".join(errors))]
                else:
                    marker = CommitMarker(
                        step=step,
                        world_size=self.world_size,
                        files=merged,
                        time=utc_now_rfc3339(),
                        unix_time=time.time(),
                        reason=reason,
                        request_id=request_id,
                        job=self.job,
                        created_by=self.pod,
                        duration_seconds=round(time.monotonic() - t0, 6),
                        extra={
                            "asynchronous": upload is not None,
                            # a synchronous checkpoint stalls training for all of its duration
                            "stall_seconds": round(stall, 6) if upload is not None else None,
                            "request_ids": list(request_ids),
                        },
                    )
                    try:
                        self.storage.write_commit(marker)
                        outcome_obj = [("ok", marker.to_json())]
                    except Exception as exc:
                        outcome_obj = [("error", f"commit of {step_dir_name(step)} failed: {exc}")]
        dist.broadcast_object_list(outcome_obj, src=0, group=self.group)
        kind, payload = outcome_obj[0]

        try:
            self.storage.cleanup_write_dir(step, self.rank)
        except Exception as exc:  # a leftover staging dir is not worth failing for
            log.warning("could not remove staging files of step %d: %s", step, exc)

        if kind != "ok":
            log.error("checkpoint of step %d failed: %s", step, payload)
            raise CheckpointError(f"checkpoint of step {step} failed: {payload}")

        marker = CommitMarker.from_json(payload)
        record = CheckpointRecord.from_marker(marker, f"{self.storage.uri}/{step_dir_name(step)}")
        record.duration_seconds = time.monotonic() - t0
        record.stall_seconds = stall if upload is not None else record.duration_seconds
        with self._lock:
            self.last_committed = record
        if self.rank == 0:
            self._apply_retention()
        if self.on_commit is not None:
            try:
                self.on_commit(record)
            except Exception:
                log.exception("on_commit callback failed")
        log.info(
            "checkpoint step %d committed (%s, %d bytes, %.3fs, stall %.3fs)",
            step,
            reason,
            record.bytes,
            record.duration_seconds,
            stall,
        )
        return record

    def _apply_retention(self) -> None:
        try:
            doomed = plan_retention(self.storage.list_checkpoints(), self.keep_last, self.protect)
        except Exception as exc:
            log.warning("retention: listing failed: %s", exc)
            return
        for step in doomed:
            try:
                self.storage.delete(step)
                log.info("retention: deleted %s", step_dir_name(step))
            except Exception as exc:
                log.warning("retention: could not delete %s: %s", step_dir_name(step), exc)

    # ------------------------------------------------------------------------------------------ restore
    def list_candidates(self) -> list[int]:
        """Committed steps, newest first, as rank 0 sees them (broadcast so that all ranks agree)."""
        obj: list[Any] = [None]
        if self.rank == 0:
            try:
                obj = [("ok", self.storage.committed_steps())]
            except Exception as exc:
                obj = [("error", str(exc))]
        dist.broadcast_object_list(obj, src=0, group=self.group)
        kind, payload = obj[0]
        if kind != "ok":
            raise CheckpointError(f"cannot list checkpoints in {self.storage.uri}: {payload}")
        return list(payload)

    def _check_listing(self, step: int) -> tuple[bool, str]:
        """On the local rank 0 of each node: the marker is there and every file it names has its size."""
        try:
            marker = self.storage.read_commit(step)
            if marker is None:
                return False, "commit marker vanished"
            if marker.step != step:
                return False, f"marker says step {marker.step}"
            problems = check_sizes(marker.files, self.storage.file_sizes(step))
            if problems:
                raise IntegrityError("; ".join(problems))
            return True, ""
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"

    def _rank_cache(self) -> Path:
        return self.cache_dir / f"rank{self.rank}"

    def restore(self, make_target: Callable[[set[str]], dict[str, Any]]) -> RestoreResult | None:
        """Load the newest committed checkpoint that verifies and loads, falling back to older ones.

        ``make_target(keys)`` builds the state dict to load into, given the keys present in the checkpoint's
        metadata (flattened fully qualified names). Each rank fetches (and verifies against the marker) only the
        files its own load plan reads: DCP's planner asks for what this rank's state dict needs, so a rank of a
        sharded model never downloads the other ranks' shards. Returns None when no committed checkpoint exists;
        raises :class:`CheckpointError` naming the checkpoints and the URI when committed checkpoints exist but
        none can be loaded (training must not silently start over).
        """
        candidates = self.list_candidates()
        skipped: list[tuple[int, str]] = []
        for step in candidates:
            ok, why = (True, "")
            if self.local_rank == 0:
                ok, why = self._check_listing(step)
            votes: list[Any] = [None] * self.world_size
            dist.all_gather_object(votes, (ok, why, self.pod), group=self.group)
            bad = [f"{pod}: {w}" for o, w, pod in votes if not o]
            if bad:
                log.warning("checkpoint %s is not usable: %s", step_dir_name(step), "; ".join(bad))
                skipped.append((step, "; ".join(bad)))
                continue
            uri = f"{self.storage.uri}/{step_dir_name(step)}"
            marker: CommitMarker | None = None
            load_error: str | None = None
            directory = self.storage.fetch_dir(step, self._rank_cache())
            try:
                marker = self.storage.read_commit(step)
                if marker is None:
                    raise IntegrityError(f"{step_dir_name(step)} has no commit marker")
                reader = VerifyingReader(directory, step, marker, self.storage)
                keys = set(reader.read_metadata().state_dict_metadata)
                target = make_target(keys)
                dcp.load(target, storage_reader=reader, process_group=self.group)
            except (Exception, CheckpointException) as exc:
                # DCP's CheckpointException derives from BaseException: caught by name so that the fallback sees it.
                load_error = f"rank {self.rank} loading {uri}: {type(exc).__name__}: {exc}"
            finally:
                if not self.storage.writes_in_place:
                    shutil.rmtree(directory, ignore_errors=True)
            votes = [None] * self.world_size
            dist.all_gather_object(votes, load_error, group=self.group)
            errors = [v for v in votes if v]
            if errors:
                log.warning("checkpoint %s is not usable: %s", step_dir_name(step), "; ".join(errors))
                skipped.append((step, "; ".join(errors)))
                continue
            assert marker is not None
            record = CheckpointRecord.from_marker(marker, uri)
            with self._lock:
                self.last_committed = record
            self.protect = {step}
            return RestoreResult(step=step, marker=marker, record=record, skipped=skipped)
        if candidates:
            detail = "; ".join(f"{step_dir_name(s)}: {w}" for s, w in skipped)
            raise CheckpointError(
                f"{len(candidates)} committed checkpoint(s) in {self.storage.uri} but none could be loaded: {detail}"
            )
        return None


class VerifyingReader(FileSystemReader):
    """DCP's file reader over a local directory into which it first fetches, and checks against the commit
    marker (size and SHA-256), only the files the load plan reads: ``.metadata``, then this rank's share."""

    def __init__(self, directory: Path, step: int, marker: CommitMarker, storage: CheckpointStorage) -> None:
        self.directory = Path(directory)
        self.step = step
        self.marker = marker
        self.storage = storage
        self.checked: set[str] = set()
        if not storage.writes_in_place:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory.mkdir(parents=True)
        self.ensure([METADATA_FILE])
        super().__init__(str(self.directory))

    def ensure(self, names: list[str]) -> None:
        """Fetch and verify the named files that are not checked yet; raise IntegrityError on a mismatch."""
        todo = sorted(set(names) - self.checked)
        if not todo:
            return
        unknown = [n for n in todo if n not in self.marker.files]
        if unknown:
            raise IntegrityError(f"{step_dir_name(self.step)}: {', '.join(unknown)} not in the commit marker")
        self.storage.fetch_into(self.step, todo, self.directory)
        problems = verify_local_files(self.directory, {n: self.marker.files[n] for n in todo})
        if problems:
            raise IntegrityError("; ".join(problems))
        self.checked.update(todo)

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> torch.futures.Future[None]:
        self.ensure(sorted({self.storage_data[item.storage_index].relative_path for item in plan.items}))
        return super().read_data(plan, planner)
