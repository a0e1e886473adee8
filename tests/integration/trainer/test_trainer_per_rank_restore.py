"""On restore each rank downloads only the files its own load plan reads (the metadata and its share), not every
rank's shards: two ranks standing for two nodes save per-rank state to S3 (moto), then restore it while every
download is counted."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from spotrain_dev.trainer_harness import LOOPBACK, ProcessSet, free_port

PROGRAM = r"""
import json, os, sys
from pathlib import Path

import torch
import torch.distributed as dist

from spotrain_trainer.checkpoint.dcp import Checkpointer
from spotrain_trainer.checkpoint.storage import S3Storage
from spotrain_trainer.config import S3Settings

mode, uri, endpoint, work = sys.argv[1:5]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
storage = S3Storage(uri, S3Settings(endpoint_url=endpoint), Path(work) / f"staging{rank}")
downloads = []
download_file = storage.client.download_file


def counting_download(bucket, key, filename, **kwargs):
    downloads.append(key.rsplit("/", 1)[-1])
    return download_file(bucket, key, filename, **kwargs)


storage.client.download_file = counting_download
checkpointer = Checkpointer(
    storage, group=dist.group.WORLD, rank=rank, world_size=world, local_rank=0,  # one rank per node
    keep_last=3, cache_dir=Path(work) / f"cache{rank}",
)
mine = torch.full((4096,), float(rank + 1))
if mode == "save":
    checkpointer.save(1, {f"shard.{rank}": mine}, asynchronous=False)
else:
    target = {f"shard.{rank}": torch.zeros(4096)}
    result = checkpointer.restore(lambda keys: target)
    assert result is not None and result.step == 1 and torch.equal(target[f"shard.{rank}"], mine)
print("RESULT " + json.dumps({"rank": rank, "downloads": sorted(downloads)}), flush=True)
dist.destroy_process_group()
"""


def run_world(procs: ProcessSet, mode: str, args: list[str], env: dict[str, str]) -> dict[int, Any]:
    port = free_port()
    running = []
    for rank in range(2):
        rank_env = procs.env(
            {**env, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(port)}
        )
        name = f"{mode}-{rank}"
        running.append((name, procs.spawn(name, [sys.executable, "-c", PROGRAM, mode, *args], env=rank_env)))
    results = {}
    for name, proc in running:
        assert proc.wait(timeout=180) == 0, procs.log_text(name)[-4000:]
        line = next(x for x in procs.log_text(name).splitlines() if x.startswith("RESULT "))
        result = json.loads(line[len("RESULT ") :])
        results[result["rank"]] = result
    return results


@pytest.mark.timeout(300)
def test_each_rank_downloads_only_what_it_loads(
    procs: ProcessSet, tmp_path: Path, bucket: str, s3_env: dict[str, str], moto_endpoint: str
) -> None:
    args = [f"s3://{bucket}/per-rank-{uuid.uuid4().hex[:6]}", moto_endpoint, str(tmp_path)]
    run_world(procs, "save", args, s3_env)
    restored = run_world(procs, "restore", args, s3_env)
    assert restored[0]["downloads"] == [".metadata", "__0_0.distcp"]
    assert restored[1]["downloads"] == [".metadata", "__1_0.distcp"]
