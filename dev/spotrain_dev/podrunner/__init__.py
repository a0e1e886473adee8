"""A tiny kubelet for the devcluster: runs the containers of spotrain's KWOK pods as real processes on this
machine, so that jobs on simulated nodes train for real.

KWOK makes a pod Running and gives it an IP on loopback (127.x.y.z, from its node's podCIDR) but runs nothing.
``PodRunner`` watches the pods labelled ``spotrain.dev/job`` and, for each one that is Running with an IP:

* ``role=rendezvous``: runs the container (the job's standalone c10d store, ``python -m
  spotrain_trainer.rendezvous --port P``) with ``--host <pod IP>``;
* ``role=worker``: runs the container (``spotrain-launch <args>``: the image's entry point) with the pod's
  environment resolved (values, ``$(VAR)`` references, the downward API, Secret and ConfigMap keys), the
  rendezvous Service name replaced by the current rendezvous pod's IP (there is no cluster DNS here), the control
  server bound on the pod IP, and per-pod directories (state, staging, ``TMPDIR``, termination message file);
  the working directory is the repository, so ``examples/train_tiny.py`` resolves.

What a kubelet does when a pod goes is what happens here: on deletion (seen as a ``deletionTimestamp`` or the pod
vanishing; KWOK removes a pod as soon as it is marked) the container's main process gets SIGTERM, and whatever
is left of the container gets SIGKILL after the grace period (``deletionGracePeriodSeconds`` of the delete or
eviction where the watch showed it, else ``terminationGracePeriodSeconds``; at least 2 s, as kubelet does). When
a container exits by itself, the pod's status becomes Succeeded (exit 0) or Failed, with
``containerStatuses[0].state.terminated`` (exit code, reason, the termination message file as ``message``,
start and finish times), which is where the operator reads the trainer's completion message.

Every container runs under a small shim (``python -m spotrain_dev.podrunner --shim -- argv``), the part a
container runtime plays (see :mod:`.shim`): nothing a container started outlives it or the runner.

Restart policy is ``Never`` whatever the pod says (spotrain's pods are all ``Never``); only the first container
of a pod is run.

    python -m spotrain_dev.podrunner --kubeconfig .dev/kubeconfig [--workdir DIR] [--namespace NS ...]

One line per container start, signal and exit goes to ``<workdir>/podrunner.log`` (and, with the CLI, to
stderr); each container's output goes to ``<workdir>/pods/<namespace>/<pod>.log``.

The modules: ``environment`` (pure: a container's environment as kubelet builds it, ``$(VAR)`` expansion, the
downward API, Secret and ConfigMap keys), ``commands`` (pure: what spotrain's rendezvous and worker containers run
here: argv, environment, the Service-name-to-store rewrite), ``shim`` (the container runtime's part), ``runner``
(the watch loop and the process lifecycle: the only part that talks to the API server).
"""

from spotrain_dev.podrunner.environment import WaitingError
from spotrain_dev.podrunner.runner import PodRunner, RunnerEvent, main
from spotrain_dev.podrunner.shim import HARD_KILL_SIGNAL

__all__ = ["HARD_KILL_SIGNAL", "PodRunner", "RunnerEvent", "WaitingError", "main"]

