"""The reference's (QwenLM/Self-Lengthen) constants are the defaults, and the shipped
real-model configs run it as its run.sh and run_collect_data.sh do."""

import pytest

from selflengthen_jax.config import ConfigError, check_context, from_dict, load_config

REAL = ["qwen2-7b-instruct", "llama3.1-8b-instruct"]


def test_defaults_are_the_references():
    p = from_dict({}).pipeline
    # llm_client.py: max_tokens=16384 for chat answers and raw completions alike
    assert p.max_new_tokens == p.instruct_max_new_tokens == 16384
    assert (p.judge, p.rules, p.downsample_by) == ("sample", "reference", "chars")
    assert p.instruct_batch == 500 and p.collect_round == 500  # step0 and run_collect_data.sh
    assert (p.instruct_tries, p.response_tries, p.extension_tries) == (10, 20, 20)
    assert (p.responses_per_instruction, p.extensions_per_response, p.extension_rounds) == (2, 2, 3)
    assert (p.min_extension_ratio, p.line_keep_prob) == (1.2, 0.8)
    assert (p.min_instruction_words, p.max_instruction_words) == (3, 500)
    assert (p.ngram_zh, p.ngram_en) == (13, 10)


@pytest.mark.parametrize("name", REAL)
def test_real_configs_run_the_references_schedule(name):
    cfg = load_config(name)
    p = cfg.pipeline
    assert p.max_new_tokens == p.instruct_max_new_tokens == cfg.engine.max_new_tokens == 16384
    assert p.finish_fraction == 0.95  # step1/step2 stop past 95% of their tasks
    assert (p.collect_count, p.collect_round) == (5000, 500)  # 10 extra rounds of 500
    assert (p.max_iter, p.instruct_count) == (3, 5000)


@pytest.mark.parametrize(("name", "positions"), [("qwen2-7b-instruct", 32768),
                                                 ("llama3.1-8b-instruct", 131072)])
def test_real_configs_fit_a_stage2_prompt_and_a_full_answer_in_the_models_positions(name, positions):
    cfg = load_config(name)
    check_context(cfg, positions)
    assert cfg.engine.max_prefill_len >= cfg.engine.max_new_tokens  # the whole text plus the kept part
    with pytest.raises(ConfigError, match="exceeds the model's max_position_embeddings=32768"):
        check_context(load_config(name, ["engine.max_prefill_len=16385"]), 32768)


@pytest.mark.parametrize("key,value", [("pipeline.rules", "loose"), ("pipeline.judge", "vote"),
                                       ("pipeline.downsample_by", "tokens"),
                                       ("eval.judge_prompt", "gpt4")])
def test_unknown_choices_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"{key}={value!r} is not allowed"):
        from_dict({key.split(".")[0]: {key.split(".")[1]: value}})
