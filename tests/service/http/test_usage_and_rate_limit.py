"""GET /usage (what a key's jobs cost) and the per-key rate limit on submissions (429 with
Retry-After and RateLimit headers, then recovery)."""

from __future__ import annotations

import time

from svc_helpers import bearer
from testkit import assert_problem, poll, submit


def test_usage_sums_the_keys_own_jobs_and_each_job_carries_its_usage(make_client, keyed, small_images):
    client = make_client(keyed)
    alice = bearer("alice")
    ids = [submit(client, small_images, headers=alice, seed=k).json()["id"] for k in range(2)]
    jobs = [poll(client, job_id, headers=alice) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in jobs)
    for job in jobs:
        usage = job["usage"]
        width, height = job["output"]["width"], job["output"]["height"]
        assert usage["output_pixels"] == width * height and usage["compute_s"] >= 0
        assert usage["unet_rows"] == sum(v for k, v in job["metrics"].items() if k.startswith("unet_rows_"))
    refused = client.post("/transfer", content=b"", headers=alice)  # not a job: not in the usage
    assert refused.status_code == 415

    report = client.get("/usage", headers=alice).json()
    assert (report["jobs"], report["succeeded"], report["unfinished"]) == (2, 2, 0)
    assert report["output_megapixels"] == round(sum(j["usage"]["output_pixels"] for j in jobs) / 1e6, 6)
    assert abs(report["compute_s"] - sum(j["usage"]["compute_s"] for j in jobs)) < 1e-6
    assert report["since"] is None and report["until"]
    assert client.get("/usage", headers=bearer("bob")).json()["jobs"] == 0, "another key's jobs"

    later = client.get("/usage", params={"since": jobs[1]["finished_at"]}, headers=alice).json()
    assert later["jobs"] == 0, "since is compared with the jobs' creation"
    first = client.get("/usage", params={"until": jobs[1]["created_at"]}, headers=alice).json()
    assert first["jobs"] == 1


def test_usage_refuses_a_period_that_ends_before_it_starts(make_client, keyed):
    client = make_client(keyed)
    params = {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}
    body = assert_problem(client.get("/usage", params=params, headers=bearer("alice")), 422)
    assert body["errors"][0]["field"] == "since" and "not before until" in body["detail"]
    body = assert_problem(client.get("/usage", params={"since": "yesterday"}, headers=bearer("alice")), 422)
    assert body["errors"][0]["field"] == "since"
    assert_problem(client.get("/usage"), 401)


def test_the_rate_limit_answers_429_with_its_headers_and_recovers(make_client, keyed, small_images):
    client = make_client(keyed.model_copy(update={"rate_limit_requests": 2, "rate_limit_window_s": 4}))
    alice = bearer("alice")
    # Start just after a window began, so the two accepted submissions fall in one window.
    while time.time() % 4 > 0.5:
        time.sleep(0.05)
    accepted = [submit(client, small_images, headers=alice, seed=k) for k in range(2)]
    assert [r.status_code for r in accepted] == [202, 202]
    assert [r.headers["ratelimit-remaining"] for r in accepted] == ["1", "0"]
    assert (
        accepted[0].headers["ratelimit-limit"] == "2" and accepted[0].headers["ratelimit-policy"] == "2;w=4"
    )
    refused = submit(client, small_images, headers=alice, seed=9)
    body = assert_problem(refused, 429)
    assert (
        body["type"] == "/problems/rate-limited"
        and "2 submissions in the current 4 s window" in body["detail"]
    )
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 4 and refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-reset"] == str(retry_after)
    assert submit(client, small_images, headers=bearer("bob")).status_code == 202, "bob has his own window"
    # Recovery: after Retry-After the key submits again (deadline wide for a busy machine).
    deadline = time.monotonic() + 30
    while True:
        time.sleep(retry_after)
        again = submit(client, small_images, headers=alice, seed=10)
        if again.status_code == 202 or time.monotonic() > deadline:
            break
        retry_after = int(again.headers["retry-after"])
    assert again.status_code == 202 and again.headers["ratelimit-limit"] == "2"
    assert client.get("/jobs", headers=alice).status_code == 200, "reads are not rate limited"
