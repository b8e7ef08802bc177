"""LLM-as-judge quality scores for long answers (Self-Lengthen's quality check).

A judge model rates an answer 1-10 on seven dimensions, explicitly ignoring its
length (length is scored separately in `scores`). Two prompts: `reference` (the
default) asks what the reference's eval/quality_eval.md asks, in our words, in English
for both languages: a brief analysis first, then the seven scores in one JSON object,
as strict as possible; `dimensions` is this project's own, in the answer's language
with a hint per dimension and scores only. Judges are chatty, so parsing is
lenient about wrapping (a ```json fence, prose around the object) and strict about
content: all seven dimensions, each an integer 1-10, or the answer is unusable.
Unusable answers are asked again, with a short repair turn so that even a greedy
judge can change its answer; items that never yield a usable answer get no score
and are reported as failed instead of being silently averaged in.

`ask` is any batch function messages-lists -> texts: `engine_asker` wraps the local
generation engine, `openai_asker` any OpenAI-compatible chat endpoint (with backoff on
429/5xx, and answers saved as they arrive so that nothing answered is asked twice).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Sequence

import tenacity

from selflengthen_jax.pipeline.store import JsonlStore
from selflengthen_jax.pipeline.text import check_language
from selflengthen_jax.sampling.request import Request, SamplingParams

DIMENSIONS: tuple[str, ...] = (
    "relevance", "coherence", "accuracy", "consistency", "clarity", "creativity", "engagement",
)
Messages = list[dict]
Ask = Callable[[Sequence[Messages]], list[str]]

_ZH_NAMES = {"relevance": "相关性", "coherence": "连贯性", "accuracy": "准确性", "consistency": "一致性",
             "clarity": "清晰度", "creativity": "创造性", "engagement": "吸引力"}
_EN_HINTS = {
    "relevance": "does it address the request and all of its parts",
    "coherence": "is it logically organised, with ideas that connect",
    "accuracy": "are its facts, reasoning and details correct",
    "consistency": "does it stay consistent in facts, tone and style from start to end",
    "clarity": "is it easy to read and understand",
    "creativity": "does it bring original ideas or expression",
    "engagement": "would a reader want to keep reading",
}
_ZH_HINTS = {
    "relevance": "是否回应了指令及其全部要求",
    "coherence": "结构是否有条理，前后衔接是否自然",
    "accuracy": "事实、推理和细节是否正确",
    "consistency": "从头到尾的事实、语气和风格是否一致",
    "clarity": "表达是否清楚易懂",
    "creativity": "是否有新颖的想法或表达",
    "engagement": "是否能吸引读者读下去",
}
_EXAMPLE = json.dumps({d: 7 for d in DIMENSIONS})
_REPAIR = {
    "zh": f"无法解析你的回答。请只输出一个 JSON 对象，包含全部七个键，每个值都是 1 到 10 的整数，例如：{_EXAMPLE}",
    "en": f"Your answer could not be parsed. Reply with only a JSON object holding all seven keys, "
          f"each an integer from 1 to 10, for example: {_EXAMPLE}",
}


PROMPTS: tuple[str, ...] = ("reference", "dimensions")
_REFERENCE_CRITERIA = {
    "relevance": "the answer responds directly to the writing request and stays on it",
    "coherence": "the answer is organised logically and is easy to follow",
    "accuracy": "what the answer states is factually correct and free of errors",
    "consistency": "the answer keeps one tone and style from beginning to end",
    "clarity": "the answer is clear and easy to understand, in concise and precise language",
    "creativity": "the answer shows original and imaginative thinking",
    "engagement": "the answer holds the reader's attention and keeps their interest",
}
_REFERENCE_FORM = ('{"Analysis": "...", '
                   + ", ".join(f'"{d.capitalize()}": <score>' for d in DIMENSIONS) + "}")


class AskError(RuntimeError):
    """A judge backend could not produce answers (HTTP error, unreachable, bad reply).

    `answers`, when set, holds the batch's answers that did arrive (None where not), so
    one failing request does not cost the others.
    """

    def __init__(self, message: str, answers: list[str | None] | None = None):
        super().__init__(message)
        self.answers = answers


def reference_judge_messages(query: str, response: str) -> Messages:
    """The reference's rating request, in our words: criteria, the request and the
    answer, then an analysis before the scores, strictly, in one JSON object."""
    criteria = "\n\n".join(f"{d.capitalize()}: {_REFERENCE_CRITERIA[d]}." for d in DIMENSIONS)
    prompt = (
        "You are a demanding reviewer of long-form writing. Rate an AI assistant's answer to a "
        "user's request for a long text on each of the seven dimensions below, from 1 (fits the "
        f"dimension worst) to 10 (fits it best):\n\n{criteria}\n\n"
        f"<request>\n\n{query}\n\n</request>\n\n<answer>\n\n{response}\n\n</answer>\n\n"
        "Leave aside whether the answer meets any length the request asks for. Start with a short "
        "analysis of the answer's quality, then score each dimension. Reply with one JSON object "
        f"and nothing else, in this form: {_REFERENCE_FORM}, where every score is an integer from "
        "1 to 10. Spread your scores so that answers can be told apart, and judge as strictly as "
        "you can.")
    return [{"role": "user", "content": prompt}]


def judge_messages(query: str, response: str, language: str, prompt: str = "reference") -> Messages:
    """The rating prompt for one (query, response): the reference's (English whatever
    the language) or, with prompt="dimensions", ours in the answer's language."""
    check_language(language)
    if prompt not in PROMPTS:
        raise ValueError(f"unknown judge prompt {prompt!r}; expected one of {PROMPTS}")
    if prompt == "reference":
        return reference_judge_messages(query, response)
    if language == "zh":
        criteria = "\n".join(f"- {d}（{_ZH_NAMES[d]}）：{_ZH_HINTS[d]}" for d in DIMENSIONS)
        prompt = (
            "请作为公正的评审，评价下面这篇回答的质量。\n"
            f"按以下七个维度分别打 1 到 10 的整数分（10 分最好）：\n{criteria}\n"
            "不要考虑回答的长度：篇幅长短既不加分也不扣分。\n"
            f"只输出一个 JSON 对象，键使用上面括号前的英文名，例如：{_EXAMPLE}\n\n"
            f"【指令】\n{query}\n\n【回答】\n{response}")
        return [{"role": "user", "content": prompt}]
    criteria = "\n".join(f"- {d}: {_EN_HINTS[d]}" for d in DIMENSIONS)
    prompt = (
        "Act as an impartial reviewer and rate the quality of the answer below.\n"
        f"Give an integer score from 1 to 10 (10 is best) on each of these seven dimensions:\n{criteria}\n"
        "Do not take the answer's length into account: being long or short neither adds nor costs points.\n"
        f"Output only a JSON object keyed by the dimension names, for example: {_EXAMPLE}\n\n"
        f"[Instruction]\n{query}\n\n[Answer]\n{response}")
    return [{"role": "user", "content": prompt}]


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def parse_judgement(text: str) -> dict[str, int] | None:
    """The seven scores from a judge answer, or None if any is missing or not an int 1-10.

    Accepts a ```json fence or an object surrounded by prose; key case is ignored.
    """
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        data = json.loads(body[start:end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    data = {str(k).strip().lower(): v for k, v in data.items()}
    scores = {}
    for dim in DIMENSIONS:
        value = data.get(dim)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
            return None
        scores[dim] = value
    return scores


def judge_all(
    items: Sequence[Mapping], ask: Ask, max_retries: int = 3, prompt: str = "reference",
) -> tuple[list[dict[str, int] | None], dict]:
    """Scores for items with `query`, `response`, `language`, in input order.

    Unusable answers are re-asked up to `max_retries` times (all pending items in one
    batch per round). A failed item's score is None and its index is listed in
    stats["failed"]. stats counts `unparsable` answers, `retries` (re-asked
    requests), and `errors` (rounds where `ask` raised AskError; its unanswered items
    stay pending), with the last error's text in `last_error`.
    """
    conversations = [judge_messages(it["query"], it["response"], it["language"], prompt) for it in items]
    scores: list[dict[str, int] | None] = [None] * len(items)
    stats: dict = {"items": len(items), "unparsable": 0, "retries": 0, "errors": 0, "last_error": None}
    pending = list(range(len(items)))
    for attempt in range(max_retries + 1):
        if not pending:
            break
        if attempt:
            stats["retries"] += len(pending)
        try:
            answers: list[str | None] = list(ask([conversations[i] for i in pending]))
        except AskError as err:
            stats["errors"] += 1
            stats["last_error"] = str(err)
            if err.answers is None:
                continue
            answers = err.answers
        if len(answers) != len(pending):
            raise ValueError(f"ask returned {len(answers)} answers for {len(pending)} conversations")
        still = []
        for i, answer in zip(pending, answers):
            if answer is None:  # its request failed: ask again next round, unchanged
                still.append(i)
                continue
            scores[i] = parse_judgement(answer)
            if scores[i] is None:
                stats["unparsable"] += 1
                conversations[i] = [*conversations[i], {"role": "assistant", "content": answer},
                                    {"role": "user", "content": _REPAIR[items[i]["language"]]}]
                still.append(i)
        pending = still
    stats["failed"] = pending
    stats["scored"] = len(items) - len(pending)
    return scores, stats


def mean_scores(scores: Sequence[dict[str, int] | None]) -> dict[str, float]:
    """Per-dimension means over scored items (failed ones excluded), plus `overall`."""
    scored = [s for s in scores if s is not None]
    if not scored:
        return {}
    means = {d: sum(s[d] for s in scored) / len(scored) for d in DIMENSIONS}
    return {**means, "overall": sum(means.values()) / len(DIMENSIONS)}


def engine_asker(engine, params: SamplingParams | None = None, adapter: str = "base") -> Ask:
    """`ask` backed by the local engine (`generate(requests) -> completions`), greedy by default."""
    params = params or SamplingParams(greedy=True, max_new_tokens=512, stop=())

    def ask(batch: Sequence[Messages]) -> list[str]:
        requests = [Request(id=f"judge-{i}", params=params, messages=m, adapter=adapter)
                    for i, m in enumerate(batch)]
        return [c.text for c in engine.generate(requests)]

    return ask


class _Transient(AskError):
    """Worth asking again after a pause: HTTP 429 or 5xx, a timeout, a dropped connection."""

    def __init__(self, message: str, retry_after: float = 0.0):
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(err: urllib.error.HTTPError) -> float:
    """The server's Retry-After in seconds (0 when absent or an HTTP date)."""
    try:
        return max(0.0, float(err.headers.get("Retry-After", 0)))
    except (TypeError, ValueError):
        return 0.0


def _post(url: str, headers: dict[str, str], body: bytes, timeout: float) -> str:
    """One chat request; the content of choices[0].message, or AskError (_Transient if
    the same request may succeed later)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            payload = json.loads(reply.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")[:300]
        message = f"{url} answered HTTP {err.code}: {detail}"
        if err.code == 429 or err.code >= 500:
            raise _Transient(message, _retry_after(err)) from err
        raise AskError(message) from err
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise _Transient(f"cannot reach {url}: {getattr(err, 'reason', err)}") from err
    except json.JSONDecodeError as err:
        raise AskError(f"{url} sent a reply that is not JSON: {err}") from err
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        raise AskError(f"{url} reply has no choices[0].message.content: {str(payload)[:300]}")
    return content


class AnswerStore:
    """Judge answers kept as they arrive, one JSONL record per request, keyed by a hash
    of (model, max_tokens, messages). The messages are exactly what is sent, so the key
    changes with the judge prompt (eval.judge_prompt), the item and any repair turn: a
    rerun, or the next retry round, sends only the requests that have no answer yet,
    and a rerun with another prompt or judge model asks anew. Appends are atomic per
    record (see JsonlStore)."""

    FIELDS = ("id", "answer")

    def __init__(self, path: str | Path, model: str, max_tokens: int):
        self.store = JsonlStore.open(path, fields=self.FIELDS)
        self.model, self.max_tokens = model, max_tokens
        self.answers = {r["id"]: r["answer"] for r in self.store.records()}
        self.lock = threading.Lock()

    def key(self, messages: Messages) -> str:
        identity = json.dumps([self.model, self.max_tokens, messages], ensure_ascii=False, sort_keys=True)
        return hashlib.blake2b(identity.encode("utf-8"), digest_size=16).hexdigest()

    def get(self, messages: Messages) -> str | None:
        return self.answers.get(self.key(messages))

    def flush(self) -> None:
        with self.lock:
            self.store.flush()

    def put(self, messages: Messages, answer: str) -> None:
        key = self.key(messages)
        with self.lock:
            if key not in self.answers:
                self.store.append({"id": key, "answer": answer})
                self.answers[key] = answer


def openai_asker(
    base_url: str,
    model: str,
    api_key: str | None = None,
    timeout: float = 300.0,
    max_tokens: int = 512,
    workers: int = 4,
    attempts: int = 6,
    backoff: float = 1.0,
    answers: str | Path | None = None,
) -> Ask:
    """`ask` backed by an OpenAI-compatible server: POST {base_url}/chat/completions
    (temperature 0), `workers` requests in flight.

    HTTP 429, 5xx, timeouts and refused connections are retried up to `attempts` times
    per request with exponential backoff (`backoff` seconds, doubling, at most 60; a
    longer Retry-After is honoured). With `answers` (a JSONL path), each answer is saved
    the moment it arrives and reused on later calls and reruns. A batch where some
    requests still fail raises AskError naming the URL after the others finished (their
    answers ride on the error, and are saved); so do 4xx errors and replies without
    choices[0].message.content.
    """
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    store = AnswerStore(answers, model, max_tokens) if answers else None
    exponential = tenacity.wait_exponential(multiplier=backoff, max=60.0)

    def pause(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return max(exponential(state), min(getattr(error, "retry_after", 0.0), 60.0))

    @tenacity.retry(retry=tenacity.retry_if_exception_type(_Transient), wait=pause,
                    stop=tenacity.stop_after_attempt(max(1, attempts)), reraise=True)
    def send(body: bytes) -> str:
        return _post(url, headers, body, timeout)

    def one(messages: Messages) -> str:
        body = json.dumps({"model": model, "messages": messages, "temperature": 0.0,
                           "max_tokens": max_tokens}).encode()
        try:
            answer = send(body)
        except _Transient as err:
            raise AskError(f"{err} (gave up after {max(1, attempts)} attempts)") from err
        if store is not None:
            store.put(messages, answer)
        return answer

    def ask(batch: Sequence[Messages]) -> list[str]:
        out: list[str | None] = [store.get(m) if store else None for m in batch]
        todo = [i for i, text in enumerate(out) if text is None]
        failed: list[AskError] = []
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                futures = {pool.submit(one, batch[i]): i for i in todo}
                for future in concurrent.futures.as_completed(futures):
                    try:
                        out[futures[future]] = future.result()
                    except AskError as err:
                        failed.append(err)
        finally:
            if store is not None:
                store.flush()  # a bucket store's last batch of answers, also when stopped
        if failed:
            kept = " (the others are saved)" if store is not None and len(failed) < len(todo) else ""
            raise AskError(f"{len(failed)} of {len(todo)} requests failed{kept}; last: {failed[-1]}", out)
        return out  # type: ignore[return-value]

    return ask
