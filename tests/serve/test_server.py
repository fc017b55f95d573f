"""The endpoint as clients see it: a real Serve application on 127.0.0.1 (random free port) with the embedded default
models (tiny, local MLLM), driven over HTTP with httpx.

One server per module (start-up loads every model once); tests run in file order and the last one kills a model
replica, so the ones before it see a healthy server.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from personavlog.engine.media import probe

from _support import EXAMPLE_IMAGE, png_header_only

pytestmark = pytest.mark.slow

TOKEN = "test-token-" + "a" * 24
OTHER_TOKEN = "other-token-" + "b" * 24  # from the secrets file: its own rate-limit bucket
SHOTS = 3
IMAGE_MAX_BYTES = 100_000
MAX_BODY = 1_500_000
BURST = 30
THEME = "A rainy day in a small mountain town"
STYLE = "Studio Ghibli watercolor"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import ray
    from ray import serve

    from personavlog.engine.config import load_config
    from personavlog.serve.deployments import deploy

    tmp = tmp_path_factory.mktemp("serve")
    secrets = tmp / "tokens"
    secrets.write_text(f"# API tokens\n{OTHER_TOKEN}\n")
    secrets.chmod(0o600)
    overrides = [f"out={tmp / 'out'}", f"serve.token_file={secrets}", "serve.queue_size=2",
                 "serve.max_concurrent_jobs=1", f"serve.max_body_bytes={MAX_BODY}",
                 f"limits.image_max_bytes={IMAGE_MAX_BYTES}", f"serve.rate_limit.burst={BURST}",
                 "serve.rate_limit.requests_per_s=5", "serve.models.health_check_period_s=2",
                 "serve.models.graceful_shutdown_timeout_s=5", "serve.unit_retries=4"]
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["PERSONAVLOG_API_TOKEN"] = TOKEN  # replica processes inherit it from this driver
    cfg = load_config(overrides)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        url = deploy(cfg, overrides, host="127.0.0.1", port=_free_port())
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client, cfg
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop("PERSONAVLOG_API_TOKEN", None)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_vlog(client: httpx.Client, *, image: bytes | None = None, seed: int = 0, token: str = TOKEN,
              path: str = "/v1/vlogs", **fields) -> httpx.Response:
    data = {"theme": THEME, "style": STYLE, "shots": str(SHOTS), "seed": str(seed), **fields}
    files = {"image": ("reference.png", EXAMPLE_IMAGE.read_bytes() if image is None else image, "image/png")}
    return client.post(path, headers=auth(token), data=data, files=files)


def sse_events(client: httpx.Client, url: str, on_event=None, timeout: float = 300, after: int = 0) -> list[dict]:
    """Every event of a job's stream until it closes (after the job's terminal event)."""
    events = []
    headers = {**auth(), **({"Last-Event-ID": str(after)} if after else {})}
    with client.stream("GET", url, headers=headers, timeout=timeout) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
                if on_event:
                    on_event(events[-1])
    return events


def test_healthz_is_open_and_everything_else_needs_the_token(server):
    client, _ = server
    assert client.get("/healthz").json() == {"status": "ok"}
    for method, path in [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/v1/vlogs/0123456789abcdef0123"),
                         ("POST", "/v1/vlogs"), ("POST", "/v1/plans"), ("GET", "/no/such/route")]:
        r = client.request(method, path)
        assert r.status_code == 401, (method, path)
        assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
    for bad in ("Bearer wrong-token-000000000000000", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"):
        assert client.get("/openapi.json", headers={"Authorization": bad}).status_code == 401, bad
    r = post_vlog(client, token="not-the-token-1234567890")
    assert r.status_code == 401


def test_openapi_documents_the_api(server):
    client, _ = server
    spec = client.get("/openapi.json", headers=auth()).json()
    paths = spec["paths"]
    for path in ("/v1/vlogs", "/v1/vlogs/{job_id}", "/v1/vlogs/{job_id}/events", "/v1/vlogs/{job_id}/video",
                 "/v1/plans", "/healthz"):
        assert path in paths, path
    assert "delete" in paths["/v1/vlogs/{job_id}"]
    form = spec["components"]["schemas"]
    assert any({"theme", "style", "image"} <= set(s.get("properties", {})) for s in form.values())
    assert any(s.get("scheme") == "bearer" for s in spec["components"]["securitySchemes"].values())
    docs = client.get("/docs", headers=auth())
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def _noise_png(side: int) -> bytes:
    rgb = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_are_checked_by_content_and_size(server):
    client, _ = server
    r = post_vlog(client, image=b"this is a text file, not a photo\n" * 10)
    assert r.status_code == 415 and r.json()["error"]["field"] == "image", r.text
    big = _noise_png(256)
    assert len(big) > IMAGE_MAX_BYTES
    r = post_vlog(client, image=big)
    assert r.status_code == 413 and r.json()["error"]["field"] == "image", r.text
    r = post_vlog(client, image=png_header_only(20000, 20000))  # a decompression bomb: 400 MP from a tiny file
    assert r.status_code == 413 and "pixels" in r.json()["error"]["message"], r.text
    r = client.post("/v1/vlogs", headers=auth(), data={"theme": THEME, "style": STYLE},
                    files={"image": ("a.png", b"\x89PNG" + b"0" * (MAX_BODY + 10), "image/png")})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text

    def chunked_body():  # no Content-Length: the limit is enforced while the body streams in
        yield b'--bnd\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n\x89PNG'
        for _ in range(MAX_BODY // 50_000 + 2):
            yield b"0" * 50_000
    r = client.post("/v1/vlogs", headers={**auth(), "Content-Type": "multipart/form-data; boundary=bnd"},
                    content=chunked_body())
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text
    r = post_vlog(client, theme="x" * 501)
    assert r.status_code == 400 and r.json()["error"]["field"] == "theme", r.text
    r = post_vlog(client, style="y" * 101)
    assert r.status_code == 400 and r.json()["error"]["field"] == "style", r.text
    r = post_vlog(client, shots="99")
    assert r.status_code == 400 and r.json()["error"]["field"] == "shots", r.text
    r = client.post("/v1/vlogs", headers=auth(), data={"style": STYLE},
                    files={"image": ("a.png", EXAMPLE_IMAGE.read_bytes(), "image/png")})
    assert r.status_code == 400 and r.json()["error"]["field"] == "theme", r.text
    r = client.post("/v1/vlogs", headers=auth(), data={"theme": THEME, "style": STYLE},
                    files={"image": ("a.png", EXAMPLE_IMAGE.read_bytes(), "image/png"),
                           "voice": ("v.wav", b"not audio at all" * 8, "audio/wav")})
    assert r.status_code == 415 and r.json()["error"]["field"] == "voice", r.text


def test_ids_cannot_name_anything_outside_the_store(server):
    client, _ = server
    evil = "..%2F..%2Fetc%2Fpasswd"
    for path in (f"/v1/vlogs/{evil}", f"/v1/vlogs/{evil}/events", f"/v1/vlogs/{evil}/video",
                 f"/v1/plans/{evil}", f"/v1/vlogs/0123456789abcdef0123/files/{evil}",
                 "/v1/vlogs/0123456789abcdef0123/files/../../../../etc/passwd", "/v1/vlogs/..", "/v1/vlogs/ZZZ"):
        r = client.get(path, headers=auth())
        assert r.status_code in (400, 404), (path, r.status_code)
        assert "root:" not in r.text
    assert client.delete(f"/v1/vlogs/{evil}", headers=auth()).status_code in (400, 404)
    r = client.get("/v1/vlogs/0123456789abcdef0123", headers=auth())
    assert r.status_code == 404 and r.json()["error"]["field"] == "id"


def test_vlog_progress_events_in_order_and_a_playable_mp4(server, tmp_path):
    client, _ = server
    t0 = time.monotonic()
    r = post_vlog(client, seed=0)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"].endswith(f"/v1/vlogs/{job_id}")
    seen_plan_in_status = []

    def on_event(ev):  # the plan shows in GET as soon as MACF ends, long before the video
        if ev.get("unit") == "plan" and ev.get("event") == "done":
            view = client.get(f"/v1/vlogs/{job_id}", headers=auth()).json()
            seen_plan_in_status.append((view["status"], view["plan"]))

    events = sse_events(client, r.json()["events_url"], on_event)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0] == {**events[0], "type": "job", "status": "queued"}
    assert events[1]["status"] == "running" and events[-1]["status"] == "succeeded"
    units = [e for e in events if e["type"] == "unit"]
    expected = {"stylize", "plan", "music", "assemble"} | {f"{s}/{i}" for s in ("keyframe", "clip", "speech")
                                                          for i in range(SHOTS)}
    assert {e["unit"] for e in units if e["event"] == "done"} == expected
    order = {(e["unit"], e["event"]): i for i, e in enumerate(units)}
    for u in expected:
        assert order[(u, "started")] < order[(u, "done")], u
    assert order[("plan", "done")] < min(order[(f"keyframe/{i}", "started")] for i in range(SHOTS))
    assert order[("assemble", "started")] > max(order[(f"clip/{i}", "done")] for i in range(SHOTS))
    status, plan = seen_plan_in_status[0]
    assert status == "running" and len(plan["storyboards"]) == SHOTS and plan["story"]

    view = client.get(f"/v1/vlogs/{job_id}", headers=auth()).json()
    assert view["status"] == "succeeded" and view["progress"]["clip"] == {"total": SHOTS, "done": SHOTS,
                                                                          "running": 0, "failed": 0}
    keyframe_url = view["artifacts"]["keyframe/1"]["keyframe"]
    png = client.get(keyframe_url, headers=auth())
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert "reference" not in view["artifacts"]["stylize"]  # the upload itself is never served back

    video = client.get(view["video_url"], headers=auth())
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    mp4 = tmp_path / "vlog.mp4"
    mp4.write_bytes(video.content)
    info = probe(mp4)
    assert sorted(s["type"] for s in info["streams"]) == ["audio", "subtitle", "video"]
    assert info["duration"] > 0
    first_run = time.monotonic() - t0

    t1 = time.monotonic()  # the same request again: the stored result, at once
    again = post_vlog(client, seed=0)
    assert again.status_code == 200 and again.json()["status"] == "succeeded" and again.json()["id"] == job_id
    assert time.monotonic() - t1 < min(3.0, first_run / 2)
    replay = sse_events(client, f"/v1/vlogs/{job_id}/events")  # a late subscriber gets the whole story
    assert [e["seq"] for e in replay] == [e["seq"] for e in events] and replay[-1]["status"] == "succeeded"
    resumed = sse_events(client, f"/v1/vlogs/{job_id}/events", after=5)  # reconnect with Last-Event-ID
    assert [e["seq"] for e in resumed] == [e["seq"] for e in events][5:]


def test_plan_fast_path(server):
    client, _ = server
    r = post_vlog(client, path="/v1/plans", seed=11)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "plan" and body["status"] == "succeeded"
    assert set(body["units"]) == {"stylize", "plan"}
    assert len(body["plan"]["storyboards"]) == SHOTS and len(body["plan"]["monologues"]) == SHOTS
    plan_json = client.get(body["artifacts"]["plan"]["plan"], headers=auth())
    assert plan_json.status_code == 200 and "agents" in plan_json.json()


def test_queue_bound_answers_429_with_retry_after_and_delete_cancels(server):
    client, _ = server
    a = post_vlog(client, seed=101)
    b = post_vlog(client, seed=102)
    assert (a.status_code, b.status_code) == (202, 202), (a.text, b.text)
    c = post_vlog(client, seed=103)
    assert c.status_code == 429 and c.json()["error"]["code"] == "queue_full", c.text
    assert int(c.headers["retry-after"]) >= 1
    assert post_vlog(client, seed=102).json()["id"] == b.json()["id"]  # an identical request joins, not queues
    ids = [a.json()["id"], b.json()["id"]]
    for job_id in reversed(ids):
        r = client.delete(f"/v1/vlogs/{job_id}", headers=auth())
        assert r.status_code in (200, 202), r.text
    assert client.get(f"/v1/vlogs/{ids[1]}", headers=auth()).json()["status"] == "cancelled"  # it never ran
    events = sse_events(client, f"/v1/vlogs/{ids[0]}/events")
    assert events[-1]["status"] == "cancelled"
    assert not any(e.get("unit") == "assemble" for e in events)
    r = client.get(f"/v1/vlogs/{ids[0]}/video", headers=auth())
    assert r.status_code == 409 and r.json()["error"]["code"] == "cancelled"
    room = post_vlog(client, seed=103)  # room again
    assert room.status_code == 202, room.text
    client.delete(f"/v1/vlogs/{room.json()['id']}", headers=auth())


def test_rate_limit_is_per_token(server):
    client, _ = server
    codes = [client.get("/v1/vlogs/0123456789abcdef0123", headers=auth(OTHER_TOKEN)).status_code
             for _ in range(BURST + 15)]
    assert codes[0] == 404 and 429 in codes
    r = client.get("/v1/vlogs/0123456789abcdef0123", headers=auth(OTHER_TOKEN))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert client.get("/v1/vlogs/0123456789abcdef0123", headers=auth()).status_code == 404  # other token unaffected


def test_model_replica_killed_mid_request(server, tmp_path):
    """Kill the image-to-video replica while clips are being made: the vlog completes (its clip units retry on the
    replacement replica) or fails with a clear 5xx body; either way the next vlog succeeds."""
    import ray
    from ray import serve

    from personavlog.serve.deployments import replica_actor_names

    client, cfg = server
    victim_name = serve.get_deployment_handle("image_to_video", cfg.serve.app_name).info.remote().result()["name"]
    names = replica_actor_names(cfg.serve.app_name, "image_to_video")
    assert names, "no image_to_video replica found"
    victims = [ray.get_actor(n, namespace="serve") for n in names]
    killed = []

    def kill_on_first_clip(ev):
        if not killed and ev.get("stage") == "clip" and ev.get("event") == "started":
            for actor in victims:
                ray.kill(actor, no_restart=True)
            killed.append(ev["unit"])

    r = _post_when_queue_has_room(client, seed=203)
    events = sse_events(client, r.json()["events_url"], kill_on_first_clip)
    assert killed, "no clip started"
    final = events[-1]
    assert final["type"] == "job" and final["status"] in ("succeeded", "failed")
    if final["status"] == "failed":  # allowed, if the kill is the reason and the client is told so
        assert final["error"]["unit"].startswith("clip/"), final
        video = client.get(f"/v1/vlogs/{r.json()['id']}/video", headers=auth())
        assert 500 <= video.status_code < 600 and video.json()["error"]["message"], video.text
    else:  # clips after the kill ran on the replacement replica; a retried unit says why
        clip_actors = {a for e in events if e.get("stage") == "clip" and e.get("event") == "done"
                       for a in e["ran_on"]}
        assert clip_actors - {victim_name}, (victim_name, clip_actors)
        assert all("unavailable" in e["error"] for e in events if e.get("event") == "retrying"), events

    follow = _post_when_queue_has_room(client, seed=204)
    assert follow.status_code == 202
    events = sse_events(client, follow.json()["events_url"])
    assert events[-1]["status"] == "succeeded", events[-1]
    assert client.get(f"/v1/vlogs/{follow.json()['id']}/video", headers=auth()).status_code == 200
    assert client.get("/healthz").status_code == 200


def _post_when_queue_has_room(client: httpx.Client, seed: int, wait_s: float = 120) -> httpx.Response:
    deadline = time.monotonic() + wait_s
    while True:
        r = post_vlog(client, seed=seed)
        if r.status_code != 429 or time.monotonic() > deadline:
            assert r.status_code == 202, r.text
            return r
        time.sleep(float(r.headers.get("retry-after", 1)))


def test_store_holds_what_the_api_served(server):
    """The run store is the source of truth: every finished vlog has its manifest and mp4 on disk."""
    _, cfg = server
    done = [json.loads(p.read_text()) for p in Path(cfg.out).glob("*/manifest.json")]
    assert any(m["status"] == "succeeded" for m in done)
    for m in done:
        if m["status"] == "succeeded":
            assert (Path(cfg.out) / m["job_id"] / "vlog.mp4").is_file()
