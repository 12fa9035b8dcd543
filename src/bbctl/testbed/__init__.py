"""The loopback test bed: real GlusterFS servers, NVMe bricks on loop devices, Slurm."""
