"""Assistant request bodies."""

from __future__ import annotations

from pydantic import Field

from server.models.common import Metadata, Request, ResponseFormat, Tool, ToolResources


class CreateAssistant(Request):
    model: str = Field(min_length=1)
    name: str | None = Field(None, max_length=256)
    description: str | None = Field(None, max_length=512)
    instructions: str | None = Field(None, max_length=256_000)
    tools: list[Tool] = Field(default_factory=list, max_length=128)
    tool_resources: ToolResources | None = None
    metadata: Metadata = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None


class ModifyAssistant(Request):
    model: str | None = Field(None, min_length=1)
    name: str | None = Field(None, max_length=256)
    description: str | None = Field(None, max_length=512)
    instructions: str | None = Field(None, max_length=256_000)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_resources: ToolResources | None = None
    metadata: Metadata = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None
