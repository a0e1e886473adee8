"""The job's standalone rendezvous store: a c10d ``TCPStore`` in its own process (the rendezvous pod).

    python -m spotrain_trainer.rendezvous [--host 0.0.0.0] [--port 29400]

Agents reach it with ``--rdzv-backend=c10d --rdzv-endpoint=HOST:PORT --rdzv-conf=is_host=false``. Hosting the
store outside the agents keeps the job alive when any node goes away (a store hosted by an agent dies with
it, and every other agent with it). ``multi_tenant`` lets one store serve several rendezvous ids (job
generations). Runs until SIGTERM or SIGINT.

``TCPStore`` itself listens on every address of the machine whatever host it is given. With a specific ``--host``
the store listens on that address only (a socket bound here, handed over as ``master_listen_fd``): two stores of
one job (the old and the new one while the store moves) can then share a port on one machine, as the devcluster's
pods share the loopback, and a store never answers on an address that is not its own.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys

from spotrain_protocol import RENDEZVOUS_PORT

WILDCARDS = ("", "0.0.0.0", "::")


def _listening_socket(host: str, port: int) -> int:
    """A socket listening on ``host:port`` only; its descriptor passes to the store, which owns it from then on."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(socket.SOMAXCONN)
    return sock.detach()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="standalone c10d TCPStore for elastic rendezvous")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=RENDEZVOUS_PORT)
    args = parser.parse_args(argv)
    # Block the stop signals before the store starts its threads, then wait for one of them.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])
    import torch.distributed as dist

    listen_fd = None if args.host in WILDCARDS else _listening_socket(args.host, args.port)
    store = dist.TCPStore(args.host, args.port, is_master=True, wait_for_workers=False, multi_tenant=True,
                          master_listen_fd=listen_fd)
    print(f"spotrain rendezvous store listening on {args.host}:{args.port}", flush=True)
    sig = signal.sigwait([signal.SIGTERM, signal.SIGINT])
    print(f"spotrain rendezvous store stopping on {signal.Signals(sig).name}", flush=True)
    del store
    return 0


if __name__ == "__main__":
    sys.exit(main())
