"""`http`: scores from a reward server over HTTP (standard library only)."""
from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

from rewarders.base import Rewarder

# Failures worth another try: the server may be restarting, overloaded or slow.
TRANSIENT = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)


class HTTPRewarder(Rewarder):
    """POSTs prompts and completions as JSON to a reward server and reads back its scores.

    Wire format: `POST url` with `Content-Type: application/json` and the body
    `{"prompts": [str, ...], "completions": [str, ...], "metadata": [object, ...]}`, three lists
    of one length, item i being completion i, its prompt and its dataset row's other fields.
    The server answers 200 with `{"scores": [number, ...]}` or a bare `[number, ...]`, one score
    per item, in order.

    kwargs: `url` (required); `timeout_s` (default 30) per request; `retries` (default 3) more
    tries after a connection error, a timeout or a 5xx answer, waiting `backoff_s` (default 0.5)
    doubled each time; a 4xx answer is not retried. `headers` (default {}) are added to each
    request (e.g. Authorization). `batch_size` (default None: all in one request) splits a call
    into requests of at most that many items.
    """

    def __init__(self, url: str, timeout_s: float = 30, retries: int = 3, backoff_s: float = 0.5,
                 headers: dict[str, str] | None = None, batch_size: int | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected http:// or https://, got {url!r}")
        if retries < 0 or timeout_s <= 0 or (batch_size is not None and batch_size < 1):
            raise ValueError("need retries >= 0, timeout_s > 0 and batch_size >= 1 or None")
        self.url, self.timeout_s, self.retries, self.backoff_s = url, timeout_s, retries, backoff_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.batch_size = batch_size

    def score(self, prompts, completions, metadata):
        size = self.batch_size or max(1, len(completions))
        scores = []
        for start in range(0, len(completions), size):
            part = slice(start, start + size)
            expected = len(completions[part])
            batch_scores = self._post({"prompts": list(prompts[part]),
                                       "completions": list(completions[part]),
                                       "metadata": list(metadata[part])})
            if len(batch_scores) != expected:
                raise ValueError(f"{self.url} returned {len(batch_scores)} scores for "
                                 f"{expected} items (items {start}..{start + expected - 1})")
            scores.extend(batch_scores)
        return scores

    def _post(self, payload: dict) -> list:
        body = json.dumps(payload).encode()
        attempts = self.retries + 1
        for attempt in range(attempts):
            request = urllib.request.Request(self.url, data=body, headers=self.headers,
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return _parse_scores(self.url, response.read())
            except urllib.error.HTTPError as error:
                text = error.read().decode(errors="replace")[:200]
                last = f"HTTP {error.code}: {text!r}"
                if error.code < 500:
                    raise RuntimeError(f"POST {self.url} answered {last} (not retried)") from None
            except TRANSIENT as error:
                last = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            if attempt + 1 < attempts:
                time.sleep(self.backoff_s * 2 ** attempt)
        raise RuntimeError(f"POST {self.url} failed after {attempts} attempts; last: {last}")


def _parse_scores(url: str, raw: bytes) -> list:
    try:
        answer = json.loads(raw)
    except ValueError:
        raise ValueError(f"{url} answered non-JSON: {raw[:200]!r}") from None
    scores = answer.get("scores") if isinstance(answer, dict) else answer
    if not isinstance(scores, list):
        raise ValueError(f"{url} answered without a list of scores: {raw[:200]!r}")
    return scores
