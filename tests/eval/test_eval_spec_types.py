"""Task specs with wrong types (issue 11) are one-line DataErrors naming the key, never TypeErrors."""
import json
import re

import pytest

from gpt3lab.errors import DataError
from gpt3lab.eval.tasks import load_task_file

ITEM = {"context": "1+1=", "target": "2"}


@pytest.mark.parametrize("key, value, want", [
    ("data", 5, "data=5 must be a string"),
    ("stop", 5, "stop=5 must be a string or a list of strings"),
    ("stop", ["\n", 3], "stop=['\\n', 3] must be a string or a list of strings"),
    ("delimiter", 5, "delimiter=5 must be a string"),
    ("context_field", ["x"], "context_field=['x'] must be a string"),
    ("name", {}, "name={} must be a string"),
    ("fewshot_data", True, "fewshot_data=True must be a string"),
    ("max_tokens", 2.5, "max_tokens=2.5 must be a positive integer"),
])
def test_wrong_spec_types_name_the_key(tmp_path, key, value, want):
    (tmp_path / "items.jsonl").write_text(json.dumps(ITEM) + "\n")
    spec = {"data": "items.jsonl", key: value}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=re.escape("spec.json: " + want)):
        load_task_file(tmp_path / "spec.json")
    if key != "data":                          # the same spec as the JSONL header line
        (tmp_path / "t.jsonl").write_text(json.dumps({"gpt3lab_task": {key: value}}) + "\n" + json.dumps(ITEM) + "\n")
        with pytest.raises(DataError, match=f"t.jsonl: {key}="):
            load_task_file(tmp_path / "t.jsonl")


def test_valid_spec_keeps_defaults(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"gpt3lab_task": {"stop": "."}}) + "\n" + json.dumps(ITEM) + "\n")
    t = load_task_file(tmp_path / "t.jsonl")
    assert t.stop == ["."] and t.max_tokens == 32 and t.name == "t" and t.fmt.delimiter == " "
