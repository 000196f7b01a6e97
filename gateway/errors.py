"""The gateway's error hierarchy.  Routes and services raise these; one place
(``gateway.api.errors``) maps them to HTTP answers."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: ``status`` and ``code`` say how the API answers."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(GatewayError):
    """Invalid settings: start-up stops with this message."""

    code = "invalid_config"


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class BadImage(BadRequest):
    """Not an image, truncated, empty, or undecodable."""

    code = "bad_image"


class Unauthorized(GatewayError):
    """Authentication is on and no valid API key or SSE token came with the request."""

    status = 401
    code = "unauthorized"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


class ModelNotFound(GatewayError):
    status = 404
    code = "model_not_found"


class InferenceUnavailable(GatewayError):
    """Triton is down, unreachable or the model is not ready: retry later."""

    status = 503
    code = "inference_unavailable"


class InferenceTimeout(InferenceUnavailable):
    """Triton did not answer within the deadline."""

    code = "inference_timeout"


class ModelDegraded(InferenceUnavailable):
    """A model instance crashed (Triton reports its stub unhealthy or restarting) and the one
    retry failed too: the model is partly down until Triton restarts the instance."""

    code = "model_degraded"


class Overloaded(GatewayError):
    """More POST /predict requests than the admission queue holds, or one waited too long for a slot."""

    status = 503
    code = "overloaded"


class SubscriberLimit(GatewayError):
    """``ingest.max_subscribers`` SSE subscribers are connected already."""

    status = 503
    code = "sse_limit"


class InferenceFailed(GatewayError):
    """Triton answered with an error that retrying will not fix."""

    status = 502
    code = "inference_failed"


class StreamNotFound(GatewayError):
    status = 404
    code = "stream_not_found"


class FrameNotReady(GatewayError):
    """The stream exists but has published no prediction yet: there is no frame to show."""

    status = 404
    code = "no_frame"


class StreamConflict(GatewayError):
    status = 409
    code = "stream_exists"


class StreamLimit(GatewayError):
    """The gateway already runs ``stream_policy.max_streams`` streams."""

    status = 403
    code = "stream_limit"


class StreamRefused(BadRequest):
    """A runtime-added stream outside the URL policy: never opened."""

    code = "stream_refused"


class ClusterUnavailable(GatewayError):
    """Cluster mode: Redis does not answer, so the shared stream registry cannot change (or be read)."""

    status = 503
    code = "cluster_unavailable"


class NotClustered(GatewayError):
    """A cluster route on a gateway that runs on its own."""

    status = 404
    code = "not_clustered"
