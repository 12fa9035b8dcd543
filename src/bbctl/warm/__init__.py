"""The warm runner: a resident root process with ansible-core imported that runs stages for bbctl.

Every stage used to start a fresh ansible-playbook (through ansible-runner): about
0.5 s of imports, plugin configuration and ansible-core's routing table before the
first task, on top of the stage's own work (docs/BENCHMARKS.md, "The floor of one
stage"). ``bbctl warm-runner`` pays that once: it imports and warms ansible-core,
listens on a unix socket that only root can reach, and forks one child per stage
that runs the playbook in-process with the inputs bbctl wrote into the stage's run
directory. bbctl tries the socket first and runs ansible-runner as before when
nothing answers, so the service only makes stages faster, never possible.

- ``protocol``: the wire format, the checks on a request, where the inputs live.
- ``server``: the listening process (``bbctl warm-runner``): peers, staleness, forking.
- ``stage``: one stage's supervisor (timeout, cancel) and the playbook process it forks.
- ``events``: the callback that streams task events to bbctl in ansible-runner's shape.
- ``client``: bbctl's side: try the socket, stream the events, or say "fall back".
"""
