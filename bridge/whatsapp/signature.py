"""X-Hub-Signature-256: HMAC-SHA256 of the raw body with the app secret.

Meta signs the exact bytes it sends, so we verify the raw body before parsing it; re-serialized
JSON would not match (escaping of non-ASCII and "/" differs).
"""

from __future__ import annotations

import hmac

PREFIX = "sha256="


def sign(body: bytes, app_secret: str) -> str:
    """The header value Meta would send for `body`."""
    return PREFIX + hmac.digest(app_secret.encode(), body, "sha256").hex()


def verify(body: bytes, header: str, app_secret: str) -> bool:
    """Constant-time comparison of the header against our own HMAC of the body.

    The header is whatever bytes a client sent: anything but ASCII is simply not a valid
    signature (`hmac.compare_digest` refuses non-ASCII str, so the comparison is on bytes).
    """
    if not header.startswith(PREFIX) or not header.isascii():
        return False
    # hmac.digest: OpenSSL's one-shot HMAC, several times cheaper than an hmac.new object.
    expected = hmac.digest(app_secret.encode(), body, "sha256").hex().encode()
    return hmac.compare_digest(expected, header[len(PREFIX) :].strip().lower().encode())
