"""The kernel's IMA policy language, the subset cvtpm uses to decide what to measure.

Grammar and matching follow security/integrity/ima/ima_policy.c (ima_parse_rule,
ima_match_rules) and Documentation/ABI/testing/ima_policy: one rule per line,
`#` lines are comments, the first `measure`/`dont_measure` rule that matches an
event decides whether it is measured.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass

from cvtpm.errors import ParseError
from cvtpm.ima.template import TEMPLATES


class Func(enum.Enum):
    """The hook that saw the event (ima_policy.c, `func=`)."""

    FILE_CHECK = "FILE_CHECK"
    MODULE_CHECK = "MODULE_CHECK"
    FIRMWARE_CHECK = "FIRMWARE_CHECK"
    MMAP_CHECK = "MMAP_CHECK"
    MMAP_CHECK_REQPROT = "MMAP_CHECK_REQPROT"
    BPRM_CHECK = "BPRM_CHECK"
    CREDS_CHECK = "CREDS_CHECK"
    KEXEC_KERNEL_CHECK = "KEXEC_KERNEL_CHECK"
    KEXEC_INITRAMFS_CHECK = "KEXEC_INITRAMFS_CHECK"
    POLICY_CHECK = "POLICY_CHECK"
    KEXEC_CMDLINE = "KEXEC_CMDLINE"
    KEY_CHECK = "KEY_CHECK"
    CRITICAL_DATA = "CRITICAL_DATA"
    SETXATTR_CHECK = "SETXATTR_CHECK"


# Older spellings the kernel still accepts.
_FUNC_ALIASES = {"PATH_CHECK": Func.FILE_CHECK, "FILE_MMAP": Func.MMAP_CHECK}

# include/linux/fs.h
MAY_EXEC = 0x1
MAY_WRITE = 0x2
MAY_READ = 0x4
MAY_APPEND = 0x8
_MASKS = {
    "MAY_EXEC": MAY_EXEC,
    "MAY_WRITE": MAY_WRITE,
    "MAY_READ": MAY_READ,
    "MAY_APPEND": MAY_APPEND,
}

# include/uapi/linux/magic.h, the filesystems the default policy names.
PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572
DEBUGFS_MAGIC = 0x64626720
TMPFS_MAGIC = 0x01021994
DEVPTS_SUPER_MAGIC = 0x1CD1
BINFMTFS_MAGIC = 0x42494E4D
SECURITYFS_MAGIC = 0x73636673
SELINUX_MAGIC = 0xF97CFF8C
SMACK_MAGIC = 0x43415D53
CGROUP_SUPER_MAGIC = 0x27E0EB
CGROUP2_SUPER_MAGIC = 0x63677270
NSFS_MAGIC = 0x6E736673
EFIVARFS_MAGIC = 0xDE5E81E4
OVERLAYFS_SUPER_MAGIC = 0x794C7630

DEFAULT_TEMPLATE = "ima-ng"  # CONFIG_IMA_DEFAULT_TEMPLATE on common distributions
DEFAULT_PCR = 10  # CONFIG_IMA_MEASURE_PCR_IDX

# ima_policy.c: "uid=", "uid<", "uid>" (likewise euid, fowner) compare with
# uid_eq / uid_lt / uid_gt against the rule's value.
_ID_OPS: dict[str, Callable[[int, int], bool]] = {
    "=": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
_ID_KEYS = ("uid", "euid", "fowner")
_UNSUPPORTED_ACTIONS = ("appraise", "dont_appraise", "audit", "hash", "dont_hash")


@dataclass(frozen=True, slots=True)
class IdCondition:
    """A uid/euid/fowner condition: the event's id `op` the rule's value."""

    op: str
    value: int

    def holds(self, event_id: int) -> bool:
        """True if the event's id satisfies the condition."""
        return _ID_OPS[self.op](event_id, self.value)


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy line."""

    line: int
    action: str  # "measure" or "dont_measure"
    func: Func | None = None
    mask: int | None = None
    mask_any: bool = False  # "mask=^MAY_x": any of the bits (IMA_INMASK)
    fsmagic: int | None = None
    uid: IdCondition | None = None
    euid: IdCondition | None = None
    fowner: IdCondition | None = None
    template: str | None = None
    pcr: int | None = None

    def matches(self, func: Func, mask: int, facts: _Facts) -> bool:
        """ima_match_rules() for the conditions this subset knows."""
        return self.matches_access(func, mask) and self.matches_facts(facts)

    def matches_access(self, func: Func, mask: int) -> bool:
        """The func= and mask= conditions: what the access is, not who made it."""
        if self.func is not None and self.func is not func:
            return False
        if self.mask is None:
            return True
        if self.mask_any:
            return bool(self.mask & mask)
        return self.mask == mask

    @property
    def unconditional(self) -> bool:
        """True if only func= and mask= can stop this rule from matching."""
        return self.fsmagic is None and not (self.uid or self.euid or self.fowner)

    def matches_facts(self, facts: _Facts) -> bool:
        """The conditions on the file's filesystem and owner and the task's ids."""
        if self.fsmagic is not None and self.fsmagic != facts.fsmagic:
            return False
        if self.uid is not None and not self.uid.holds(facts.uid):
            return False
        # TODO: the kernel also accepts the real and saved uid for processes with
        # CAP_SETUID; matters once the agent reports capabilities with events.
        if self.euid is not None and not self.euid.holds(facts.euid):
            return False
        return self.fowner is None or self.fowner.holds(facts.fowner)


class _Facts:
    """An event's ids and filesystem, each read only if a rule asks for it."""

    __slots__ = ("_sources", "_values")

    def __init__(self, **sources: int | Callable[[], int]):
        self._sources = sources
        self._values: dict[str, int] = {}

    def _get(self, name: str) -> int:
        if name not in self._values:
            source = self._sources[name]
            self._values[name] = source() if callable(source) else source
        return self._values[name]

    uid = property(lambda self: self._get("uid"))
    euid = property(lambda self: self._get("euid"))
    fowner = property(lambda self: self._get("fowner"))
    fsmagic = property(lambda self: self._get("fsmagic"))


@dataclass(frozen=True, slots=True)
class MeasureDecision:
    """Whether an event is measured, with which template, into which PCR, and why."""

    measure: bool
    template: str = DEFAULT_TEMPLATE
    pcr: int = DEFAULT_PCR
    rule: Rule | None = None

    def __bool__(self) -> bool:
        """A decision is true when the event is measured."""
        return self.measure


class ImaPolicy:
    """A parsed policy: an ordered list of rules, first match wins."""

    def __init__(self, rules: list[Rule], default_template: str = DEFAULT_TEMPLATE):
        self.rules = tuple(rules)
        self.default_template = default_template
        self._by_access: dict[tuple[Func, int], tuple[Rule, ...]] = {}

    def rules_for(self, func: Func, mask: int) -> tuple[Rule, ...]:
        """The rules whose func= and mask= match this access, in order.

        The list ends at the first rule that nothing else can stop, and is
        empty when no measure rule is left in it: then no fact about the file
        or the task can change the answer, and none is read. The agent asks
        this for every event, so it is computed once per (func, mask).
        """
        key = (func, mask)
        found = self._by_access.get(key)
        if found is None:
            chosen = []
            for rule in self.rules:
                if rule.matches_access(func, mask):
                    chosen.append(rule)
                    if rule.unconditional:
                        break
            if not any(rule.action == "measure" for rule in chosen):
                chosen = []
            found = self._by_access[key] = tuple(chosen)
        return found

    def should_measure(
        self,
        *,
        func: Func | str,
        mask: int,
        uid: int | Callable[[], int],
        euid: int | Callable[[], int],
        fowner: int | Callable[[], int],
        fsmagic: int | Callable[[], int],
    ) -> MeasureDecision:
        """Decide as ima_match_policy() does for the MEASURE action.

        The ids and fsmagic may be zero-argument callables: they are read only
        if a rule needs them (for the agent, each is a /proc or statfs read).
        """
        func = func if isinstance(func, Func) else _parse_func(func)
        facts = _Facts(uid=uid, euid=euid, fowner=fowner, fsmagic=fsmagic)
        for rule in self.rules_for(func, mask):
            if rule.matches_facts(facts):
                if rule.action == "dont_measure":
                    return MeasureDecision(False, rule=rule)
                return MeasureDecision(
                    True,
                    rule.template or self.default_template,
                    DEFAULT_PCR if rule.pcr is None else rule.pcr,
                    rule,
                )
        return MeasureDecision(False)


def parse_policy(text: str) -> ImaPolicy:
    """Parse policy text; ParseError names the line of anything not supported."""
    rules = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        rules.append(_parse_rule(line, number))
    return ImaPolicy(rules)


def _parse_rule(line: str, number: int) -> Rule:
    def fail(message: str) -> ParseError:
        return ParseError(f"policy line {number}: {message}")

    # 1. Exactly one action, anywhere on the line (ima_parse_rule rejects two).
    action = None
    options: dict[str, object] = {}
    for token in line.split():
        if token in ("measure", "dont_measure"):
            if action is not None:
                raise fail(f"second action {token!r}")
            action = token
            continue
        if token in _UNSUPPORTED_ACTIONS:
            raise fail(f"action {token!r} is not supported (measure/dont_measure)")

        # 2. Conditions: key=value, or uid/euid/fowner with = < >.
        key, op, value = _split_condition(token)
        if key is None:
            raise fail(f"unsupported token {token!r}")
        if key in options:
            raise fail(f"{key} given twice")
        try:
            options[key] = _parse_value(key, op, value)
        except ValueError as exc:
            raise fail(f"{token!r}: {exc}") from None

    if action is None:
        raise fail("no action (measure or dont_measure)")
    if action != "measure" and ("template" in options or "pcr" in options):
        # ima_parse_rule: template= and pcr= only make sense on measure rules.
        raise fail("template= and pcr= need a measure rule")

    mask = options.pop("mask", None)
    return Rule(
        line=number,
        action=action,
        mask=None if mask is None else mask[0],
        mask_any=False if mask is None else mask[1],
        **options,
    )


def _split_condition(token: str) -> tuple[str | None, str, str]:
    for key in _ID_KEYS:
        for op in _ID_OPS:
            if token.startswith(key + op):
                return key, op, token[len(key) + 1 :]
    key, eq, value = token.partition("=")
    if eq and key in ("func", "mask", "fsmagic", "template", "pcr"):
        return key, "=", value
    return None, "", ""


def _parse_value(key: str, op: str, value: str) -> object:
    if key in _ID_KEYS:
        return IdCondition(op, _decimal(value))
    if key == "func":
        return _parse_func(value)
    if key == "mask":
        any_bit = value.startswith("^")
        name = value[1:] if any_bit else value
        if name not in _MASKS:
            raise ValueError(f"unknown mask {name!r}")
        return _MASKS[name], any_bit
    if key == "fsmagic":
        # ima_parse_rule: kstrtoul(args, 16, ...), so "0x" is optional.
        digits = value[2:] if value.lower().startswith("0x") else value
        if not digits or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise ValueError("fsmagic is hexadecimal")
        return int(digits, 16)
    if key == "template":
        if value not in TEMPLATES:
            raise ValueError(f"unknown template {value!r}")
        return value
    pcr = _decimal(value)
    if pcr >= 24:
        raise ValueError("pcr must be 0-23")
    return pcr


def _parse_func(name: str) -> Func:
    if name in _FUNC_ALIASES:
        return _FUNC_ALIASES[name]
    try:
        return Func(name)
    except ValueError:
        raise ValueError(f"unknown func {name!r}") from None


def _decimal(value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"{value!r} is not a decimal number")
    return int(value)


DEFAULT_CONTAINER_POLICY = """\
# cvtpm's default IMA policy for a container. The first matching rule decides.
#
# It starts from the kernel's "tcb" policy (security/integrity/ima/ima_policy.c:
# dont_measure_rules[], then default_measurement_rules[]) and adapts it:
# executables are measured on every filesystem, tmpfs included, and the
# module/firmware/policy rules are left out (a container loads none of these).
#
# Pseudo filesystems: their files are made by the kernel, not shipped in an
# image, and change all the time. proc, sysfs, debugfs, devpts, binfmt_misc,
# securityfs, selinuxfs, smackfs, cgroup, cgroup2, nsfs, efivarfs:
dont_measure fsmagic=0x9fa0
dont_measure fsmagic=0x62656572
dont_measure fsmagic=0x64626720
dont_measure fsmagic=0x1cd1
dont_measure fsmagic=0x42494e4d
dont_measure fsmagic=0x73636673
dont_measure fsmagic=0xf97cff8c
dont_measure fsmagic=0x43415d53
dont_measure fsmagic=0x27e0eb
dont_measure fsmagic=0x63677270
dont_measure fsmagic=0x6e736673
dont_measure fsmagic=0xde5e81e4
#
# Everything executed, or mapped executable, wherever it lives. These come
# before the tmpfs rule so that a program dropped into /tmp or /dev/shm is
# measured (the tcb policy excludes tmpfs entirely).
measure func=BPRM_CHECK mask=MAY_EXEC
measure func=MMAP_CHECK mask=MAY_EXEC
#
# Run-time data in tmpfs (/tmp, /run, /dev/shm) changes constantly; reading
# it is not measured.
dont_measure fsmagic=0x1021994
#
# Files root opens for reading: configuration, and scripts handed to
# interpreters. "^MAY_READ" (any read) also covers read-write opens, which
# the tcb policy's exact "mask=MAY_READ" lets through.
measure func=FILE_CHECK mask=^MAY_READ euid=0
measure func=FILE_CHECK mask=^MAY_READ uid=0
"""
