-- Argo CD health of a spotrain.dev SpotTrainingJob, from the status the operator writes
-- (operator/spotrain_operator/core/reconcile.py): phase Pending, Waiting, Running, Rescaling, Succeeded,
-- Failed or Suspended, and metav1.Condition-style conditions (Ready, Waiting, Checkpointing, FallbackActive,
-- SpecInvalid, Succeeded, Failed). Laid out like Argo CD's resource_customizations/<group>/<kind>/health.lua.
local hs = {}

local function condition(kind)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == kind then
        return c
      end
    end
  end
  return nil
end

local function message_of(kind, fallback)
  local c = condition(kind)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

-- A spec the operator rejected keeps the job where it was: say so before anything else.
local invalid = condition("SpecInvalid")
if invalid ~= nil and invalid.status == "True" then
  hs.status = "Degraded"
  hs.message = "Invalid spec: " .. (invalid.message or "see the SpecInvalid condition")
  return hs
end

local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
if phase == nil or phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the spotrain operator to reconcile the job"
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message_of("Succeeded", "Training completed")
  return hs
end
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message_of("Failed", "The job failed")
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to apply generation " .. generation .. " (observed " .. observed .. ")"
  return hs
end

local suspend = obj.spec ~= nil and obj.spec.suspend == true
if phase == "Suspended" then
  if suspend then
    hs.status = "Suspended"
    hs.message = "Suspended (spec.suspend); the last checkpoint is kept"
  else
    hs.status = "Progressing"
    hs.message = "Resuming from the last checkpoint"
  end
  return hs
end
if suspend then
  hs.status = "Progressing"
  hs.message = "Suspending: stopping the workers after their checkpoint"
  return hs
end

if phase == "Running" or phase == "Rescaling" then
  local ready = condition("Ready")
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = message_of("Ready", "Training")
    if phase == "Rescaling" then
      hs.message = hs.message .. "; rescaling"
    end
    local checkpointing = condition("Checkpointing")
    if checkpointing ~= nil and checkpointing.status == "True" then
      hs.message = hs.message .. "; " .. message_of("Checkpointing", "checkpointing before nodes are reclaimed")
    end
    return hs
  end
  hs.status = "Progressing"
  hs.message = message_of("Ready", "Workers are starting")
  return hs
end
if phase == "Pending" then
  hs.status = "Progressing"
  hs.message = message_of("Waiting", "Placing workers")
  return hs
end
if phase == "Waiting" then
  -- Training stopped below spec.elastic.minNodes; it resumes from the last checkpoint when capacity returns.
  hs.status = "Degraded"
  hs.message = message_of("Waiting", "Below spec.elastic.minNodes")
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. phase
return hs
