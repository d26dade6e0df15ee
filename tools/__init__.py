"""Study operations: scripts that run, carry and commit long studies (not measurements:
those are in benchmarks/, one script per figure)."""
