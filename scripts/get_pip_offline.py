"""Stand-in for ansible-test's pip bootstrap script (get-pip.py).

ansible-test downloads get-pip from ci-files.testing.ansible.com to put pip
into the virtualenvs of its sanity tests; that host is unreachable here, and
ansible-test's own error says to place the script in its cache by hand. This
does the same job with what every CPython has: ensurepip, then the requested
pip from the package index. Arguments are get-pip's (pip install arguments).
"""

import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True,
               stdout=subprocess.DEVNULL)
args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
sys.exit(subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args]).returncode)
