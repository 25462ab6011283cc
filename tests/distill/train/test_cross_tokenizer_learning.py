"""It learns across tokenizers: a teacher with a byte-level BPE vocabulary (400 entries) teaches a
student with a SentencePiece-style vocabulary (120 entries, trained on other documents), on the
same text aligned by characters. After the same steps from the same initialisation, the
distilled student agrees with the teacher's most likely next token, on held-out aligned
positions, far more often than an untrained student and more often than a student trained on
its own next tokens alone (cross-entropy).

Why the comparison must hold: the matched-token KL term pulls the student's distribution over
the tokens both vocabularies spell alike toward the teacher's at every aligned position, which
is exactly what top-1 agreement reads; cross-entropy pulls it toward one sampled next token
whose optimum is the data's distribution, not the teacher's.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.data.cross_tokenized import encode_documents
from distill.train.cross_tokenizer import (CrossRows, VocabularyMap, aligned_agreement, cross_tokenizer_loss,
                                           teacher_len_for)
from distill_testkit import HELDOUT_TEXT, TRAIN_TEXT, llama_config, text_documents, tiny_bpe

SEQ_LEN = 32


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _hidden(model, ids):
    return model.model(input_ids=ids, use_cache=False).last_hidden_state


def _model(shape: dict, vocab: int, seed: int):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config({**shape, "vocab_size": vocab}))


def _train_teacher(teacher, stream, row: int, steps: int) -> None:
    n = len(stream.ids) // (row + 1)
    rows = torch.from_numpy(stream.ids[:n * (row + 1)]).view(n, row + 1)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = rows[torch.randint(0, n, (32,), generator=g)]
        logits = teacher(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    teacher.eval().requires_grad_(False)


def _train_student(rows, teacher, vmap, vocab: int, *, hard_label_weight: float, steps: int):
    student = _model(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1), vocab, seed=1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(5)
    losses = []
    for _ in range(steps):
        inputs, labels, teacher_inputs, pairs = rows.rows(torch.randint(0, len(rows), (16,), generator=g))
        with torch.no_grad():
            teacher_hidden = _hidden(teacher, teacher_inputs)
        loss = cross_tokenizer_loss(_hidden(student, inputs), student.lm_head.weight, labels, teacher_hidden,
                                    teacher.lm_head.weight, pairs, vmap, labels.numel(),
                                    hard_label_weight=hard_label_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return student, losses


def _agreement(student, teacher, rows, vmap) -> float:
    agree, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), 32):
            inputs, _, teacher_inputs, pairs = rows.rows(range(start, min(start + 32, len(rows))))
            z_s = _hidden(student, inputs)[pairs[:, 0], pairs[:, 1]] @ student.lm_head.weight.T
            z_t = _hidden(teacher, teacher_inputs)[pairs[:, 0], pairs[:, 2]] @ teacher.lm_head.weight.T
            hits = aligned_agreement(z_s, z_t, vmap)
            agree, count = agree + hits.sum().item(), count + len(hits)
    return agree / count


@pytest.mark.slow
def test_distilled_student_agrees_with_a_teacher_of_another_tokenizer(one_thread):
    train_docs, held_docs = text_documents(TRAIN_TEXT), text_documents(HELDOUT_TEXT)
    teacher_tok = tiny_bpe(train_docs, 400)
    student_tok = tiny_bpe(train_docs[len(train_docs) // 2:][::-1], 120, sentencepiece_style=True)
    streams = {}
    for name, docs in (("train", train_docs), ("held", held_docs)):
        streams[name] = (encode_documents(docs, student_tok, eos=student_tok.eos_token_id),
                         encode_documents(docs, teacher_tok, eos=teacher_tok.eos_token_id))
    teacher_len = teacher_len_for(*streams["train"], SEQ_LEN)
    train_rows = CrossRows(*streams["train"], SEQ_LEN, teacher_len)
    held_rows = CrossRows(*streams["held"], SEQ_LEN, teacher_len)
    vmap = VocabularyMap.from_tokenizers(student_tok, teacher_tok)

    teacher = _model(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2), len(teacher_tok), seed=0)
    _train_teacher(teacher, streams["train"][1], teacher_len, steps=200)

    untrained, _ = _train_student(train_rows, teacher, vmap, len(student_tok), hard_label_weight=1.0, steps=0)
    ce_only, _ = _train_student(train_rows, teacher, vmap, len(student_tok), hard_label_weight=1.0, steps=150)
    distilled, losses = _train_student(train_rows, teacher, vmap, len(student_tok), hard_label_weight=0.5,
                                       steps=150)
    scores = {name: _agreement(model, teacher, held_rows, vmap)
              for name, model in (("untrained", untrained), ("ce_only", ce_only), ("distilled", distilled))}
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"cross-tokenizer: loss {first:.3f} -> {last:.3f}; held-out top-1 agreement {scores}")
    assert last < 0.5 * first
    assert scores["distilled"] > scores["untrained"] + 0.3
    assert scores["distilled"] > scores["ce_only"] + 0.05
