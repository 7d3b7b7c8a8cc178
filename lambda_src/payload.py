"""What every source of an image shares: the error a caller is answered with, the size limit, the
content type an image is sent on with, and the time an invocation has left."""

MAX_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
SAFETY_MARGIN_MS = 1000  # never sleep or wait into the function's last second
IMAGE_TYPES = {"image/jpeg", "image/png", "application/x-image"}


class RequestError(Exception):
    """An error answered to the caller as ``status`` with ``{"error": {code, message}}``."""
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def check_size(data, what):
    if len(data) > MAX_BYTES:
        raise RequestError(413, "PayloadTooLarge", f"{what} exceeds {MAX_BYTES} bytes")
    return data


def image_type(content_type):
    content_type = (content_type or "").split(";")[0].strip().lower()
    return content_type if content_type in IMAGE_TYPES else "application/x-image"


def remaining_ms(context):
    getter = getattr(context, "get_remaining_time_in_millis", None)
    return getter() if callable(getter) else 30_000
