"""The kopf handlers: read the world, call the core, apply its actions (one module per controller)."""
