"""Who may call ``POST /resolve``: a bearer token the API server vouches for (TokenReview) as one of the
allowed users (by default the operator's ServiceAccount). Answers are cached briefly, by token hash."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from kubernetes import client

CACHE_SECONDS = 60.0
CACHE_ENTRIES = 64
MAX_TOKEN_CHARS = 16_384


@dataclass(frozen=True)
class Denied:
    """Why a caller is refused, with the HTTP status to answer (401 or 403)."""

    status: int
    message: str


class TokenReviewer:
    """Checks ``Authorization: Bearer`` headers against the API server."""

    def __init__(self, api: client.ApiClient, allowed: Iterable[str]) -> None:
        self.api = client.AuthenticationV1Api(api)
        self.allowed = frozenset(allowed)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    def _username(self, token: str) -> str | None:
        """The user the token authenticates as (None if it does not), cached."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
            if hit is not None and hit[1] > now:
                return hit[0]
        request = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        review = self.api.create_token_review(request, _request_timeout=10)
        status = review.status
        user = status.user.username if status is not None and status.authenticated and status.user else None
        with self._lock:
            self._cache[digest] = (user, now + CACHE_SECONDS)
            self._cache.move_to_end(digest)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return user

    def check(self, header: str | None) -> Denied | None:
        """None if the caller may resolve, else why not."""
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Denied(401, "send Authorization: Bearer <token> (the operator's ServiceAccount token)")
        if len(token) > MAX_TOKEN_CHARS:
            return Denied(401, "bearer token is too long")
        try:
            user = self._username(token)
        except Exception as error:  # API server unreachable: refuse, and say why
            return Denied(401, f"cannot verify the token with the API server: {type(error).__name__}")
        if user is None:
            return Denied(401, "the API server does not accept this token")
        if user not in self.allowed:
            allowed = ", ".join(sorted(self.allowed))
            return Denied(403, f"user {user} may not call /resolve (allowed: {allowed})")
        return None
