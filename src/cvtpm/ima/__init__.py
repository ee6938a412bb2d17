"""The IMA measurement list: entries, ascii and binary lists, replay, policy."""

from __future__ import annotations

from cvtpm.ima.ascii import (
    dump_ascii,
    encode_ascii,
    format_ascii,
    iter_ascii,
    parse_ascii,
)
from cvtpm.ima.binary import dump_binary, encode_binary, iter_binary, parse_binary
from cvtpm.ima.entry import (
    BANK_SIZES,
    Entry,
    boot_aggregate,
    ima_buf,
    ima_legacy,
    ima_ng,
    ima_sig,
    make_entry,
    violation,
)
from cvtpm.ima.replay import Replayer, replay

__all__ = [
    "BANK_SIZES",
    "Entry",
    "Replayer",
    "boot_aggregate",
    "dump_ascii",
    "dump_binary",
    "encode_ascii",
    "encode_binary",
    "format_ascii",
    "ima_buf",
    "ima_legacy",
    "ima_ng",
    "ima_sig",
    "iter_ascii",
    "iter_binary",
    "make_entry",
    "parse_ascii",
    "parse_binary",
    "replay",
    "violation",
]
