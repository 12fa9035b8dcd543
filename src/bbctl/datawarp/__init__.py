"""Slurm's burst_buffer/datawarp plugin, served by bbctl: the two programs it runs.

- ``dw_wlm_cli`` (``GetSysState``): every stage of a job's buffer, and the JSON views (module dw_wlm_cli);
- ``dwstat`` (``GetSysStatus``): the tables of ``scontrol show dwstat`` (module dwstat);
- the ids and documents both show (module sessions); what the two programs share (module program).
"""
