"""The IMA policy language subset: parsing, first-match decisions, errors."""

from __future__ import annotations

import pytest

from cvtpm.errors import ParseError
from cvtpm.ima.policy import (
    DEFAULT_CONTAINER_POLICY,
    MAY_APPEND,
    MAY_EXEC,
    MAY_READ,
    MAY_WRITE,
    OVERLAYFS_SUPER_MAGIC,
    PROC_SUPER_MAGIC,
    SYSFS_MAGIC,
    TMPFS_MAGIC,
    Func,
    parse_policy,
)


def decide(policy, func, mask, *, uid=0, euid=0, fowner=0, fsmagic=0x794C7630):
    """should_measure with defaults for the ids and an overlayfs file."""
    return policy.should_measure(
        func=func, mask=mask, uid=uid, euid=euid, fowner=fowner, fsmagic=fsmagic
    )


def test_first_matching_rule_wins():
    """A dont_measure before a measure shadows it, and the other way round."""
    policy = parse_policy(
        "dont_measure fsmagic=0x9fa0\nmeasure func=BPRM_CHECK\ndont_measure\n"
    )

    assert not decide(policy, Func.BPRM_CHECK, MAY_EXEC, fsmagic=PROC_SUPER_MAGIC)
    assert decide(policy, Func.BPRM_CHECK, MAY_EXEC).measure
    assert not decide(policy, Func.FILE_CHECK, MAY_READ).measure


def test_no_rule_matches_means_no_measurement():
    """An event no rule matches is not measured (and names no rule)."""
    decision = decide(parse_policy("measure func=BPRM_CHECK"), "FILE_CHECK", MAY_READ)

    assert (decision.measure, decision.rule) == (False, None)


def test_mask_exact_and_any():
    """mask=MAY_READ needs exactly that mask; mask=^MAY_READ any mask with it."""
    exact = parse_policy("measure func=FILE_CHECK mask=MAY_READ")
    anybit = parse_policy("measure func=FILE_CHECK mask=^MAY_READ")

    assert decide(exact, "FILE_CHECK", MAY_READ).measure
    assert not decide(exact, "FILE_CHECK", MAY_READ | MAY_WRITE).measure
    assert decide(anybit, "FILE_CHECK", MAY_READ | MAY_WRITE).measure
    assert not decide(anybit, "FILE_CHECK", MAY_WRITE | MAY_APPEND).measure


@pytest.mark.parametrize(
    ("rule", "ids", "expected"),
    [
        ("uid=0", {"uid": 0}, True),
        ("uid=0", {"uid": 1}, False),
        ("uid<1000", {"uid": 999}, True),
        ("uid<1000", {"uid": 1000}, False),
        ("uid>1000", {"uid": 1001}, True),
        ("euid=0", {"euid": 0, "uid": 5}, True),
        ("euid=0", {"euid": 5, "uid": 0}, False),
        ("fowner>0", {"fowner": 0}, False),
        ("fowner>0", {"fowner": 10}, True),
    ],
)
def test_id_conditions(rule, ids, expected):
    """uid/euid/fowner with = < > compare the event's id with the rule's."""
    policy = parse_policy(f"measure func=FILE_CHECK {rule}")
    base = {"uid": 1, "euid": 1, "fowner": 1}

    decision = decide(policy, "FILE_CHECK", MAY_READ, **{**base, **ids})

    assert decision.measure is expected


def test_template_and_pcr_from_rule():
    """template= and pcr= of the matching measure rule are in the decision."""
    policy = parse_policy("measure func=BPRM_CHECK template=ima-sig pcr=11\nmeasure")

    first = decide(policy, "BPRM_CHECK", MAY_EXEC)
    second = decide(policy, "FILE_CHECK", MAY_READ)

    assert (first.template, first.pcr, first.rule.line) == ("ima-sig", 11, 1)
    assert (second.template, second.pcr, second.rule.line) == ("ima-ng", 10, 2)


def test_aliases_and_hex_fsmagic():
    """PATH_CHECK and FILE_MMAP are old names; fsmagic is hex with or without 0x."""
    policy = parse_policy(
        "measure func=PATH_CHECK fsmagic=9fa0\nmeasure func=FILE_MMAP"
    )

    assert policy.rules[0].func is Func.FILE_CHECK
    assert policy.rules[0].fsmagic == 0x9FA0
    assert policy.rules[1].func is Func.MMAP_CHECK


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("appraise func=BPRM_CHECK", "action 'appraise' is not supported"),
        ("func=BPRM_CHECK", "no action"),
        ("measure dont_measure", "second action"),
        ("measure func=NOPE", "unknown func"),
        ("measure mask=MAY_FLY", "unknown mask"),
        ("measure fsmagic=xyz", "hexadecimal"),
        ("measure uid=-1", "not a decimal"),
        ("measure func=BPRM_CHECK func=FILE_CHECK", "func given twice"),
        ("measure template=ima-modsig", "unknown template"),
        ("dont_measure template=ima-sig", "need a measure rule"),
        ("measure pcr=24", "pcr must be"),
        ("measure obj_type=bin_t", "unsupported token"),
        ("measure func=BPRM_CHECK # comment", "unsupported token '#'"),
    ],
)
def test_errors_name_the_line(text, message):
    """Anything outside the subset is a ParseError that names the policy line."""
    with pytest.raises(ParseError, match=message) as info:
        parse_policy("# header\n\nmeasure func=BPRM_CHECK\n" + text)

    assert "policy line 4" in str(info.value)


def test_default_container_policy():
    """The default policy measures executables everywhere (tmpfs too), root's
    reads on real filesystems, and nothing on pseudo filesystems."""
    policy = parse_policy(DEFAULT_CONTAINER_POLICY)

    assert decide(policy, "BPRM_CHECK", MAY_EXEC, uid=1000, euid=1000).measure
    assert decide(policy, "BPRM_CHECK", MAY_EXEC, fsmagic=TMPFS_MAGIC).measure
    assert decide(policy, "MMAP_CHECK", MAY_EXEC, uid=1000, euid=1000).measure
    assert decide(policy, "FILE_CHECK", MAY_READ, fsmagic=OVERLAYFS_SUPER_MAGIC)
    assert decide(policy, "FILE_CHECK", MAY_READ | MAY_WRITE).measure
    assert not decide(policy, "FILE_CHECK", MAY_READ, uid=1000, euid=1000).measure
    assert not decide(policy, "FILE_CHECK", MAY_READ, fsmagic=TMPFS_MAGIC).measure
    assert not decide(policy, "FILE_CHECK", MAY_WRITE).measure
    for magic in (PROC_SUPER_MAGIC, SYSFS_MAGIC):
        assert not decide(policy, "BPRM_CHECK", MAY_EXEC, fsmagic=magic).measure


def test_facts_no_rule_can_use_are_never_read():
    """An access no measure rule can match reads no id and no filesystem magic."""

    def unread() -> int:
        raise AssertionError("a fact was read that no rule needed")

    policy = parse_policy(DEFAULT_CONTAINER_POLICY)
    facts = {"uid": unread, "euid": unread, "fowner": unread, "fsmagic": unread}

    # An exec's own open (FILE_CHECK with MAY_EXEC) matches no measure rule.
    assert not policy.should_measure(func=Func.FILE_CHECK, mask=MAY_EXEC, **facts)
    # After an unconditional measure rule, a later uid rule is not consulted.
    later = parse_policy("measure func=BPRM_CHECK\nmeasure func=BPRM_CHECK uid=0")
    assert later.should_measure(func=Func.BPRM_CHECK, mask=MAY_EXEC, **facts)
    assert later.rules_for(Func.BPRM_CHECK, MAY_EXEC) == later.rules[:1]
