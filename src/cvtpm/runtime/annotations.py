"""The OCI annotations a container asks cvtpm for a vTPM with.

Kept apart from cvtpm.runtime.oci, which parses them, so that the OCI hook
can tell a container that asked for nothing without importing the parser.
"""

ANNOTATION_ENABLE = "io.cvtpm.vtpm"
ANNOTATION_NAME = "io.cvtpm.name"
ANNOTATION_EPHEMERAL = "io.cvtpm.ephemeral"
ANNOTATION_POLICY = "io.cvtpm.policy"
ANNOTATION_PARENT = "io.cvtpm.parent"
ANNOTATION_EXPOSE = "io.cvtpm.expose"

ENABLED = "enabled"


def asks_for_vtpm(annotations: dict) -> bool:
    """True if the annotations carry io.cvtpm.vtpm=enabled (in any case)."""
    value = annotations.get(ANNOTATION_ENABLE, "")
    return isinstance(value, str) and value.strip().lower() == ENABLED
