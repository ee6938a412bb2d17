"""Runtime policies: Keylime and cvtpm formats, evaluation verdicts, create_policy."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from cvtpm.attest.policy import (
    Digest,
    PolicyEvaluator,
    RuntimePolicy,
    create_policy,
    dump,
    load,
    load_keylime,
)
from cvtpm.errors import ParseError
from cvtpm.ima import ima_buf, ima_ng, ima_sig, parse_ascii, violation

ASSETS = Path(__file__).resolve().parents[2] / "assets"
KEYLIME_POLICY = ASSETS / "keylime-runtime-policy.json"
SIGNED = ASSETS / "signed-ima-sig-ima-buf.ascii_runtime_measurements"
KEYS = ASSETS / "signed-ima-sig-keys.pem"


def sha256(data: bytes) -> Digest:
    """The sha256 Digest of data."""
    return Digest("sha256", hashlib.sha256(data).digest())


def signed_entries() -> list:
    """The six entries of the signed Keylime list."""
    return parse_ascii(SIGNED.read_bytes())


def malformed_zmore():
    """Line 5 of the signed list with the signature length 0048 made 4800."""
    line = SIGNED.read_text().splitlines()[4]
    assert "00483046" in line
    return parse_ascii(line.replace("00483046", "48003046"))[0]


def reasons(failures) -> list[str]:
    """Just the reason ids."""
    return [f.reason for f in failures]


# Keylime's format


def test_keylime_policy_expected_values():
    """The Keylime policy: 21 digests, testload.mod's digest, one .ima keyring, sha1."""
    policy = load_keylime(KEYLIME_POLICY.read_text())

    assert len(policy.digests) == 21
    assert policy.digest_count == 21
    assert policy.digests["/boot/grub2/i386-pc/testload.mod"] == {
        Digest("sha1", bytes.fromhex("68e1d012e3f193dcde955e6ffbbc80e22b0f8778"))
    }
    assert policy.digests["boot_aggregate"] == {
        Digest(
            "sha256",
            bytes.fromhex(
                "4309217e9709def327c3409407f4d52907aeba46ef1b4f46529fd095f2ef9fb2"
            ),
        )
    }
    others = [
        d for path, ds in policy.digests.items() if path != "boot_aggregate" for d in ds
    ]
    assert len(others) == 20 and {d.alg for d in others} == {"sha1"}
    assert policy.keyrings == {
        ".ima": {
            Digest(
                "sha256",
                bytes.fromhex(
                    "a7d52aaa18c23d2d9bb2abb4308c0eeee67387a42259f4a6b1a42257065f3d5a"
                ),
            )
        }
    }
    assert policy.log_hash_alg == "sha1"
    assert policy.excludes == ()
    assert policy.verification_keys == ()


def test_keylime_policy_file_sha256():
    """The asset is the very file the source published (its sha256 is known)."""
    assert hashlib.sha256(KEYLIME_POLICY.read_bytes()).hexdigest() == (
        "64608ceb82d6d6459e8ac5ffd19865d670d1fe99417e10f20446de5d125bc4ab"
    )


def test_keylime_policy_allows_its_keyring_entry():
    """The list's .ima ima-buf entry is one of the policy's allowed keys."""
    evaluator = PolicyEvaluator(load_keylime(KEYLIME_POLICY.read_bytes()))

    assert evaluator.evaluate(signed_entries()[5], 5) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"meta": {"version": 2}}, "meta.version"),
        ({"digests": {"/a": "abcd"}}, "digests"),
        ({"digests": {"/a": ["zz"]}}, "not hex"),
        ({"digests": {"/a": ["abcd"]}}, "not a known digest"),
        ({"excludes": ["("]}, "exclude 0"),
        ({"ima": {"log_hash_alg": "crc32"}}, "log_hash_alg"),
        ({"verification-keys": "not json"}, "verification-keys"),
        (
            {"verification-keys": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END"},
            r"verification-keys\[0\]",
        ),
    ],
)
def test_keylime_policy_errors(change, message):
    """Each malformed part of a Keylime policy is a ParseError that names it."""
    doc = json.loads(KEYLIME_POLICY.read_text())
    doc.update(change)

    with pytest.raises(ParseError, match=message):
        load_keylime(json.dumps(doc))


def test_keylime_verification_keys_json():
    """Keylime's {"pubkeys": [base64 DER]} keyring string becomes PEM keys."""
    import base64

    from cryptography.hazmat.primitives import serialization

    pems = KEYS.read_text().split("-----END PUBLIC KEY-----\n")[:2]
    ders = [
        serialization.load_pem_public_key(
            (pem + "-----END PUBLIC KEY-----\n").encode()
        ).public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        for pem in pems
    ]
    doc = json.loads(KEYLIME_POLICY.read_text())
    doc["verification-keys"] = json.dumps(
        {"pubkeys": [base64.b64encode(d).decode() for d in ders], "keyids": []}
    )

    policy = load_keylime(doc)
    evaluator = PolicyEvaluator(policy)
    dd, zmore = signed_entries()[3:5]
    assert len(policy.verification_keys) == 2
    assert evaluator.evaluate(dd, 3) == []
    assert evaluator.evaluate(zmore, 4) == []


# cvtpm's format


def test_native_round_trip():
    """dump then load gives an equal policy, and dump of that the same text."""
    policy = load_keylime(KEYLIME_POLICY.read_text())
    policy = RuntimePolicy(
        digests={**policy.digests, "/bin/sh": {sha256(b"a"), sha256(b"b")}},
        excludes=("/tmp/", r"/var/log/.*\.log$"),
        keyrings=policy.keyrings,
        buffers={"kernel_version": frozenset({sha256(b"6.1")})},
        ignored_keyrings=(".builtin_trusted_keys",),
        verification_keys=(KEYS.read_text(),),
        log_hash_alg="sha1",
    )

    text = dump(policy)
    assert load(text) == policy
    assert dump(load(text)) == text


def test_native_minimal_document():
    """Only the version is required; the rest defaults to empty."""
    assert load('{"cvtpm_runtime_policy": 1}') == RuntimePolicy()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "version"),
        ({"cvtpm_runtime_policy": 1, "file": {}}, "unknown keys"),
        ({"cvtpm_runtime_policy": 1, "files": {"/a": ["md9:00"]}}, "files"),
        ({"cvtpm_runtime_policy": 1, "keys": "pem"}, "keys"),
        (
            {"cvtpm_runtime_policy": 1, "keys": ["garbage"]},
            r"keys\[0\]: holds no PEM public key or certificate",
        ),
        (
            {
                "cvtpm_runtime_policy": 1,
                "keys": [
                    "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
                ],
            },
            r"keys\[0\]: not a PEM public key or certificate",
        ),
    ],
)
def test_native_errors(doc, message):
    """Malformed cvtpm policies are ParseErrors naming the part."""
    with pytest.raises(ParseError, match=message):
        load(json.dumps(doc))


def test_native_not_json():
    """Text that is not JSON is a ParseError, not a JSONDecodeError."""
    with pytest.raises(ParseError, match="not JSON"):
        load("{")


# Evaluation


def test_allowed_and_disallowed_files():
    """Allowed digest passes; other digest and unknown path fail with their reasons."""
    policy = RuntimePolicy(digests={"/bin/sh": frozenset({sha256(b"sh")})})
    evaluator = PolicyEvaluator(policy)
    good = ima_ng("/bin/sh", sha256(b"sh").value)
    bad = ima_ng("/bin/sh", sha256(b"evil").value)
    unknown = ima_ng("/bin/nc", sha256(b"nc").value)

    assert evaluator.evaluate(good, 0) == []
    [mismatch] = evaluator.evaluate(bad, 1)
    assert (mismatch.reason, mismatch.index, mismatch.path) == (
        "policy.digest_mismatch",
        1,
        "/bin/sh",
    )
    assert mismatch.digest == str(sha256(b"evil"))
    assert "/bin/sh" in mismatch.message
    assert reasons(evaluator.evaluate(unknown, 2)) == ["policy.path_not_allowed"]


def test_several_algorithms_per_path():
    """A path may list digests of several algorithms; each matches its entries."""
    sha1 = Digest("sha1", hashlib.sha1(b"x").digest())
    evaluator = PolicyEvaluator(
        RuntimePolicy(digests={"/x": frozenset({sha1, sha256(b"x")})})
    )

    assert evaluator.evaluate(ima_ng("/x", sha1.value, "sha1"), 0) == []
    assert evaluator.evaluate(ima_ng("/x", sha256(b"x").value), 1) == []


def test_excludes_match_at_path_start():
    """Excludes are regexes anchored at the start, as Keylime's re.match."""
    evaluator = PolicyEvaluator(RuntimePolicy(excludes=("/tmp/", r".*\.pyc$")))

    assert evaluator.evaluate(ima_ng("/tmp/x", bytes(32)), 0) == []
    assert evaluator.evaluate(ima_ng("/a/b.pyc", bytes(32)), 1) == []
    assert reasons(evaluator.evaluate(ima_ng("/x/tmp/y", bytes(32)), 2)) == [
        "policy.path_not_allowed"
    ]


def test_violation():
    """A violation entry fails unless its path is excluded."""
    evaluator = PolicyEvaluator(RuntimePolicy(excludes=("/var/",)))

    assert reasons(evaluator.evaluate(violation("/etc/shadow"), 0)) == [
        "policy.violation"
    ]
    assert evaluator.evaluate(violation("/var/log/x"), 1) == []


def test_signatures_with_both_keys():
    """With both keys the signed entries pass although their paths are not listed."""
    policy = RuntimePolicy(verification_keys=(KEYS.read_text(),))
    evaluator = PolicyEvaluator(policy)
    entries = signed_entries()

    assert evaluator.evaluate(entries[3], 3) == []
    assert evaluator.evaluate(entries[4], 4) == []
    assert reasons(evaluator.evaluate(entries[1], 1)) == ["policy.path_not_allowed"]


def test_signatures_with_rsa_key_only():
    """With only the RSA key, line 4 passes and line 5 fails: unknown key."""
    rsa_pem = KEYS.read_text().split("-----END PUBLIC KEY-----")[0]
    policy = RuntimePolicy(verification_keys=(rsa_pem + "-----END PUBLIC KEY-----\n",))
    evaluator = PolicyEvaluator(policy)
    entries = signed_entries()

    assert evaluator.evaluate(entries[3], 3) == []
    [failure] = evaluator.evaluate(entries[4], 4)
    assert (failure.reason, failure.index, failure.path) == (
        "signature.unknown_key",
        4,
        "/usr/bin/zmore",
    )


def test_invalid_signature_falls_back_to_digests():
    """A signature that does not verify is forgiven if the digest is allowed."""
    dd = signed_entries()[3]
    forged = ima_sig(dd.path, sha256(b"other").value, signature=dd.signature)
    policy = RuntimePolicy(verification_keys=(KEYS.read_text(),))

    assert reasons(PolicyEvaluator(policy).evaluate(forged, 0)) == ["signature.invalid"]
    allowed = policy.allow(dd.path, sha256(b"other"))
    assert PolicyEvaluator(allowed).evaluate(forged, 0) == []


def test_malformed_signature_fails_even_if_allowlisted():
    """The 0048 -> 4800 variant fails with signature.malformed although allowed."""
    zmore = malformed_zmore()
    policy = RuntimePolicy(
        digests={zmore.path: frozenset({Digest("sha256", zmore.file_digest)})},
        verification_keys=(KEYS.read_text(),),
    )

    [failure] = PolicyEvaluator(policy).evaluate(zmore, 4)
    assert failure.reason == "signature.malformed"
    assert "malformed signature" in failure.message


def test_signatures_ignored_without_keys():
    """Without verification keys, signed entries are judged by digest alone."""
    zmore = malformed_zmore()
    policy = RuntimePolicy(
        digests={zmore.path: frozenset({Digest("sha256", zmore.file_digest)})}
    )

    assert PolicyEvaluator(policy).evaluate(zmore, 4) == []


def test_ima_buf_entries():
    """Keyrings and buffers are judged by the buffer digest; unknown names fail."""
    key = ima_buf(".ima", b"key-der")
    policy = RuntimePolicy(
        keyrings={".ima": frozenset({sha256(b"key-der")})},
        buffers={"kernel_version": frozenset({sha256(b"6.1")})},
        ignored_keyrings=(".builtin_trusted_keys",),
    )
    evaluator = PolicyEvaluator(policy)

    assert evaluator.evaluate(key, 0) == []
    assert reasons(evaluator.evaluate(ima_buf(".ima", b"other"), 1)) == [
        "keyring.digest_mismatch"
    ]
    assert evaluator.evaluate(ima_buf(".builtin_trusted_keys", b"k"), 2) == []
    assert evaluator.evaluate(ima_buf("kernel_version", b"6.1"), 3) == []
    assert reasons(evaluator.evaluate(ima_buf("kernel_version", b"6.2"), 4)) == [
        "buffer.digest_mismatch"
    ]
    assert reasons(evaluator.evaluate(ima_buf(".evm", b"k"), 5)) == [
        "keyring.not_allowed"
    ]


def test_evaluate_all_indexes_from_start():
    """evaluate_all numbers entries from `start` (incremental attestation)."""
    evaluator = PolicyEvaluator(RuntimePolicy())
    entries = [ima_ng("/a", bytes(32)), ima_ng("/b", bytes(32))]

    assert [f.index for f in evaluator.evaluate_all(entries, start=100)] == [100, 101]


def test_bad_exclude_rejected_early():
    """A policy with an invalid regex cannot be made."""
    with pytest.raises(ParseError, match="exclude"):
        RuntimePolicy(excludes=("[",))


# create_policy


def test_create_policy(tmp_path):
    """Executables and libraries are hashed under container paths; links are not
    followed, data files are skipped, names get the kernel's '_' for ' '."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "etc").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"outside")
    (outside / "secret").chmod(0o755)

    (root / "bin" / "busybox").write_bytes(b"busybox")
    (root / "bin" / "busybox").chmod(0o755)
    (root / "bin" / "my tool").write_bytes(b"tool")
    (root / "bin" / "my tool").chmod(0o700)
    (root / "lib" / "libc.so.6").write_bytes(b"libc")
    (root / "etc" / "passwd").write_bytes(b"root:x:0:0")
    os.symlink("busybox", root / "bin" / "sh")
    os.symlink(outside / "secret", root / "bin" / "escape")
    os.symlink(outside, root / "outside-dir")

    policy = create_policy(root)

    assert policy.digests == {
        "/bin/busybox": {sha256(b"busybox")},
        "/bin/my_tool": {sha256(b"tool")},
        "/lib/libc.so.6": {sha256(b"libc")},
    }


def test_create_policy_all_files_and_algorithm(tmp_path):
    """all_files hashes data files too, with the chosen algorithm."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_bytes(b"root")

    policy = create_policy(tmp_path, "sha512", all_files=True)

    assert policy.digests == {
        "/etc/passwd": {Digest("sha512", hashlib.sha512(b"root").digest())}
    }


def test_create_policy_then_evaluate(tmp_path):
    """A list of the rootfs's own files passes the policy made from it."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "app").write_bytes(b"app")
    (tmp_path / "bin" / "app").chmod(0o755)
    evaluator = PolicyEvaluator(create_policy(tmp_path))

    assert evaluator.evaluate(ima_ng("/bin/app", sha256(b"app").value), 0) == []
    assert reasons(evaluator.evaluate(ima_ng("/bin/app", bytes(32)), 1)) == [
        "policy.digest_mismatch"
    ]


def test_evaluator_throughput_counts_every_entry():
    """20k allowed entries all pass (the fast path makes no per-entry failures)."""
    entries = [
        ima_ng(f"/usr/bin/f{i}", hashlib.sha256(b"%d" % i).digest())
        for i in range(20_000)
    ]
    policy = RuntimePolicy(
        digests={e.path: frozenset({Digest("sha256", e.file_digest)}) for e in entries}
    )

    assert PolicyEvaluator(policy).evaluate_all(entries) == []


def test_a_measurement_gap_has_its_own_reason():
    """The gap cvtpm logs after running unmeasured is named as such."""
    from cvtpm.ima.entry import MEASUREMENT_GAP, violation

    evaluator = PolicyEvaluator(RuntimePolicy())
    (failure,) = evaluator.evaluate(violation(MEASUREMENT_GAP), 7)
    assert failure.reason == "policy.measurement_gap" and failure.index == 7


def test_create_policy_with_binds(tmp_path):
    """A bound directory's files appear under the path inside; a bound file
    under its own (its host name's link followed, as a bind mount does)."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "sh").write_bytes(b"sh")
    (root / "bin" / "sh").chmod(0o755)
    volume = tmp_path / "volume"
    (volume / "tools").mkdir(parents=True)
    (volume / "tools" / "run").write_bytes(b"run")
    (volume / "tools" / "run").chmod(0o755)
    (volume / "notes.txt").write_bytes(b"notes")
    library = tmp_path / "libx.so.1.2"
    library.write_bytes(b"lib")
    (tmp_path / "libx.so.1").symlink_to(library)

    policy = create_policy(
        root,
        binds=[
            (volume, Path("/vol")),
            (tmp_path / "libx.so.1", Path("/lib/libx.so.1")),
        ],
    )

    assert policy.digests == {
        "/bin/sh": {sha256(b"sh")},
        "/vol/tools/run": {sha256(b"run")},
        "/lib/libx.so.1": {sha256(b"lib")},
    }
