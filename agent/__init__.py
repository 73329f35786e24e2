"""cvsweep: register W&B sweeps, run agents on every GPU, query runs and leaderboards."""
