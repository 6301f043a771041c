"""The request bodies the host accepts (pydantic models: FastAPI validates them and documents them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kbchat.config import ALL_METHODS, AUDIT_MODES


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class KbchatOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    memory: bool = Field(True, description="false: answer from the weights alone, without memory edits")


class ChatRequest(BaseModel):
    """An OpenAI chat request. Sampling options are accepted and ignored: kbchat decodes greedily."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    n: int | None = None
    kbchat: KbchatOptions | None = None


AuditMode = Literal[AUDIT_MODES]  # type: ignore[valid-type]


class EditRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description='"SUBJECT → FACT" or "SUBJECT | PROMPT | TARGET"')
    method: str | None = Field(None, description=f"one of {', '.join(ALL_METHODS)} that the host offers "
                                                 "(GET /v1/capabilities); default: the host's")
    probes: list[str] = Field(default_factory=list, description="portability probes")
    hparams: dict[str, Any] | None = Field(None, description="hyperparameter overrides (weight methods), "
                                                             "where the host honours them")
    audit: AuditMode | None = Field(  # type: ignore[valid-type]
        None, description="the edit's checks: filled in the background (default), awaited, or skipped; "
                          "ignored by engines that do not audit")
    stream: bool = Field(False, description="true: stream progress events (SSE), then the edit")


class CommitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stream: bool = False


class ParseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class NewChatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field("", max_length=1000, description="empty: named after the first question")


class RenameChatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=1000)


class SayBody(BaseModel):
    """A question in a saved chat; the answer streams as SSE: {"piece"} events, then {"answer"}."""

    model_config = ConfigDict(extra="forbid")
    content: str = Field(description="the question")
    memory: bool = Field(True, description="false: answer from the weights alone, without memory edits")
    max_tokens: int | None = Field(None, ge=1)


class AgainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    memory: bool = True
    max_tokens: int | None = Field(None, ge=1)
