"""Thread and message request bodies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from server.models.common import Metadata, Request, ToolResources

MAX_TEXT_CHARS = 256_000  # OpenAI's limit on a message's text and on instructions
MAX_ATTACHMENTS = 32
MAX_CONTENT_PARTS = 32
MAX_URL_CHARS = 8192


class ImageFile(Request):
    file_id: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageUrl(Request):
    url: str = Field(max_length=MAX_URL_CHARS)
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(Request):
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT_CHARS)


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
    content: (
        Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
        | Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]
    )
    attachments: list[Attachment] | None = Field(None, max_length=MAX_ATTACHMENTS)
    metadata: Metadata = None


class CreateThread(Request):
    messages: list[CreateMessage] | None = None  # bounded by the request body's size
    tool_resources: ToolResources | None = None
    metadata: Metadata = None


class ModifyThread(Request):
    tool_resources: ToolResources | None = None
    metadata: Metadata = None


class ModifyMessage(Request):
    metadata: Metadata = None
