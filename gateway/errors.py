"""Every error the gateway answers with, as one documented tree, rendered in one place.

    GatewayError                      status  type                     code
    ├── InvalidRequest                400     invalid_request_error    invalid_request / <field code>
    │   └── UnprocessableRequest      422     invalid_request_error    invalid_value
    ├── AuthenticationFailed          401     invalid_request_error    invalid_api_key
    ├── AdminAuthFailed               401     invalid_request_error    invalid_admin_token
    ├── AdminDisabled                 503     invalid_request_error    admin_disabled
    ├── ModelNotAllowed               403     invalid_request_error    model_not_allowed
    ├── NotFound                      404     invalid_request_error    not_found
    │   └── ModelNotFound             404     invalid_request_error    model_not_found
    ├── MethodNotAllowed              405     invalid_request_error    method_not_allowed
    ├── BodyTooLarge                  413     invalid_request_error    request_too_large
    ├── RateLimited                   429     requests | tokens        rate_limit_exceeded
    │   └── QuotaExhausted            429     insufficient_quota       insufficient_quota
    ├── Overloaded                    429     rate_limit_exceeded      model_overloaded (sheddable, saturated)
    ├── BackendRejected               4xx     invalid_request_error    upstream_rejected (backend's status)
    ├── BackendError                  502     upstream_error           bad_gateway
    ├── BackendUnavailable            503     upstream_error           backend_unavailable
    │   ├── NoBackendInRegion         503     upstream_error           no_backend_in_region
    │   └── DeadlineUnmeetable        503     upstream_error           deadline_unmeetable
    ├── BackendTimeout                504     upstream_error           backend_timeout
    ├── RedisUnavailable              503     service_unavailable      redis_unavailable
    └── InternalError                 500     server_error             internal_error

The body is OpenAI's: `{"error": {"message", "type", "param", "code"}}`. Handlers raise these
classes; `error_response` (registered as the one exception handler in app.py) turns them into
HTTP. Nothing is mapped by matching exception text.
"""

from __future__ import annotations

import calendar
import json
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from starlette.responses import Response

if TYPE_CHECKING:
    from gateway.ratelimit import Decision


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class UnprocessableRequest(InvalidRequest):
    status = 422
    code = "invalid_value"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class AdminAuthFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_admin_token"


class AdminDisabled(GatewayError):
    status = 503
    type = "invalid_request_error"
    code = "admin_disabled"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ModelNotAllowed(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class BodyTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    """429; `type` is the limit that was hit (requests, tokens, concurrency) as OpenAI does."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.type = limit


class QuotaExhausted(RateLimited):
    code = "insufficient_quota"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, limit="insufficient_quota", headers=headers)


class Overloaded(GatewayError):
    """A sheddable plan's request while the model is saturated: refused at once, with retry-after."""

    status = 429
    type = "rate_limit_exceeded"
    code = "model_overloaded"


class BackendRejected(GatewayError):
    """The backend refused the request itself: its 4xx status and message are passed through."""

    type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class BackendError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class BackendUnavailable(GatewayError):
    status = 503
    type = "upstream_error"
    code = "backend_unavailable"


class NoBackendInRegion(BackendUnavailable):
    """Data residency: no healthy backend in the tenant's regions, and none elsewhere is tried."""

    code = "no_backend_in_region"


class DeadlineUnmeetable(BackendUnavailable):
    """x-servelab-deadline-ms is shorter than the predicted queue wait: refused at once, not after."""

    code = "deadline_unmeetable"


class BackendTimeout(GatewayError):
    status = 504
    type = "upstream_error"
    code = "backend_timeout"


class RedisUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "redis_unavailable"


class InternalError(GatewayError):
    """An exception nobody expected, caught by a catch-all; the message names the request id."""

    status = 500
    type = "server_error"
    code = "internal_error"


def error_body(exc: GatewayError) -> bytes:
    return json.dumps(
        {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
    ).encode()


def error_response(exc: GatewayError, extra_headers: Mapping[str, str] | None = None) -> Response:
    """The one place a gateway error becomes HTTP."""
    headers = dict(exc.headers)
    if extra_headers:
        headers.update(extra_headers)
    return Response(error_body(exc), status_code=exc.status, headers=headers, media_type="application/json")


def rate_limit_headers(d: Decision) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, sent on successes and on 429s alike."""
    return {
        "x-ratelimit-limit-requests": str(d.requests_limit),
        "x-ratelimit-remaining-requests": str(d.requests_remaining),
        "x-ratelimit-reset-requests": f"{d.requests_reset_s:.3f}s",
        "x-ratelimit-limit-tokens": str(d.tokens_limit),
        "x-ratelimit-remaining-tokens": str(d.tokens_remaining),
        "x-ratelimit-reset-tokens": f"{d.tokens_reset_s:.3f}s",
    }


def _seconds_to_month_end(month: str, now_s: float) -> float:
    year, mon = (int(p) for p in month.split("-"))
    nxt = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return max(1.0, calendar.timegm((nxt[0], nxt[1], 1, 0, 0, 0)) - now_s)


_UNITS = {
    "requests": "requests per minute",
    "tokens": "tokens per minute",
    "concurrency": "concurrent requests",
    "quota": "tokens per month",
}


def rejection(d: Decision, tenant: str) -> RateLimited:
    """The 429 for a denied admission: names the limit with its limit, used and requested numbers."""
    if d.limit == "quota":
        retry = _seconds_to_month_end(d.month, time.time())
    elif d.retry_after_s < 0:  # larger than the whole bucket: waiting cannot help, say so
        retry = 60.0
    else:
        retry = max(d.retry_after_s, 0.001)
    headers = rate_limit_headers(d)
    headers["retry-after"] = str(max(1, math.ceil(retry)))
    headers["retry-after-ms"] = str(max(1, math.ceil(retry * 1000)))
    what = _UNITS.get(d.limit, d.limit)
    numbers = f"limit {d.limit_value}, used {d.used:.0f}, requested {d.requested:.0f}"
    if d.limit == "quota":
        return QuotaExhausted(
            f"Monthly token quota of tenant {tenant!r} exhausted for {d.month}: {numbers}.", headers=headers
        )
    if d.limit == "tokens" and d.retry_after_s < 0:
        msg = (
            f"Request too large for {what} of tenant {tenant!r}: {numbers}. "
            "Lower max_tokens or the prompt size."
        )
    else:
        msg = f"Rate limit reached for {what} of tenant {tenant!r}: {numbers}. Retry after {retry:.3f}s."
    return RateLimited(msg, limit=d.limit, headers=headers)
