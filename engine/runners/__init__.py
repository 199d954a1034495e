"""Runners execute tasks and yield their results; ``local`` is one backend, Ray comes next."""
