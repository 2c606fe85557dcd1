"""Prompt token counts exactly as vLLM's `--tokenizer-mode mistral` would count them.

Chat requests are encoded through mistral-common's `ChatCompletionRequest` (the path vLLM's
mistral tokenizer mode takes for chat templates); completion prompts are encoded as text with BOS,
as vLLM does with `add_special_tokens=True`. Only the prompt is tokenized: generated text is filler
whose length in tokens is exact by construction.
"""

from __future__ import annotations

from typing import Any

from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer


class PromptError(ValueError):
    """The prompt cannot be tokenized (bad message roles or content); becomes a 400."""


class PromptCounter:
    def __init__(self, tokenizer: MistralTokenizer) -> None:
        self.tokenizer = tokenizer
        self._text = tokenizer.instruct_tokenizer.tokenizer

    def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
        body: dict[str, Any] = {"messages": [_mistral_fields(m) for m in messages]}
        if tools:
            body["tools"] = tools
        try:
            req: ChatCompletionRequest = ChatCompletionRequest.model_validate(body)
            return len(self.tokenizer.encode_chat_completion(req).tokens)
        except Exception as exc:  # mistral-common raises pydantic and its own validation errors
            raise PromptError(_first_line(str(exc))) from exc

    def completion(self, prompt: str | list[int]) -> int:
        if isinstance(prompt, list):
            return len(prompt)  # already token ids
        return len(self._text.encode(prompt, bos=True, eos=False))


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:3]) if lines else "invalid messages"


# Fields mistral-common's message models accept; OpenAI clients also send e.g. `name` on user
# messages, which mistral-common rejects as an extra field. Dropping them does not change the
# prompt tokens (they are not part of the Mistral chat format).
_KEEP = {"role", "content", "tool_calls", "tool_call_id", "prefix"}


def _mistral_fields(msg: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(msg, dict):
        return msg
    keep = _KEEP | {"name"} if msg.get("role") == "tool" else _KEEP
    return {k: v for k, v in msg.items() if k in keep}
