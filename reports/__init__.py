"""Reports from profile records (pandas + matplotlib only; imports neither torch nor zoo)."""
