"""What the gateway reads from an OpenAI request body, and nothing more.

The body is parsed once with `json.loads`; only `model`, `stream`, `stream_options`, `max_tokens`
(or `max_completion_tokens`) and the prompt text (to size the reservation) are inspected, and
everything else passes through untouched. When nothing needs changing the client's bytes are
forwarded as they came. Errors name the field: 400 for an unreadable body or a missing field,
422 for a field with the wrong type or value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest, UnprocessableRequest


@dataclass(frozen=True)
class ProxyRequest:
    """A validated completion request: the fields the gateway acts on plus the parsed body."""

    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    client_wants_usage: bool
    prompt_bytes: int

    @property
    def prompt_tokens_estimate(self) -> int:
        # DESIGN: the gateway never tokenizes on the hot path; 4 bytes per token is the estimate.
        return math.ceil(self.prompt_bytes / 4)


def _content_bytes(content: Any, where: str) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"].encode())
        return total
    raise UnprocessableRequest(f"'{where}' must be a string or a list of content parts.", param=where)


def _prompt_bytes_chat(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise UnprocessableRequest("'messages' must be a non-empty array.", param="messages")
    total = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise UnprocessableRequest(
                f"'messages.{i}' must be an object with a string 'role'.", param=f"messages.{i}"
            )
        total += _content_bytes(m.get("content"), f"messages.{i}.content")
    return total


def _prompt_bytes_completion(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest(
            "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
        )
    if isinstance(prompt, str):
        return len(prompt.encode())
    if isinstance(prompt, list):
        total = 0
        for item in prompt:
            if isinstance(item, str):
                total += len(item.encode())
            elif isinstance(item, int):
                total += 4  # a token id is one token
            elif isinstance(item, list) and all(isinstance(x, int) for x in item):
                total += 4 * len(item)
            else:
                raise UnprocessableRequest(
                    "'prompt' must be a string, strings, or token ids.", param="prompt"
                )
        return total
    raise UnprocessableRequest("'prompt' must be a string, strings, or token ids.", param="prompt")


def parse_request(raw: bytes, *, chat: bool) -> ProxyRequest:
    """Validate the fields the gateway needs; raise InvalidRequest/UnprocessableRequest naming the field."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if model is None:
        raise InvalidRequest(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise UnprocessableRequest("'model' must be a non-empty string.", param="model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise UnprocessableRequest("'stream' must be a boolean.", param="stream")
    max_tokens = body.get("max_completion_tokens") if chat else None
    field = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, field = body.get("max_tokens"), "max_tokens"
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise UnprocessableRequest(f"'{field}' must be a positive integer.", param=field)
    opts = body.get("stream_options")
    wants_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise UnprocessableRequest("'stream_options' must be an object.", param="stream_options")
        if not stream:
            raise InvalidRequest(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )
        wants_usage = bool(opts.get("include_usage"))
    prompt_bytes = _prompt_bytes_chat(body) if chat else _prompt_bytes_completion(body)
    return ProxyRequest(
        body=body,
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        client_wants_usage=wants_usage,
        prompt_bytes=prompt_bytes,
    )
