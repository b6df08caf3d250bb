"""Run request bodies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from server.models.common import Metadata, Request, ResponseFormat, Tool, ToolResources
from server.models.threads import MAX_TEXT_CHARS, CreateMessage, CreateThread


class TruncationStrategy(Request):
    type: Literal["auto", "last_messages"]
    last_messages: int | None = Field(None, ge=1)


class NamedFunction(Request):
    name: str


class NamedToolChoice(Request):
    type: Literal["function", "code_interpreter", "file_search"]
    function: NamedFunction | None = None


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class RunOptions(Request):
    """What createRun and createThreadAndRun share."""

    assistant_id: str
    model: str | None = None
    instructions: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    tools: list[Tool] | None = Field(None, max_length=20)
    metadata: Metadata = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stream: bool | None = None
    max_prompt_tokens: int | None = Field(None, ge=256)
    max_completion_tokens: int | None = Field(None, ge=256)
    truncation_strategy: TruncationStrategy | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None


class CreateRun(RunOptions):
    additional_instructions: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    additional_messages: list[CreateMessage] | None = None


class CreateThreadAndRun(RunOptions):
    thread: CreateThread | None = None
    tool_resources: ToolResources | None = None


class ToolOutput(Request):
    tool_call_id: str
    output: str = ""


class SubmitToolOutputs(Request):
    tool_outputs: Annotated[list[ToolOutput], Field(min_length=1)]
    stream: bool | None = None


class ModifyRun(Request):
    metadata: Metadata = None
