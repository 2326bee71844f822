"""The faults of tools/inject_faults.py, by what they hit: files (configs, checkpoints), data, runs."""
