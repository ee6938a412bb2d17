"""Runtime policies: what a container may run, in cvtpm's and Keylime's formats."""

from __future__ import annotations

from cvtpm.attest.policy.create import create_policy
from cvtpm.attest.policy.evaluate import Failure, PolicyEvaluator
from cvtpm.attest.policy.keylime import load_keylime
from cvtpm.attest.policy.model import Digest, RuntimePolicy
from cvtpm.attest.policy.native import dump, load

__all__ = [
    "Digest",
    "Failure",
    "PolicyEvaluator",
    "RuntimePolicy",
    "create_policy",
    "dump",
    "load",
    "load_keylime",
]
