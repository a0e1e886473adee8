"""``spotrain simulate``: what spot capacity costs and what spotrain saves, from spotrain's own decisions.

A discrete-event simulation of a training job on a spot market. The operator side is not modelled: every
reconcile calls :func:`spotrain_operator.core.reconcile.decide` with simulated Nodes and Pods, exactly as the
operator does, and applies the actions it returns. The trainers are modelled from spotrain_trainer's behaviour
(coordinated checkpoints on notice, the Young/Daly interval of :mod:`spotrain_trainer.interval`, torchrun elastic
restarts) with costs measured on the devcluster (:mod:`.costs`). No torch, no cluster.
"""
