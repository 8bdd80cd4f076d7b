"""Message and request shapes of the wire contract, validated where data enters from outside."""

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
LOCAL_OWNER = "local"
"""The one user of an API without authentication, and the owner of documents stored before users."""
ConversationId = Annotated[str, StringConstraints(pattern=CONVERSATION_ID_PATTERN)]


class Status(StrEnum):
    CREATED = "created"
    STREAMING = "streaming"
    COMPLETED = "completed"
    FAILED = "failed"


FINISHED = frozenset({Status.COMPLETED, Status.FAILED})
"""A message in one of these never changes again."""
UNFINISHED = frozenset(Status) - FINISHED


def utc_timestamp() -> str:
    return iso_timestamp(datetime.now(UTC))


def iso_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC to the millisecond, as every timestamp on the wire is written."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class WireModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


def _is_none(value: object) -> bool:
    return value is None


class Usage(WireModel):
    """Tokens a reply cost: the provider's count, or ours (`estimated`) where it sent none."""

    prompt_tokens: int = Field(alias="promptTokens", ge=0)
    completion_tokens: int = Field(alias="completionTokens", ge=0)
    total_tokens: int = Field(alias="totalTokens", ge=0)
    estimated: bool


FINISH_STOPPED = "stopped"
"""`finishReason` of a reply ended by a stop request."""
FINISH_ERROR = "error"
"""`finishReason` of a failed reply."""
NOTHING_USED = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0, estimated=True)
"""The usage of a reply stopped before the model was asked anything."""


class Message(WireModel):
    id: str
    owner: str = Field(LOCAL_OWNER, description="The user (JWT `sub`) the conversation is of.")
    conversation_id: str = Field(alias="conversationId")
    sender: Literal["user", "assistant"] = Field(alias="from")
    message: str
    status: Status
    timestamp: str
    seq: int = Field(ge=0)
    attempt: int = Field(0, ge=0, description="How many times the reply was started (0: not yet).")
    error: str | None = Field(None, exclude_if=lambda error: error is None)
    stopped: bool = Field(False, description="Ended early by a stop request; the text is kept.")
    parent_id: str | None = Field(
        None,
        alias="parentId",
        description="The message this one follows in the conversation's tree; null for a first.",
    )
    reasoning: str | None = Field(
        None,
        exclude_if=_is_none,
        description="Replies: the model's reasoning, when it streams one.",
    )
    usage: Usage | None = Field(
        None, exclude_if=_is_none, description="Finished replies: the tokens they cost."
    )
    finish_reason: str | None = Field(
        None,
        alias="finishReason",
        exclude_if=_is_none,
        description="Finished replies: the model's finish_reason, `stopped` or `error`.",
    )
    model: str | None = Field(
        None, exclude_if=_is_none, description="Replies: the model that wrote it."
    )

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> "Message":
        return cls.model_validate({**document, "id": document["_id"]})

    def to_wire(self) -> dict[str, Any]:
        """The message as sent to clients: optional fields left out, but `parentId` always there."""
        return {**self.model_dump(mode="json", exclude_none=True), "parentId": self.parent_id}


NOT_ONLY_WHITESPACE = r"[^\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""A character that `str.strip()` keeps (`isspace()` is false): the "not only whitespace" rule as
a JSON-schema `pattern` (unanchored: it must match somewhere), so clients and fuzzers see it."""

LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _visible(text: str) -> str:
    """Unicode text (JSON may carry a lone surrogate: no store can) that is not only whitespace."""
    if LONE_SURROGATE.search(text):
        raise ValueError("must be Unicode text: a lone surrogate (\\ud800-\\udfff) is not")
    if not text.strip():
        raise ValueError("must not be only whitespace")
    return text


VISIBLE = (
    AfterValidator(_visible),
    Field(json_schema_extra={"pattern": NOT_ONLY_WHITESPACE}),
)
"""Not only whitespace: the rule in the schema as a pattern, checked by `_visible` for its clear
message. Goes after the length constraints of the text it applies to."""


MessageId = Annotated[str, StringConstraints(pattern=CONVERSATION_ID_PATTERN)]
IfBusy = Literal["enqueue", "reject", "interrupt"]


class ChatRequest(WireModel):
    message: Annotated[str, StringConstraints(min_length=1, max_length=32_000), *VISIBLE]
    conversation_id: ConversationId | None = Field(None, alias="conversationId")
    parent_id: MessageId | None = Field(
        None,
        alias="parentId",
        description="The message the new one follows; absent: the latest; null: a new first one.",
    )
    if_busy: IfBusy = Field(
        "enqueue",
        alias="ifBusy",
        description="While a reply of the conversation is unfinished: answer after it "
        "(`enqueue`), refuse with 409 (`reject`), or stop it first (`interrupt`).",
    )

    @property
    def follows_latest(self) -> bool:
        """No `parentId` sent at all (an explicit null starts a new first message)."""
        return "parent_id" not in self.model_fields_set


class ErrorDetail(WireModel):
    """The body of a 4xx other than 422: what was wrong, in words."""

    detail: str


class Busy(WireModel):
    """`409` to `ifBusy: reject`: the reply still being written, which the client may stop."""

    detail: str
    message_id: str = Field(alias="messageId")


class ChatAccepted(WireModel):
    conversation_id: str = Field(alias="conversationId")
    user_message_id: str = Field(alias="userMessageId")
    message_id: str = Field(alias="messageId")
    message: str = "Message received, AI is responding..."
    status: Literal["streaming"] = "streaming"


class ConversationMessages(WireModel):
    conversation_id: str = Field(alias="conversationId")
    messages: list[Message]


class ChatJob(WireModel):
    """Body of a `chat-message`: which assistant message to write, in which conversation."""

    owner: str = LOCAL_OWNER
    conversation_id: str = Field(alias="conversationId")
    user_message_id: str = Field(alias="userMessageId")
    message_id: str = Field(alias="messageId")


class StopRequest(WireModel):
    """Body of a control message: stop writing this reply, wherever it is being written."""

    owner: str = LOCAL_OWNER
    conversation_id: str = Field(alias="conversationId")
    message_id: str = Field(alias="messageId")


class TurnFreed(WireModel):
    """Body of a control message: a reply of this conversation finished, or will never start;
    the reply asked after it may start now."""

    owner: str = LOCAL_OWNER
    conversation_id: str = Field(alias="conversationId")


Title = Annotated[str, StringConstraints(min_length=1, max_length=200), *VISIBLE]


class Conversation(WireModel):
    """A conversation as listed: `updatedAt` is when its latest message was posted."""

    conversation_id: str = Field(alias="conversationId")
    title: str
    created_at: str = Field(alias="createdAt")
    updated_at: str = Field(alias="updatedAt")
    message_count: int = Field(alias="messageCount", ge=0)


class ConversationPage(WireModel):
    conversations: list[Conversation]
    next: str | None = Field(description="Pass as `before` for the next page; null on the last.")


class ConversationRename(WireModel):
    title: Title
