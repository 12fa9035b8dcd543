"""bbctl: the Slurm-facing orchestrator of the hpc.burstbuffer collection."""
