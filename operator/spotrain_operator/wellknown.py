"""Labels, taints and annotations that clouds, node termination handlers and spotrain put on Kubernetes objects.

The names are facts of external systems (see each source's documentation); keeping them in one module lets
the operator's detectors and the devcluster's signal simulator agree by construction.
"""

from __future__ import annotations

# -- node labels -------------------------------------------------------------------------------------------
ZONE = "topology.kubernetes.io/zone"
REGION = "topology.kubernetes.io/region"
INSTANCE_TYPE = "node.kubernetes.io/instance-type"
HOSTNAME = "kubernetes.io/hostname"
KARPENTER_CAPACITY_TYPE = "karpenter.sh/capacity-type"  # spot | on-demand | reserved
KARPENTER_NODEPOOL = "karpenter.sh/nodepool"
EKS_CAPACITY_TYPE = "eks.amazonaws.com/capacityType"  # SPOT | ON_DEMAND
EKS_NODEGROUP = "eks.amazonaws.com/nodegroup"
GKE_SPOT = "cloud.google.com/gke-spot"  # "true"
GKE_PREEMPTIBLE = "cloud.google.com/gke-preemptible"  # "true"
GKE_NODEPOOL = "cloud.google.com/gke-nodepool"
AKS_PRIORITY = "kubernetes.azure.com/scalesetpriority"  # "spot"; also a spot:NoSchedule taint
AKS_AGENTPOOL = "kubernetes.azure.com/agentpool"

# -- termination signals: taints ------------------------------------------------------------------------
NTH_SPOT_ITN = "aws-node-termination-handler/spot-itn"
NTH_REBALANCE = "aws-node-termination-handler/rebalance-recommendation"
NTH_ASG_LIFECYCLE = "aws-node-termination-handler/asg-lifecycle-termination"
NTH_SCHEDULED_MAINTENANCE = "aws-node-termination-handler/scheduled-maintenance"
NTH_ACTION_TIME_LABEL = "aws-node-termination-handler/action-time"  # unix seconds when NTH added the action label
NTH_ACTION_LABEL = "aws-node-termination-handler/action"  # only value NTH writes: "UncordonAfterReboot"
NTH_UNCORDON_AFTER_REBOOT = "UncordonAfterReboot"
NTH_EVENT_ID_LABEL = "aws-node-termination-handler/event-id"  # the scheduled event NTH acted on
KARPENTER_DISRUPTED = "karpenter.sh/disrupted"  # v1, NoSchedule
KARPENTER_DISRUPTION_V1BETA1 = "karpenter.sh/disruption"  # v1beta1, value "disrupting"
GKE_IMPENDING_TERMINATION = "cloud.google.com/impending-node-termination"
AKS_REMEDIATOR_UNSCHEDULABLE = "remediator.kubernetes.azure.com/unschedulable"
CA_TO_BE_DELETED = "ToBeDeletedByClusterAutoscaler"  # value: unix time
CA_DELETION_CANDIDATE = "DeletionCandidateOfClusterAutoscaler"  # PreferNoSchedule: a hint, not a notice
NODE_NOT_READY = "node.kubernetes.io/not-ready"
NODE_UNREACHABLE = "node.kubernetes.io/unreachable"

# -- pod annotations that veto voluntary disruption -------------------------------------------------------
KARPENTER_DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"  # "true": consolidation leaves the node alone
CA_SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"  # "false": no scale-down of the node

# -- Karpenter's API ---------------------------------------------------------------------------------------
KARPENTER_GROUP = "karpenter.sh"
KARPENTER_VERSION = "v1"
KARPENTER_NODEPOOLS = "nodepools"

# -- spotrain's own -------------------------------------------------------------------------------------
GROUP = "spotrain.dev"
VERSION = "v1alpha1"
PLURAL = "spotrainingjobs"
KIND = "SpotTrainingJob"
AGENT_INTERRUPTION_TAINT = "spotrain.dev/interruption"  # set by spotrain-agent; value: the source
AGENT_DEADLINE_ANNOTATION = "spotrain.dev/interruption-deadline"  # RFC 3339
AGENT_EVENT_ANNOTATION = "spotrain.dev/interruption-event"  # the cloud's event id, for acknowledgement
# set by the operator's AWS queue mode in the same patch as the interruption taint: the EventBridge event id;
# while it equals the interruption-event annotation, the mark came from the queue (source awsQueue)
QUEUE_EVENT_ANNOTATION = "spotrain.dev/queue-event"
NODE_DRAINED_ANNOTATION = "spotrain.dev/drained"  # set by the operator once no worker is left on the node

# -- spotrain's labels on the objects it creates ------------------------------------------------------------
JOB_LABEL = "spotrain.dev/job"
ROLE_LABEL = "spotrain.dev/role"  # worker | rendezvous
POOL_LABEL = "spotrain.dev/pool"
ROUND_LABEL = "spotrain.dev/round"
SLOT_LABEL = "spotrain.dev/slot"
SERIAL_LABEL = "spotrain.dev/serial"
DELETION_REASON_ANNOTATION = "spotrain.dev/deletion-reason"  # why the operator removed a worker
