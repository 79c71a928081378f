"""sources.jsonlist: a JSON document read a window at a time, the items of its List handed out one by one."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from globaldns.sources import jsonlist

ITEMS = [
    {"kind": "ServiceEntry", "metadata": {"name": "a"}, "spec": {"hosts": ["a.global"], "addresses": ["240.0.0.1"]}},
    {"s": 'brackets ] } [ { and "quotes", commas, \\ and \u00e9\u4e2d', "n": [1, -2.5e3, 0, 12345678901234567890]},
    [],
    {},
    "a string",
    123456789,
    -0.000125,
    True,
    None,
    {"deep": [[[{"x": [1, 2, {"y": "z"}]}]]]},
]


def read(text: str, chunk: int = jsonlist.CHUNK) -> tuple[list[Any], Any, bool]:
    """(the items, the rest of the document, whether items were streamed), reading chunk characters at a time."""
    document = jsonlist.Document(io.StringIO(text))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jsonlist, "CHUNK", chunk)
        items = list(document.items())
    return items, document.top, document.streamed


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 0, 2], ids=["compact", "lines", "indented"])
def test_items_and_the_rest_are_what_json_load_reads(chunk, indent):
    document = {"apiVersion": "v1", "items": ITEMS, "kind": "List", "metadata": {"resourceVersion": "12"}}
    text = json.dumps(document, indent=indent, ensure_ascii=False)
    items, top, streamed = read(text, chunk)
    assert streamed
    assert items == ITEMS
    assert top == {key: value for key, value in document.items() if key != "items"}


@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
@pytest.mark.parametrize(
    "document",
    [
        {"kind": "ServiceEntry", "metadata": {"name": "one"}},
        {"items": "not an array", "kind": "List"},
        {},
        [1, 2, {"items": [3]}],
        "text",
        12.5,
        None,
    ],
    ids=["object", "items-not-array", "empty-object", "array", "string", "number", "null"],
)
def test_a_document_without_an_items_array_is_the_rest_whole(chunk, document):
    items, top, streamed = read(" \n" + json.dumps(document) + "\n", chunk)
    assert (items, top, streamed) == ([], document, False)


@pytest.mark.parametrize("chunk", [1, 1 << 20])
def test_an_empty_items_array(chunk):
    assert read('{"kind": "List", "items": [ ]}', chunk) == ([], {"kind": "List"}, True)


@pytest.mark.parametrize("number", ["1234567", "-2.5e3", "1.5", "1E+10", "0.125e-2"])
@pytest.mark.parametrize("chunk", range(1, 20))
def test_a_number_cut_at_the_end_of_a_window_is_read_whole(number, chunk):
    # `123` of `1234567`, `-2.5` of `-2.5e3`: a window's end can cut a number where it would still parse
    assert read(f'{{"items": [{number}, 89]}}', chunk)[0] == [json.loads(number), 89]


def test_items_come_before_the_whole_document_is_read(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(jsonlist, "CHUNK", 1000)
    stream = io.StringIO(json.dumps({"items": [{"n": i} for i in range(10_000)], "kind": "List"}))
    document = jsonlist.Document(stream)
    first = next(document.items())
    assert first == {"n": 0}
    assert stream.tell() < len(stream.getvalue()) / 10


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
@pytest.mark.parametrize(
    "text",
    [
        "",
        '{"items": [1, 2',
        '{"items": [1, 2,]}',
        '{"items": [1 2]}',
        '{"items": [1], "kind": "List"',
        '{"items": [1]} {"again": 1}',
        '{"items": [1], "items": [2]}',
        '{"items": 1, "items": [2]}',
        "{items: [1]}",
        '{"kind" "List"}',
        "[1, 2] 3",
        "kind: List\nitems: []\n",
    ],
    ids=[
        "empty",
        "truncated",
        "trailing-comma",
        "missing-comma",
        "unclosed-object",
        "extra-data",
        "items-twice",
        "items-again-as-array",
        "unquoted-key",
        "missing-colon",
        "extra-after-array",
        "yaml",
    ],
)
def test_what_is_not_one_json_document_raises_value_error(chunk, text):
    with pytest.raises(ValueError):
        read(text, chunk)
