# -*- coding: utf-8 -*-
# Copyright: hpc.burstbuffer developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """The attributes every module documents, and the target Python floor.

    The descriptions and the platform (Linux) are here; each module states its own
    ``support`` for check_mode and diff_mode (Ansible merges the module's keys over these).
    """

    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: linux
requirements:
  - Python 3.8 or later on the target host (the oldest Python that ansible-core 2.18, the oldest
    ansible-core this collection supports, runs modules with).
"""
