"""cvtpm's host directories by default, and how the environment overrides them.

cvtpm.config builds its Paths from these; the OCI hook, which imports no part
of cvtpm (cvtpm.runtime.hook_main), keeps copies that a test compares.
"""

STATE_DIR = "/var/lib/cvtpm"
RUN_DIR = "/run/cvtpm"
STATE_DIR_ENV = "CVTPM_STATE_DIR"
RUN_DIR_ENV = "CVTPM_RUN_DIR"
DAEMON_SOCKET = "daemon.sock"  # in the run directory
