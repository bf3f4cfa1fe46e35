"""X-Hub-Signature-256: HMAC-SHA256 of the raw body with the app secret.

Meta signs the exact bytes it sends, so we verify the raw body before parsing it; re-serialized
JSON would not match (escaping of non-ASCII and "/" differs).
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(body: bytes, app_secret: str) -> str:
    """The header value Meta would send for `body`."""
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return PREFIX + digest


def verify(body: bytes, header: str, app_secret: str) -> bool:
    """Constant-time comparison of the header against our own HMAC of the body.

    The header is whatever bytes a client sent: anything but ASCII is simply not a valid
    signature (`hmac.compare_digest` refuses non-ASCII str, so the comparison is on bytes).
    """
    if not header.startswith(PREFIX) or not header.isascii():
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, header[len(PREFIX) :].strip().lower().encode())
