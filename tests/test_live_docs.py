"""The in-memory fold of streamed deltas (projections/live.py) against the openai SDK's own
accumulation of the same deltas: a message or step read while it streams must be what an SDK
client that followed the stream holds."""

from __future__ import annotations

import copy
from typing import Any

from openai.lib.streaming._deltas import accumulate_delta

from projections.live import LiveDoc, fold_deltas


def _without_indexes(value: Any) -> Any:
    """The SDK keeps each list item's `index`; a stored object has none."""
    if isinstance(value, dict):
        return {k: _without_indexes(v) for k, v in value.items() if k != "index"}
    if isinstance(value, list):
        return [_without_indexes(v) for v in value]
    return value


def _sdk_fold(base: dict[str, Any], deltas: list[dict[str, Any]]) -> dict[str, Any]:
    acc = copy.deepcopy(base)
    for delta in deltas:
        accumulate_delta(acc, copy.deepcopy(delta))
    return _without_indexes(acc)


MESSAGE_BASE: dict[str, Any] = {"id": "msg_1", "object": "thread.message", "status": "in_progress", "content": []}

MESSAGE_DELTAS: list[dict[str, Any]] = [
    {"content": [{"index": 0, "type": "text", "text": {"value": "The ", "annotations": []}}]},
    *({"content": [{"index": 0, "type": "text", "text": {"value": f"w{i} "}}]} for i in range(50)),
    {"content": [{"index": 0, "type": "text", "text": {"value": "【4:0†a.txt】", "annotations": [
        {"index": 0, "type": "file_citation", "text": "【4:0†a.txt】", "start_index": 300, "end_index": 311,
         "file_citation": {"file_id": "file_1"}}]}}]},
    {"content": [{"index": 0, "type": "text", "text": {"value": " and ☃ ünïcode."}}]},
    {"content": [{"index": 1, "type": "image_file", "image_file": {"file_id": "file_2"}}]},
    {"content": [{"index": 0, "type": "text", "text": {"value": " more"}}]},
]  # fmt: skip

STEP_BASE: dict[str, Any] = {"id": "step_1", "object": "thread.run.step", "type": "tool_calls",
                             "step_details": {"type": "tool_calls", "tool_calls": []}}  # fmt: skip

STEP_DELTAS: list[dict[str, Any]] = [
    {"step_details": {"type": "tool_calls", "tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}},
    {"step_details": {"type": "tool_calls", "tool_calls": [
        {"index": 1, "id": "call_b", "type": "code_interpreter", "code_interpreter": {"input": "", "outputs": []}}]}},
    *({"step_details": {"type": "tool_calls", "tool_calls": [
        {"index": i % 2, "type": ("function", "code_interpreter")[i % 2],
         **({"function": {"arguments": f'"k{i}"'}} if i % 2 == 0 else {"code_interpreter": {"input": f"x{i}\n"}})}]}}
      for i in range(20)),
    {"step_details": {"type": "tool_calls", "tool_calls": [
        {"index": 1, "type": "code_interpreter", "code_interpreter": {"outputs": [
            {"index": 0, "type": "logs", "logs": "3\n"}]}}]}},
]  # fmt: skip


def test_a_streamed_message_folds_as_the_sdk_accumulates_it() -> None:
    folded = fold_deltas(MESSAGE_BASE, MESSAGE_DELTAS)
    assert folded == _sdk_fold(MESSAGE_BASE, MESSAGE_DELTAS)
    text = folded["content"][0]["text"]
    assert text["value"].startswith("The w0 w1 ") and text["value"].endswith("ünïcode. more")
    assert [a["file_citation"]["file_id"] for a in text["annotations"]] == ["file_1"]
    assert folded["content"][1] == {"type": "image_file", "image_file": {"file_id": "file_2"}}


def test_a_streamed_tool_call_step_folds_as_the_sdk_accumulates_it() -> None:
    folded = fold_deltas(STEP_BASE, STEP_DELTAS)
    assert folded == _sdk_fold(STEP_BASE, STEP_DELTAS)
    calls = folded["step_details"]["tool_calls"]
    assert calls[0]["function"]["arguments"] == "".join(f'"k{i}"' for i in range(0, 20, 2))
    assert calls[1]["code_interpreter"]["input"] == "".join(f"x{i}\n" for i in range(1, 20, 2))


def test_reads_while_streaming_see_every_delta_so_far_and_share_nothing() -> None:
    """A read between deltas is the fold of the deltas so far; what it returns is a copy (a
    caller that changes it changes nothing kept), and the base given is never changed."""
    base, given = copy.deepcopy(MESSAGE_BASE), copy.deepcopy(MESSAGE_DELTAS)
    live = LiveDoc(base)
    for n, delta in enumerate(MESSAGE_DELTAS, start=1):
        live.apply(delta)
        if n % 7 == 0 or n == len(MESSAGE_DELTAS):
            read = live.materialize()
            assert read == _sdk_fold(MESSAGE_BASE, MESSAGE_DELTAS[:n])
            read["content"][0]["text"]["value"] = "changed"
            read["content"].append("junk")
    assert live.materialize() == _sdk_fold(MESSAGE_BASE, MESSAGE_DELTAS)
    assert base == MESSAGE_BASE
    assert given == MESSAGE_DELTAS  # the deltas (events' payloads) are left as they came
