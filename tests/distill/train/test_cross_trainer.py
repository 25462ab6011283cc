"""The cross-tokenizer recipe end to end on CPU: prepared shards with the teacher's tokenization,
a teacher and a student with different tokenizers, a few metered steps and a held-out evaluation."""

from __future__ import annotations

import math

import pytest

from distill.data.prepare import prepare
from distill.train.trainer import TrainConfig, train
from distill_testkit import STUDENT_SHAPE, TEACHER_SHAPE, TRAIN_TEXT, make_model_dir, text_documents, tiny_bpe, \
    write_config


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross-run")
    docs = text_documents(TRAIN_TEXT)
    (root / "data.txt").write_text("\n\n".join(docs[:150]) + "\n", encoding="utf-8")
    student_tok = tiny_bpe(docs[::-1], 120, sentencepiece_style=True, folder=root / "student-tok")
    teacher = make_model_dir(root / "teacher", {**TEACHER_SHAPE, "vocab_size": 304}, initializer_range=0.2)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (teacher / name).unlink(missing_ok=True)
    tiny_bpe(docs, 300, folder=teacher)
    write_config(root / "student.json", {**STUDENT_SHAPE, "vocab_size": len(student_tok)})
    result = prepare([root / "data.txt"], tokenizer_dir=root / "student-tok", out=root / "shards", workers=1,
                     teacher_tokenizer_dir=teacher)
    return root, result


def config(root, result, **overrides) -> TrainConfig:
    bins = [result.out / s["bin"]["name"] for s in result.manifest["shards"]]
    fields = dict(teacher_dir=root / "teacher", student_config=root / "student.json", data_files=bins,
                  manifest=result.manifest_path, student_tokenizer_dir=root / "student-tok", seq_len=16,
                  micro_batch=4, max_steps=3, lr=1e-3, warmup_steps=1, seed=0, device="cpu", progress=False,
                  checkpoint_every=100, out_dir=root / "out", flops_per_token=1.0e6, hard_label_weight=0.5,
                  eval_sequences=8, eval_every=3, eval_flops_per_token=4.0e5, eval_tokens_limit=1e6)
    fields.update(overrides)
    return TrainConfig.parse(fields)


@pytest.mark.slow
def test_a_cross_tokenizer_run_trains_meters_student_tokens_and_evaluates_on_aligned_positions(project):
    root, result = project
    cfg = config(root, result)
    steps: list[dict] = []
    outcome = train(cfg, on_step=steps.append)
    assert outcome.steps == 3
    assert outcome.tokens == 3 * 4 * 16                      # the student's tokens are what is metered
    assert outcome.eval_flops > 0 and outcome.eval_flops % 4.0e5 == 0        # the evaluation is metered too
    assert outcome.flops_used == pytest.approx(1.0e6 * outcome.tokens + outcome.eval_flops)
    assert all(math.isfinite(s["loss"]) for s in steps if s.get("loss") is not None)
    assert outcome.eval is not None and outcome.eval["tokens"] > 0   # aligned held-out positions
    assert {"ce", "aligned_divergence", "top1_agreement"} <= set(outcome.eval)
    assert 0 <= outcome.eval["top1_agreement"] <= 1 and outcome.eval["aligned_divergence"] > 0
    # held out by document, as the logit recipe; one evaluation metered at its held rows x seq_len
    assert outcome.eval_split["by"] == "document" and 0 < outcome.eval_split["rows"] <= 8
    assert outcome.eval_flops == outcome.eval_split["rows"] * 16 * 4.0e5


def test_cached_teacher_logits_are_refused_for_a_cross_tokenizer_run(project, tmp_path):
    root, result = project
    from audit.errors import InputError

    cfg = config(root, result, teacher_source="cached", teacher_cache_dir=tmp_path / "cache", flops_per_token=None,
                 eval_sequences=0, eval_every=None)
    with pytest.raises(InputError, match="teacher online"):
        train(cfg)


def test_a_sharded_teacher_is_refused_for_a_cross_tokenizer_run(project):
    root, result = project
    from audit.errors import InputError

    with pytest.raises(InputError, match="sharded teacher"):
        train(config(root, result, shard_teacher=True))
