"""Length sweeps of registered mixers: time, peak memory and FLOPs per cell, isolated and resumable."""
