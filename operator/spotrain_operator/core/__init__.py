"""The pure core: plain functions and classes over observed state that return actions, one decision per module."""
