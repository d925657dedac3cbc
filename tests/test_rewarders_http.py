"""`http`: a reward server on 127.0.0.1 that the test runs in a thread."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rewarders.base import RewardError, load_rewarder, score_checked


class RewardServer:
    """Answers each POST with the next planned (status, body, delay_s); after the plan runs
    out, with the completions' lengths. Records every request's JSON and headers."""

    def __init__(self):
        self.plan, self.requests = [], []
        self.release = threading.Event()  # ends a deliberately slow answer at teardown
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((payload, dict(self.headers)))
                if server.plan:
                    status, body, delay_s = server.plan.pop(0)
                else:
                    status, body, delay_s = 200, {"scores": [len(c) for c in
                                                             payload["completions"]]}, 0
                server.release.wait(delay_s)
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up waiting
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score"

    def rewarder(self, **kwargs):
        return load_rewarder("http", {"url": self.url, "backoff_s": 0, **kwargs})


@pytest.fixture
def server():
    server = RewardServer()
    thread = threading.Thread(target=server.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.httpd.shutdown()
    server.httpd.server_close()


PROMPTS, COMPLETIONS = ["p1", "p2", "p3"], ["a", "bbb", "cc"]
METADATA = [{"id": 1}, {"id": 2}, {"id": 3}]


def test_happy_path_sends_documented_payload_and_headers(server):
    rewarder = server.rewarder(headers={"Authorization": "Bearer token"})
    assert rewarder.score(PROMPTS, COMPLETIONS, METADATA) == [1, 3, 2]
    payload, headers = server.requests[0]
    assert payload == {"prompts": PROMPTS, "completions": COMPLETIONS, "metadata": METADATA}
    assert headers["Authorization"] == "Bearer token"
    assert headers["Content-Type"] == "application/json"


def test_bare_list_answer_is_accepted(server):
    server.plan = [(200, [0.5, 0.25, 1], 0)]
    assert server.rewarder().score(PROMPTS, COMPLETIONS, METADATA) == [0.5, 0.25, 1]


def test_batch_size_splits_requests_and_keeps_order(server):
    completions = ["a" * n for n in range(1, 6)]
    scores = server.rewarder(batch_size=2).score(["p"] * 5, completions, [{}] * 5)
    assert scores == [1, 2, 3, 4, 5]
    assert [len(payload["completions"]) for payload, _ in server.requests] == [2, 2, 1]


def test_two_503s_are_retried_then_succeed(server):
    server.plan = [(503, "busy", 0), (503, "busy", 0)]
    assert server.rewarder(retries=3).score(PROMPTS, COMPLETIONS, METADATA) == [1, 3, 2]
    assert len(server.requests) == 3


def test_5xx_gives_up_after_retries(server):
    server.plan = [(500, "internal trouble", 0)] * 3
    with pytest.raises(RuntimeError, match=r"failed after 3 attempts; last: HTTP 500: "
                                           r"'internal trouble'"):
        server.rewarder(retries=2).score(PROMPTS, COMPLETIONS, METADATA)
    assert len(server.requests) == 3


def test_400_is_not_retried_and_quotes_the_body(server):
    server.plan = [(400, "bad field 'completions': " + "x" * 500, 0)]
    with pytest.raises(RuntimeError) as caught:
        server.rewarder(retries=3).score(PROMPTS, COMPLETIONS, METADATA)
    message = str(caught.value)
    assert "answered HTTP 400: \"bad field 'completions': xxx" in message
    assert "x" * 200 not in message  # only the body's first 200 characters
    assert "not retried" in message
    assert len(server.requests) == 1


def test_timeout_is_retried_and_reported(server):
    server.plan = [(200, {"scores": [0, 0, 0]}, 30)] * 2
    with pytest.raises(RuntimeError, match="failed after 2 attempts; last: .*timed out"):
        server.rewarder(timeout_s=0.2, retries=1).score(PROMPTS, COMPLETIONS, METADATA)
    assert len(server.requests) == 2


def test_connection_refused_is_retried(server):
    url = server.url
    server.httpd.shutdown()
    server.httpd.server_close()
    rewarder = load_rewarder("http", {"url": url, "retries": 1, "backoff_s": 0})
    with pytest.raises(RuntimeError, match="failed after 2 attempts; last: URLError: .*refused"):
        rewarder.score(PROMPTS, COMPLETIONS, METADATA)


@pytest.mark.parametrize("body, message", [
    ("<html>oops</html>", "answered non-JSON: b'<html>oops</html>'"),
    ({"score": [1, 2, 3]}, "answered without a list of scores"),
])
def test_malformed_answers_are_named(server, body, message):
    server.plan = [(200, body, 0)]
    with pytest.raises(RewardError, match=f"rewarder 'http' raised ValueError: .*{message}"):
        score_checked(server.rewarder(), "http", PROMPTS, COMPLETIONS, METADATA)


def test_wrong_count_names_the_batch(server):
    server.plan = [(200, {"scores": [1]}, 0)]
    with pytest.raises(ValueError, match=r"returned 1 scores for 2 items \(items 0..1\)"):
        server.rewarder(batch_size=2).score(PROMPTS, COMPLETIONS, METADATA)


def test_bad_url_is_a_constructor_error():
    with pytest.raises(RewardError, match="url: expected http:// or https://"):
        load_rewarder("http", {"url": "localhost:8000"})
