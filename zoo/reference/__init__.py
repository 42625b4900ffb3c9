"""Slow, obviously-correct oracles for tests. Never registered, never profiled."""
