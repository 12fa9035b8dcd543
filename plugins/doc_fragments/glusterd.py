# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """The glusterd that a gluster module talks to."""

    DOCUMENTATION = r"""
options:
  glusterd_socket:
    description:
      - The UNIX socket of the glusterd to manage, handed to the gluster CLI as
        C(--glusterd-sock).
      - Leave it out for the system glusterd of the host the task runs on. Set it when
        several glusterd run on one machine, each with its own working directory and
        socket (as on the loopback test bed, where each storage node's socket is in the
        C(bb_glusterd_socket) host variable).
    type: path
requirements:
  - GlusterFS 10 CLI (C(gluster)) on the host the task runs on, and a running glusterd.
"""
