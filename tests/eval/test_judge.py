"""LLM-as-judge: the prompt, lenient-but-strict parsing, retries, failures, and both backends
(a fake engine, and a fake OpenAI-compatible server on 127.0.0.1)."""

import contextlib
import http.server
import json
import socket
import threading

import pytest

from selflengthen_jax.eval.judge import (
    DIMENSIONS,
    AskError,
    engine_asker,
    judge_all,
    judge_messages,
    mean_scores,
    openai_asker,
    parse_judgement,
)
from selflengthen_jax.sampling.request import Completion

GOOD = {"relevance": 8, "coherence": 7, "accuracy": 9, "consistency": 8, "clarity": 7,
        "creativity": 6, "engagement": 7}
ITEMS = [{"query": "写一篇散文。", "response": "春天来了。", "language": "zh"},
         {"query": "Write a story.", "response": "Once upon a time.", "language": "en"}]


def test_the_reference_prompt_asks_for_an_analysis_then_strict_scores_in_json():
    # eval/quality_eval.md: seven dimensions 1-10, length left aside, a brief analysis
    # first, one JSON object, "as strict as possible"; in English for every language.
    for item in ITEMS:
        [message] = judge_messages(item["query"], item["response"], item["language"])
        content = message["content"]
        assert message["role"] == "user"
        assert all(f"{d.capitalize()}: " in content for d in DIMENSIONS)
        assert item["query"] in content and item["response"] in content
        assert content.index(item["query"]) < content.index(item["response"])
        assert "Leave aside whether the answer meets any length" in content
        assert "Start with a short analysis" in content and "as strictly as you can" in content
        assert '{"Analysis": "...", "Relevance": <score>,' in content
    assert judge_messages("q", "r", "zh") == judge_messages("q", "r", "en")


def test_a_reference_shaped_answer_parses():
    answer = json.dumps({"Analysis": "Vivid {but} uneven.", **{k.capitalize(): v for k, v in GOOD.items()}})
    assert parse_judgement(answer) == GOOD


def test_our_dimension_prompt_stays_an_option():
    for item in ITEMS:
        [message] = judge_messages(item["query"], item["response"], item["language"], "dimensions")
        assert message["role"] == "user"
        assert all(d in message["content"] for d in DIMENSIONS)
        assert item["query"] in message["content"] and item["response"] in message["content"]
    assert "length" in judge_messages("q", "r", "en", "dimensions")[0]["content"]
    assert "长度" in judge_messages("q", "r", "zh", "dimensions")[0]["content"]
    with pytest.raises(ValueError, match="unknown judge prompt 'other'"):
        judge_messages("q", "r", "en", "other")


@pytest.mark.parametrize("text", [
    json.dumps(GOOD),
    "```json\n" + json.dumps(GOOD, indent=2) + "\n```",
    "Here is my assessment:\n" + json.dumps(GOOD) + "\nOverall a solid answer.",
    json.dumps({k.capitalize(): v for k, v in GOOD.items()} | {"comment": "fine"}),
])
def test_parse_accepts_wrapped_answers(text):
    assert parse_judgement(text) == GOOD


@pytest.mark.parametrize("text", [
    json.dumps({k: v for k, v in GOOD.items() if k != "creativity"}),  # missing field
    json.dumps(GOOD | {"clarity": 11}),                                 # out of range
    json.dumps(GOOD | {"clarity": 0}),
    json.dumps(GOOD | {"clarity": 7.5}),                                # not an int
    json.dumps(GOOD | {"clarity": "7"}),
    json.dumps(GOOD | {"clarity": True}),
    "The answer is good; I would give it an 8 overall.",                # prose only
    "{relevance: 8}",                                                   # not JSON
    "[1, 2, 3]",
])
def test_parse_rejects_incomplete_or_invalid(text):
    assert parse_judgement(text) is None


def test_judge_all_retries_with_a_repair_turn_until_parsable():
    seen = []

    def ask(batch):
        seen.append(batch)
        return ["I liked it." if len(m) == 1 else json.dumps(GOOD) for m in batch]

    scores, stats = judge_all(ITEMS, ask)
    assert scores == [GOOD, GOOD]
    assert (stats["unparsable"], stats["retries"], stats["scored"], stats["failed"]) == (2, 2, 2, [])
    assert len(seen) == 2 and [m[1]["content"] for m in seen[1]] == ["I liked it.", "I liked it."]


def test_items_that_never_parse_fail_without_a_score():
    def ask(batch):
        return [json.dumps(GOOD) if "Write a story." in m[0]["content"] else "no idea" for m in batch]

    scores, stats = judge_all(ITEMS, ask, max_retries=2)
    assert scores == [None, GOOD]
    assert stats["failed"] == [0] and stats["scored"] == 1
    assert stats["unparsable"] == 3 and stats["retries"] == 2
    assert mean_scores(scores) == {**{d: float(v) for d, v in GOOD.items()},
                                   "overall": pytest.approx(sum(GOOD.values()) / 7)}
    assert mean_scores([None]) == {}


def test_engine_asker_sends_greedy_chat_requests_in_order():
    class FakeEngine:
        def generate(self, requests):
            self.requests = list(requests)
            return [Completion(id=r.id, text=f"answer {r.messages[0]['content']}", token_ids=(1,),
                               prompt_tokens=3, finish_reason="eos") for r in requests]

    engine = FakeEngine()
    answers = engine_asker(engine)([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]])
    assert answers == ["answer a", "answer b"]
    assert all(r.params.greedy for r in engine.requests)
    assert len({r.id for r in engine.requests}) == 2


@contextlib.contextmanager
def fake_openai_server(reply):
    """Serve POST /v1/chat/completions on 127.0.0.1; `reply(body) -> (status, payload)`."""
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, dict(self.headers), body))
            status, payload = reply(body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _chat(content):
    return 200, {"choices": [{"message": {"role": "assistant", "content": content}}]}


def test_openai_backend_malformed_first_then_valid():
    def reply(body):  # first turn: prose; after the repair turn: valid JSON
        return _chat("Nice work!" if len(body["messages"]) == 1 else "```json\n" + json.dumps(GOOD) + "\n```")

    with fake_openai_server(reply) as (url, received):
        scores, stats = judge_all(ITEMS, openai_asker(url, "judge-model", api_key="k", workers=2))
    assert scores == [GOOD, GOOD]
    assert (stats["unparsable"], stats["retries"], stats["failed"], stats["errors"]) == (2, 2, [], 0)
    assert len(received) == 4
    path, headers, body = received[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer k"
    assert body["model"] == "judge-model" and body["temperature"] == 0.0


def test_openai_backend_that_always_fails_leaves_items_failed():
    with fake_openai_server(lambda body: (500, {"error": "overloaded"})) as (url, received):
        ask = openai_asker(url, "judge-model", workers=1, attempts=2, backoff=0.001)
        with pytest.raises(AskError, match="HTTP 500"):
            ask([[{"role": "user", "content": "hi"}]])
        scores, stats = judge_all(ITEMS[:1], ask, max_retries=3)
    assert scores == [None]
    assert stats["failed"] == [0] and stats["scored"] == 0
    assert stats["errors"] == 4 and "HTTP 500" in stats["last_error"]
    assert "gave up after 2 attempts" in stats["last_error"]
    assert len(received) == 2 * (1 + 4)  # every request tried twice
    assert "Authorization" not in received[0][1]


def test_openai_backend_reports_bad_replies_and_unreachable_servers():
    with fake_openai_server(lambda body: (200, {"choices": []})) as (url, _):
        with pytest.raises(AskError, match="choices"):
            openai_asker(url, "m")([[{"role": "user", "content": "hi"}]])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AskError, match="cannot reach"):
        openai_asker(f"http://127.0.0.1:{port}", "m", timeout=2, attempts=2, backoff=0.001)(
            [[{"role": "user", "content": "hi"}]])


def test_openai_backend_backs_off_on_429_and_5xx_then_succeeds():
    calls = []

    def reply(body):  # per conversation: 429, then 503, then an answer
        key = body["messages"][0]["content"]
        calls.append(key)
        n = calls.count(key)
        return (429, {"error": "slow down"}) if n == 1 else (503, {"error": "busy"}) if n == 2 else \
            _chat(json.dumps(GOOD))

    with fake_openai_server(reply) as (url, received):
        scores, stats = judge_all(ITEMS, openai_asker(url, "judge-model", workers=2, backoff=0.001))
    assert scores == [GOOD, GOOD] and stats["errors"] == 0
    assert len(received) == 6


def test_a_client_error_is_not_retried():
    with fake_openai_server(lambda body: (400, {"error": "bad request"})) as (url, received):
        with pytest.raises(AskError, match="HTTP 400"):
            openai_asker(url, "m", backoff=0.001)([[{"role": "user", "content": "hi"}]])
    assert len(received) == 1


def test_answers_are_saved_as_they_arrive_and_a_rerun_asks_only_for_the_rest(tmp_path):
    """One conversation keeps failing: the others' answers are on disk already, and a
    second asker over the same file (a rerun) sends only the missing request."""
    saved = tmp_path / "judge_answers.jsonl"
    down = {"Write a story.": True}

    def reply(body):
        content = body["messages"][0]["content"]
        if any(q in content and down.get(q) for q in down):
            return 500, {"error": "down"}
        return _chat(json.dumps(GOOD))

    with fake_openai_server(reply) as (url, received):
        ask = openai_asker(url, "judge-model", workers=2, attempts=2, backoff=0.001, answers=saved)
        scores, stats = judge_all(ITEMS, ask, max_retries=0)
        assert scores == [GOOD, None] and stats["errors"] == 1 and "1 of 2 requests failed" in stats["last_error"]
        assert len(saved.read_text().splitlines()) == 1  # the answer that arrived is kept
        first = len(received)
        down["Write a story."] = False
        rerun = openai_asker(url, "judge-model", workers=2, answers=saved)
        scores, stats = judge_all(ITEMS, rerun)
        assert scores == [GOOD, GOOD] and stats["errors"] == 0
        assert len(received) == first + 1  # only the missing one was asked
    assert len(saved.read_text().splitlines()) == 2
    assert all(set(json.loads(line)) == {"id", "answer"} for line in saved.read_text().splitlines())


def test_saved_answers_are_keyed_by_the_exact_prompt_and_the_judge_model(tmp_path):
    """Switching eval.judge_prompt (or the judge model) and rerunning over the same
    judge_answers.jsonl asks again; rerunning the same prompt and model asks nothing."""
    saved = tmp_path / "judge_answers.jsonl"
    with fake_openai_server(lambda body: _chat(json.dumps(GOOD))) as (url, received):
        def rerun(prompt, model="judge-model"):
            before = len(received)
            scores, _ = judge_all(ITEMS, openai_asker(url, model, answers=saved), prompt=prompt)
            assert scores == [GOOD, GOOD]
            return [body["messages"][0]["content"] for _, _, body in received[before:]]

        reference = rerun("reference")
        assert len(reference) == 2 and rerun("reference") == []
        dimensions = rerun("dimensions")
        assert len(dimensions) == 2 and not set(dimensions) & set(reference)  # asked anew, other text
        assert rerun("dimensions") == [] and rerun("reference") == []  # both kept side by side
        assert len(rerun("reference", model="another-judge")) == 2
    assert len(saved.read_text().splitlines()) == 6
