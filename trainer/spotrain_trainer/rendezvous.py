"""The job's standalone rendezvous store: a c10d ``TCPStore`` in its own process (the rendezvous pod).

    python -m spotrain_trainer.rendezvous [--host 0.0.0.0] [--port 29400]

Agents reach it with ``--rdzv-backend=c10d --rdzv-endpoint=HOST:PORT --rdzv-conf=is_host=false``. Hosting the
store outside the agents keeps the job alive when any node goes away (a store hosted by an agent dies with
it, and every other agent with it). ``multi_tenant`` lets one store serve several rendezvous ids (job
generations). Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys

from spotrain_protocol import RENDEZVOUS_PORT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="standalone c10d TCPStore for elastic rendezvous")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=RENDEZVOUS_PORT)
    args = parser.parse_args(argv)
    # Block the stop signals before the store starts its threads, then wait for one of them.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])
    import torch.distributed as dist

    store = dist.TCPStore(args.host, args.port, is_master=True, wait_for_workers=False, multi_tenant=True)
    print(f"spotrain rendezvous store listening on {args.host}:{args.port}", flush=True)
    sig = signal.sigwait([signal.SIGTERM, signal.SIGINT])
    print(f"spotrain rendezvous store stopping on {signal.Signals(sig).name}", flush=True)
    del store
    return 0


if __name__ == "__main__":
    sys.exit(main())
