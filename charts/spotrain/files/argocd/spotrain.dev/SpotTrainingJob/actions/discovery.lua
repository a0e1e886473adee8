-- Argo CD resource actions of a SpotTrainingJob: suspend (the workers checkpoint and stop; the job keeps its
-- checkpoint and status) and resume. Only the one that changes something is enabled.
local actions = {}
local suspended = obj.spec ~= nil and obj.spec.suspend == true
actions["suspend"] = {["disabled"] = suspended}
actions["resume"] = {["disabled"] = not suspended}
return actions
