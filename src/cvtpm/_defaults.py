"""cvtpm's host directories by default, importable without anything else.

The OCI hook reads them at every container start and stop, where every
module imported is start-up time (see cvtpm.runtime.hook_main).
"""

STATE_DIR = "/var/lib/cvtpm"
RUN_DIR = "/run/cvtpm"
STATE_DIR_ENV = "CVTPM_STATE_DIR"
RUN_DIR_ENV = "CVTPM_RUN_DIR"
DAEMON_SOCKET = "daemon.sock"  # in the run directory
