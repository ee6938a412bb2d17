"""Container records: what a restarted daemon and the vTPM manager read back."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from cvtpm.server.request import (
    ContainerRequest,
    read_record,
    recorded_process,
    write_record,
)

REQUEST = ContainerRequest(name="web", pid=4242, rootfs="/srv/web", started="b:9")


def test_a_record_reads_back_as_written(tmp_path):
    path = tmp_path / "web" / "container.json"
    text = json.dumps(asdict(REQUEST))
    write_record(path, text)

    assert read_record(path) == (text, REQUEST)
    assert [p.name for p in path.parent.iterdir()] == ["container.json"]


@pytest.mark.parametrize("started", ["absent", None])
def test_a_record_without_a_start_time_trusts_its_pid(tmp_path, started):
    """Records written before start times were kept, or edited to null."""
    fields = asdict(REQUEST)
    if started == "absent":
        del fields["started"]
    else:
        fields["started"] = started
    path = tmp_path / "container.json"
    path.write_text(json.dumps(fields))

    assert read_record(path)[1].started == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"name": "web", "pid"', "Expecting"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({**asdict(REQUEST), "pid": "4242"}), "pid is not a number"),
        (json.dumps({**asdict(REQUEST), "pid": True}), "pid is not a number"),
        (json.dumps({**asdict(REQUEST), "started": 7}), "start not a string"),
        (json.dumps({**asdict(REQUEST), "colour": "red"}), "colour"),
        (json.dumps({"name": "web"}), "pid is not a number"),
        (json.dumps({"name": "web", "pid": 7}), "rootfs"),
    ],
)
def test_what_is_no_record_is_a_value_error(tmp_path, text, message):
    path = tmp_path / "container.json"
    path.write_text(text)

    with pytest.raises(ValueError, match=message):
        read_record(path)


def test_the_process_is_read_from_a_record_missing_the_rest(tmp_path):
    """Whether a container runs does not wait on the rest of its record."""
    path = tmp_path / "container.json"
    path.write_text(json.dumps({"pid": 4242, "started": None}))

    assert recorded_process(path) == (4242, "")
    with pytest.raises(ValueError, match="rootfs"):
        read_record(path)
