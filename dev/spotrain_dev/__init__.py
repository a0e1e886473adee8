"""Development and test tools: the devcluster, KWOK nodes and termination signals, the pod runner, the harnesses."""
