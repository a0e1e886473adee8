"""The long fault soak (make bench; the suite runs a short one): a job through notices, joins and losses while its
operator is SIGKILLed at random moments (25 times by default) and the API server restarts once mid-drain.
Results: bench/results/soak.json (kills, events, and every duplicate, orphan, double eviction or late drain found).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client, config

from spotrain_dev.cluster import DevCluster
from spotrain_dev.nodes import NodeSimulator
from spotrain_dev.soak import run_soak
from spotrain_dev.testing import Harness, wait_for

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", default=str(HERE / "results" / "soak.json"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="spotrain-soak-"))
    started = time.monotonic()
    try:
        cluster = DevCluster(workdir / "cluster")
        cluster.start()
        try:
            api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
            core = client.CoreV1Api(api)
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="soak")))
            wait_for("default ServiceAccount", lambda: core.list_namespaced_service_account("soak").items)
            harness = Harness(cluster, "soak", api, NodeSimulator.from_kubeconfig(cluster.kubeconfig), workdir)
            try:
                report = run_soak(harness, kills=args.kills, seed=args.seed)
            finally:
                harness.cleanup()
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"benchmark": "soak", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "seconds": round(time.monotonic() - started, 1), "clean": report.clean, **dataclasses.asdict(report)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
