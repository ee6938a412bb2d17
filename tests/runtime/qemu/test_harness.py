"""The QEMU harness itself: initramfs contents, check markers, and bounded failure."""

from __future__ import annotations

import subprocess

import pytest

from .guest import (
    CHECK_BEGIN,
    CHECK_END,
    INITRAMFS_MODULES,
    GuestChecks,
    GuestError,
    GuestLockup,
    build_initramfs,
    find_kernel,
    module_closure,
    parse_checks,
    run_guest,
    unfinished,
)


def test_module_closure_puts_dependencies_first():
    """Every module the initramfs loads comes after the modules it depends on."""
    kernel = find_kernel()
    order = module_closure(kernel, INITRAMFS_MODULES)
    deps = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()

    assert len(order) == len(set(order))
    for position, module in enumerate(order):
        assert set(deps[module]) <= set(order[:position]), module
    names = {m.rsplit("/", 1)[-1] for m in order}
    assert {"9p.ko", "9pnet_virtio.ko", "virtio_pci.ko", "overlay.ko"} <= names


def test_module_closure_rejects_an_unknown_module():
    """A module the kernel neither has nor builds in is an error, not a silent skip."""
    with pytest.raises(GuestError, match="no module"):
        module_closure(find_kernel(), ("no_such_module_here",))


def test_initramfs_is_a_newc_archive_with_init_busybox_and_modules(tmp_path):
    """The initramfs unpacks with cpio and holds /init, busybox and the module list."""
    image = build_initramfs(find_kernel(), tmp_path / "initramfs.cpio")

    listing = subprocess.run(
        ["cpio", "-t", "--quiet"],
        stdin=image.open("rb"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()

    assert {"init", "bin/busybox", "dev/console", "modules/order"} <= set(listing)
    assert "modules/9p.ko" in listing


def test_parse_checks_splits_output_by_markers():
    """Each check's lines and status are found between its begin and end markers."""
    output = "\n".join(
        [
            "noise before",
            f"{CHECK_BEGIN}one",
            "hello",
            f"{CHECK_END}one status=0",
            f"{CHECK_BEGIN}two",
            "oops",
            "more",
            f"{CHECK_END}two status=3",
            f"{CHECK_BEGIN}three",
            "cut off here",
        ]
    )

    results = parse_checks(output)

    assert results["one"].status == 0 and results["one"].output == "hello"
    assert results["two"].status == 3 and results["two"].output == "oops\nmore"
    assert "three" not in results


def test_check_names_are_validated():
    """A check name that is not a plain file name, or is used twice, is refused."""
    checks = GuestChecks()
    checks.add("ok", "true")

    with pytest.raises(ValueError):
        checks.add("ok", "true")
    with pytest.raises(ValueError):
        checks.add("../escape", "true")


@pytest.mark.qemu
def test_a_guest_that_does_not_come_up_fails_clearly_and_is_killed(tmp_path):
    """Past the boot limit the harness raises with the console tail and kills QEMU."""
    with pytest.raises(GuestError, match="did not come up") as info:
        run_guest("true\n", tmp_path, boot_timeout=1.0)

    assert "last console lines" in str(info.value)
    pid_lines = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True
    ).stdout.split()
    assert pid_lines == []


def test_a_guest_kernel_lockup_is_told_apart(tmp_path):
    """A console with a soft lockup makes a GuestLockup (booted again once);
    any other unfinished run stays a plain GuestError."""
    done = subprocess.Popen(["true"])
    done.wait()
    console = tmp_path / "console.log"

    console.write_text("cvtpm-guest: running /cvtpm-qemu/script\n")
    error = unfinished(done, tmp_path)
    assert type(error) is GuestError and "did not finish" in str(error)

    console.write_text(
        "[   76.791360] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [exe:439]\n"
        "[   76.791400] Kernel panic - not syncing: softlockup: hung tasks\n"
    )
    error = unfinished(done, tmp_path)
    assert isinstance(error, GuestLockup) and "locked up" in str(error)
    assert "soft lockup - CPU#0" in str(error)  # the console tail comes with it
