"""Runs: the engine that executes an assistant over a thread, and the manager that drives it."""
