"""launch.generate: JSONL prompts in, completions out, resumable; bad input fails fast
with the file and line, before any model is loaded."""

import pytest

from cli_fixtures import ENGINE, read_jsonl, run_main, shared_chat_checkpoint, write_jsonl
from launch.generate import main
from selflengthen_jax.checkpoint.tokenizer import chat_prompt, load_tokenizer

FIELDS = {"response", "response_token_ids", "prompt_tokens", "completion_tokens", "finish_reason"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return shared_chat_checkpoint(tmp_path_factory)


def test_generates_chat_and_raw_prompts_and_skips_ids_already_written(checkpoint, tmp_path, capsys):
    text = "The quick brown fox"
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"id": "done", "prompt": "already answered"},
        {"id": "chat", "prompt": text, "topic": "fox"},
        {"prompt": text, "raw": True},                      # no id: its line number, "3"
        {"id": 7, "messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": text}]},
    ])
    out = write_jsonl(tmp_path / "out.jsonl", [{"id": "done", "response": "kept as is"}])

    code, stdout, _ = run_main(main, ["--model", checkpoint, "--input", prompts, "--output", out,
                                      "--greedy", "--max-new-tokens", "6", *ENGINE], capsys)

    assert code == 0 and "generated 3, skipped 1" in stdout
    records = {r["id"]: r for r in read_jsonl(out)}
    assert set(records) == {"done", "chat", "3", "7"}
    assert records["done"] == {"id": "done", "response": "kept as is"}
    for rid in ("chat", "3", "7"):
        r = records[rid]
        assert FIELDS <= set(r)
        assert r["completion_tokens"] == len(r["response_token_ids"]) <= 6
        assert r["finish_reason"] in {"eos", "stop", "length"}
    assert records["chat"]["topic"] == "fox"                 # input fields are kept
    tok = load_tokenizer(checkpoint)
    user = [{"role": "user", "content": text}]
    assert records["3"]["prompt_tokens"] == len(tok.encode(text, add_special_tokens=False))
    chat_ids = tok.encode(chat_prompt(tok, user), add_special_tokens=False)
    assert records["chat"]["prompt_tokens"] == len(chat_ids)
    assert records["7"]["prompt_tokens"] > records["chat"]["prompt_tokens"]  # system turn too


def test_nothing_left_to_do_loads_no_model(tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "hi"}])
    out = write_jsonl(tmp_path / "out.jsonl", [{"id": "a", "response": "done"}])
    code, stdout, _ = run_main(main, ["--model", tmp_path / "no-such-model", "--input", prompts,
                                      "--output", out], capsys)
    assert code == 0 and "nothing to generate" in stdout


BAD_LINES = [
    ('{"prompt": "unterminated', "invalid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"text": "wrong key"}', "exactly one of 'prompt' or 'messages'"),
    ('{"prompt": "x", "messages": [{"role": "user", "content": "x"}]}', "exactly one of"),
    ('{"prompt": ""}', "'prompt' must be a non-empty string"),
    ('{"messages": [{"role": "user"}]}', "messages[0]"),
    ('{"messages": [{"role": "user", "content": "x"}], "raw": true}', "'raw' applies to 'prompt' only"),
    ('{"prompt": "x", "raw": "yes"}', "'raw' must be true or false"),
    ('{"id": 1.5, "prompt": "x"}', "'id' must be"),
    ('{"id": "a", "prompt": "again"}', "duplicate id 'a'"),
]


@pytest.mark.parametrize("line,message", BAD_LINES)
def test_a_bad_line_is_named_before_any_model_is_loaded(tmp_path, capsys, line, message):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "fine"}, "", line])
    out = tmp_path / "out.jsonl"
    code, stdout, stderr = run_main(main, ["--model", tmp_path / "no-such-model", "--input", prompts,
                                           "--output", out], capsys)
    assert code == 2
    assert f"{prompts}:3" in stderr and message in stderr     # blank line 2 still counts
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["--input", "{missing}"], "file not found"),
    (["--input", "{prompts}", "sampling.tempreature=0.5"], "unknown config key 'sampling.tempreature'"),
    (["--input", "{prompts}", "--max-new-tokens", "0"], "sampling.max_new_tokens=0"),
    (["--input", "{prompts}"], "model directory"),
])
def test_bad_paths_and_settings_exit_2_with_one_message(tmp_path, capsys, argv, message):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    argv = [a.format(missing=tmp_path / "missing.jsonl", prompts=prompts) for a in argv]
    code, _, stderr = run_main(main, [*argv, "--output", tmp_path / "o.jsonl",
                                      "--model", tmp_path / "no-such-model"], capsys)
    assert code == 2 and message in stderr and "Traceback" not in stderr
