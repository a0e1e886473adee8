"""The spotrain operator: a kopf shell (controllers/) around a pure core (core/) that decides what to do."""
