"""Benchmarks that check the issues' speed and memory targets against peers (run as scripts)."""
