"""What the gateway reads from an OpenAI request body, and nothing more.

The body is parsed once with `json.loads`; only `model`, `stream`, `stream_options`, `max_tokens`
(or `max_completion_tokens`) and the prompt text (to size the reservation) are inspected, and
everything else passes through untouched. When nothing needs changing the client's bytes are
forwarded as they came. Errors name the field: 400 for an unreadable body or a missing field,
422 for a field with the wrong type or value.

Malformed input must end in one of those two, never in a 500, so the parser also guards what
`json` and `str.encode` would otherwise raise: a body nested deeper than `MAX_JSON_DEPTH` (the
C scanner recurses and raises RecursionError near 1,000 levels; re-encoding a body that parsed
just under that can still overflow, so the gateway stops well before), text holding a lone
UTF-16 surrogate (`"\\ud800"` is valid JSON but has no UTF-8 form, so neither byte counting nor
the backend's tokenizer can read it), integers past what a reservation or a token id can be,
and numbers JSON allows Python to read as inf or NaN. The depth check costs nothing on ordinary
bodies: it walks the parsed tree only when the body holds more brackets than the limit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest, UnprocessableRequest

MAX_JSON_DEPTH = 128
"""Deepest nesting of arrays/objects accepted (tool JSON schemas go a few dozen levels at most)."""

MAX_TOKENS_LIMIT = 2**31 - 1
"""Largest max_tokens accepted: an int32, which every backend's field fits; admit.lua's doubles
stay exact far above it."""

MAX_TOKEN_ID = 2**31 - 1
"""Token ids in a completion prompt are vocabulary indices: non-negative int32."""


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


def _utf8_len(text: str, where: str) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"'{where}' is not valid Unicode: it holds a lone UTF-16 surrogate.",
            param=where,
            code="invalid_unicode",
        ) from None


def _json_depth_over(body: Any, limit: int) -> bool:
    """True when arrays/objects nest deeper than `limit` (iterative: no recursion to overflow)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _content_bytes(content: Any, i: int) -> int:
    """UTF-8 bytes of message i's content (its field name is built only for an error)."""
    if content is None:
        return 0
    if isinstance(content, str):
        try:
            return len(content.encode())
        except UnicodeEncodeError:
            return _utf8_len(content, f"messages.{i}.content")  # raises, naming the field
    where = f"messages.{i}.content"
    if isinstance(content, list):
        total = 0
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise UnprocessableRequest(
                    f"'{where}.{j}' must be a content part object.", param=f"{where}.{j}"
                )
            text = part.get("text")
            if text is None:
                continue  # an image or audio part: not text, nothing to count
            if not isinstance(text, str):
                raise UnprocessableRequest(f"'{where}.{j}.text' must be a string.", param=f"{where}.{j}.text")
            total += _utf8_len(text, f"{where}.{j}.text")
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
        total += _content_bytes(m.get("content"), i)
    return total


def _is_token_id(x: Any) -> bool:
    return type(x) is int and 0 <= x <= MAX_TOKEN_ID  # `type is`, not isinstance: True is no token


def _prompt_bytes_completion(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest(
            "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
        )
    if isinstance(prompt, str):
        return _utf8_len(prompt, "prompt")
    if isinstance(prompt, list):
        total = 0
        for i, item in enumerate(prompt):
            if isinstance(item, str):
                total += _utf8_len(item, f"prompt.{i}")
            elif _is_token_id(item):
                total += 4  # a token id is one token
            elif isinstance(item, list) and all(_is_token_id(x) for x in item):
                total += 4 * len(item)
            else:
                raise UnprocessableRequest(
                    "'prompt' must be a string, strings, or token ids.", param="prompt"
                )
        return total
    raise UnprocessableRequest("'prompt' must be a string, strings, or token ids.", param="prompt")


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"Request body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json"
    )


def parse_request(raw: bytes, *, chat: bool) -> ProxyRequest:
    """Validate the fields the gateway needs; raise InvalidRequest/UnprocessableRequest naming the field."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:  # also the int parser's 4,300-digit limit
        raise InvalidRequest(f"Request body is not valid JSON: {exc}.", code="invalid_json") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_json")
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _json_depth_over(body, MAX_JSON_DEPTH):
        raise _too_deep()
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
    if max_tokens is not None and (type(max_tokens) is not int or not 1 <= max_tokens <= MAX_TOKENS_LIMIT):
        raise UnprocessableRequest(f"'{field}' must be an integer from 1 to {MAX_TOKENS_LIMIT}.", param=field)
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
