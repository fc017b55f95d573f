"""OpenAIClient against a real HTTP server on 127.0.0.1 that plays scripted chat-completions replies."""

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image
from pydantic import BaseModel, Field

from personavlog.engine.config import MLLMConf
from personavlog.engine.errors import ConfigError, StageError, TransientError, UnusableOutputError
from personavlog.engine.mllm.openai_client import OpenAIClient, retry_after_s

KEY_ENV = "PERSONAVLOG_TEST_MLLM_KEY"
KEY = "sk-test-0123456789"


class Caption(BaseModel):
    caption: str
    tags: list[str] = Field(min_length=2, max_length=2)


GOOD = {"caption": "a red square", "tags": ["red", "square"]}


def completion(content, *, finish="stop", model="scripted-model"):
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}


class ScriptedServer:
    """Each POST /v1/chat/completions takes the next scripted reply: (status, body, headers, delay_s)."""

    def __init__(self):
        self.script = []
        self.requests = []  # (headers dict, json body, monotonic time)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "scripted-model", "object": "model",
                                                                 "created": 0, "owned_by": "test"}]}, {})
                else:
                    self._send(404, {"error": {"message": "no"}}, {})

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                with outer.lock:
                    outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()))
                    status, reply, headers, delay = outer.script.pop(0) if outer.script else \
                        (500, {"error": {"message": "script exhausted"}}, {}, 0)
                if self.path != "/v1/chat/completions":
                    status, reply, headers = 404, {"error": {"message": "wrong path"}}, {}
                if delay:
                    time.sleep(delay)
                try:
                    self._send(status, reply, headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting: that is the point of a slow reply

            def _send(self, status, reply, headers):
                data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def add(self, status=200, body=None, headers=None, delay=0.0):
        self.script.append((status, body if body is not None else completion(json.dumps(GOOD)), headers or {},
                            delay))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


@pytest.fixture
def conf(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return MLLMConf(backend="openai", model="scripted-model", base_url=server.base_url, api_key_env=KEY_ENV,
                    timeout_s=5.0, max_retries=3, backoff_s=0.01, temperature=0.4, max_tokens=256,
                    max_image_side=32)


def user_message_with_image():
    img = Image.new("RGB", (100, 50), (255, 0, 0))
    return [{"role": "system", "content": "Describe images."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image", "image": img}]}]


def test_success_sends_schema_image_model_and_key(server, conf):
    server.add()
    client = OpenAIClient(conf)
    result = client.chat(user_message_with_image(), Caption, seed=5)
    assert result.data == GOOD
    assert json.loads(result.text) == GOOD
    assert result.usage.as_dict() == {"prompt_tokens": 11, "completion_tokens": 7, "calls": 1}
    assert result.model == "scripted-model"

    headers, body, _ = server.requests[0]
    assert headers["authorization"] == f"Bearer {KEY}"
    assert body["model"] == "scripted-model"
    assert body["temperature"] == 0.4 and body["max_tokens"] == 256 and body["seed"] == 5
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Caption" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["additionalProperties"] is False and schema["required"] == ["caption", "tags"]
    assert schema["properties"]["tags"]["minItems"] == 2 and schema["properties"]["tags"]["maxItems"] == 2

    parts = body["messages"][1]["content"]
    assert parts[0] == {"type": "text", "text": "What is this?"}
    url = parts[1]["image_url"]["url"]
    assert parts[1]["type"] == "image_url" and url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (32, 16)  # downscaled to max_image_side, aspect kept
    assert sent.getpixel((5, 5))[:3] == (255, 0, 0)
    assert client.check_health() is True


def test_429_with_retry_after_then_success(server, conf):
    server.add(429, {"error": {"message": "slow down"}}, {"retry-after": "0.3"})
    server.add(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "150", "retry-after": "30"})
    server.add()
    client = OpenAIClient(conf)
    result = client.chat([{"role": "user", "content": "hi"}], Caption)
    assert result.data == GOOD
    assert client.attempts == 3
    times = [t for _, _, t in server.requests]
    assert times[1] - times[0] >= 0.3  # Retry-After honoured, not the 0.01 s backoff
    assert 0.15 <= times[2] - times[1] < 5  # retry-after-ms wins over retry-after


def test_5xx_gives_up_after_max_retries_plus_one(server, conf):
    for _ in range(10):
        server.add(500, {"error": {"message": "boom"}})
    client = OpenAIClient(conf)
    with pytest.raises(TransientError, match="4 attempt"):
        client.chat([{"role": "user", "content": "hi"}], Caption)
    assert len(server.requests) == conf.max_retries + 1 == 4
    gaps = [b[2] - a[2] for a, b in zip(server.requests, server.requests[1:])]
    assert gaps[2] >= 0.04  # exponential backoff: 0.01, 0.02, 0.04


def test_400_is_a_stage_error_without_retry(server, conf):
    server.add(400, {"error": {"message": "schema not supported: pattern"}})
    client = OpenAIClient(conf)
    with pytest.raises(StageError, match="HTTP 400.*schema not supported") as err:
        client.chat([{"role": "user", "content": "hi"}], Caption)
    assert not isinstance(err.value, (TransientError, UnusableOutputError))
    assert len(server.requests) == 1


def test_slow_reply_times_out_then_retry_succeeds(server, conf):
    slow = MLLMConf(**{**conf.__dict__, "timeout_s": 0.3})
    server.add(delay=1.5)
    server.add()
    client = OpenAIClient(slow)
    t0 = time.monotonic()
    assert client.chat([{"role": "user", "content": "hi"}], Caption).data == GOOD
    assert len(server.requests) == 2 and time.monotonic() - t0 < 1.5


def test_timeouts_every_time_become_transient(server, conf):
    slow = MLLMConf(**{**conf.__dict__, "timeout_s": 0.2, "max_retries": 1})
    server.add(delay=0.6)
    server.add(delay=0.6)
    with pytest.raises(TransientError, match="timed out"):
        OpenAIClient(slow).chat([{"role": "user", "content": "hi"}], Caption)
    assert len(server.requests) == 2


def test_invalid_json_retries_with_new_seeds_then_unusable(server, conf):
    for _ in range(3):
        server.add(body=completion('{"caption": "unterminated'))
    client = OpenAIClient(conf, parse_retries=2)
    with pytest.raises(UnusableOutputError, match="not JSON"):
        client.chat([{"role": "user", "content": "hi"}], Caption, seed=7)
    assert [b["seed"] for _, b, _ in server.requests] == [7, 8, 9]


def test_schema_mismatch_then_valid_output_succeeds(server, conf):
    server.add(body=completion(json.dumps({"caption": "x", "tags": ["only one"]})))
    server.add()
    client = OpenAIClient(conf, parse_retries=1)
    result = client.chat([{"role": "user", "content": "hi"}], Caption, seed=1)
    assert result.data == GOOD
    assert result.usage.calls == 2 and result.usage.prompt_tokens == 22


def test_truncated_reply_is_unusable(server, conf):
    server.add(body=completion('{"caption": "a', finish="length"))
    with pytest.raises(UnusableOutputError, match="max_tokens"):
        OpenAIClient(conf, parse_retries=0).chat([{"role": "user", "content": "hi"}], Caption)


def test_missing_key_env_is_a_config_error(conf, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=KEY_ENV) as err:
        OpenAIClient(conf)
    assert KEY not in str(err.value)


def test_retry_after_parsing():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None
