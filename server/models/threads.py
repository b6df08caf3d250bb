"""Thread and message request bodies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from server.models.common import Metadata, Request, ToolResources


class ImageFile(Request):
    file_id: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageUrl(Request):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(Request):
    type: Literal["text"]
    text: str


class ImageFilePart(Request):
    type: Literal["image_file"]
    image_file: ImageFile


class ImageUrlPart(Request):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImageFilePart | ImageUrlPart, Field(discriminator="type")]


class AttachmentTool(Request):
    type: Literal["code_interpreter", "file_search"]


class Attachment(Request):
    file_id: str
    tools: list[AttachmentTool] = Field(default_factory=list)


class CreateMessage(Request):
    role: Literal["user", "assistant"]
    content: str | list[ContentPart]
    attachments: list[Attachment] | None = None
    metadata: Metadata = None


class CreateThread(Request):
    messages: list[CreateMessage] | None = None
    tool_resources: ToolResources | None = None
    metadata: Metadata = None


class ModifyThread(Request):
    tool_resources: ToolResources | None = None
    metadata: Metadata = None


class ModifyMessage(Request):
    metadata: Metadata = None
