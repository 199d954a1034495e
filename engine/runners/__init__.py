"""Runners execute tasks and yield their results (local, Ray), and the sweep's progress display."""
