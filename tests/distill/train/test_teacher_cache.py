"""Cached teacher logits: the bucketed loss (exact at k = V, a lower bound rising with k below),
its fused form, the top-k targets, the cache files and their checks, and the trainer on a cache
(the meter charges the teacher's forward once)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from audit.errors import InputError
from distill.data.training_data import load_packed
from distill.train.losses import LossSpec, fused_distill_loss, reference_distill_loss
from distill.gate.meter import ComputeMeter
from distill.runtime.models import final_hidden_states, head_weight, load_teacher, load_tokenizer
from distill.train.teacher_cache import (INDEX_FILE, TeacherCache, batch_sequence_ids, build_cache_shards,
                                         data_digest, fused_cached_loss, read_index, reference_cached_loss,
                                         teacher_topk, topk_targets, write_cache_index)
from distill.train.trainer import TrainConfig, train
from distill_testkit import TRAIN_TEXT, assert_same_up_to_simd_tails, tiny_run

V, H_S, H_T = 40, 12, 20


def inputs(tokens: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(tokens, H_S, generator=g, dtype=torch.float64).requires_grad_()
    w_s = (torch.randn(V + 3, H_S, generator=g, dtype=torch.float64) * 0.6).requires_grad_()
    z_t = torch.randn(tokens, V, generator=g, dtype=torch.float64) * 2.0
    labels = torch.randint(0, V, (tokens,), generator=g)
    labels[::5] = -100
    return h_s, w_s, z_t, labels


def value_and_grads(loss, leaves):
    return (loss.detach(), *torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("spec", [LossSpec("forward_kl"), LossSpec("forward_kl", temperature=1.8),
                                  LossSpec("forward_kl", temperature=0.7, hard_label_weight=0.3)],
                         ids=["T1", "T1.8", "T0.7-hard"])
@pytest.mark.parametrize("skip_ignored", [True, False], ids=["gather", "mask"])
def test_with_k_equal_to_vocab_the_cached_loss_is_the_online_forward_kl(spec, skip_ignored):
    """k = V: no tail bucket, so value and gradient equal the online loss (float64)."""
    h_s, w_s, z_t, labels = inputs(29, seed=1)
    count = int((labels != -100).sum())
    # The online loss with the teacher's logits as its "hidden states" and an identity head.
    online = value_and_grads(fused_distill_loss(h_s, w_s, z_t, torch.eye(V, dtype=torch.float64), labels, spec,
                                                count, vocab_size=V), [h_s, w_s])
    targets = topk_targets(z_t, V, spec.temperature, torch.float64)
    assert torch.all(targets.tail == float("-inf"))
    cached = value_and_grads(fused_cached_loss(h_s, w_s, targets, labels, spec, count, vocab_size=V, chunk_size=6,
                                               skip_ignored=skip_ignored), [h_s, w_s])
    assert online[0].item() > 0
    for got, want in zip(cached, online):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-13)


def test_below_vocab_the_cached_loss_is_a_lower_bound_that_rises_with_k():
    h_s, w_s, z_t, labels = inputs(40, seed=2)
    count = int((labels != -100).sum())
    spec = LossSpec("forward_kl", temperature=1.3)
    full = reference_distill_loss(h_s @ w_s.T, z_t, labels, spec, count, vocab_size=V).item()
    values = [fused_cached_loss(h_s, w_s, topk_targets(z_t, k, spec.temperature, torch.float64), labels, spec, count,
                                vocab_size=V).item() for k in (1, 2, 4, 8, 16, 32, V - 1, V)]
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:]))     # non-decreasing in k
    assert all(v <= full + 1e-12 for v in values)                      # never above the full KL
    assert values[0] < 0.8 * full                                      # top-1 is well below it
    assert values[-2] == pytest.approx(full, rel=1e-12) and values[-1] == pytest.approx(full, rel=1e-12)


def test_bucketed_kl_matches_a_hand_computed_case():
    """V = 3, k = 1: buckets {top token, rest}; values from the definition with math.log."""
    z_t = torch.tensor([[math.log(6.0), math.log(3.0), 0.0]], dtype=torch.float64)   # q = (.6, .3, .1)
    z_s = torch.tensor([[0.0, math.log(2.0), math.log(2.0)]], dtype=torch.float64)   # p = (.2, .4, .4)
    targets = topk_targets(z_t, 1, 1.0, torch.float64)
    assert targets.ids.tolist() == [[0]] and targets.tail.item() == pytest.approx(math.log(0.4))
    want = 0.6 * math.log(0.6 / 0.2) + 0.4 * math.log(0.4 / 0.8)
    got = reference_cached_loss(z_s, targets, torch.tensor([1]), LossSpec(), 1).item()
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("k", [3, 17])
def test_fused_cached_loss_equals_its_reference_and_never_materialises_tokens_by_vocab(k):
    from test_distill_losses import LargestTensor

    h_s, w_s, z_t, labels = inputs(64, seed=3)
    count = int((labels != -100).sum())
    spec = LossSpec("forward_kl", temperature=2.0, hard_label_weight=0.1)
    targets = topk_targets(z_t, k, spec.temperature, torch.float64)
    want = value_and_grads(reference_cached_loss(h_s @ w_s.T, targets, labels, spec, count, vocab_size=V), [h_s, w_s])
    with LargestTensor() as watch:
        got = value_and_grads(fused_cached_loss(h_s, w_s, targets, labels, spec, count, vocab_size=V, chunk_size=8),
                              [h_s, w_s])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    # Allowed: [chunk x vocab] blocks, [tokens x hidden] gradients, [vocab x hidden] heads and
    # [tokens x k] views of the targets themselves.
    assert watch.largest <= max(8 * (V + 3), 64 * H_S, (V + 3) * H_S, 64 * k) < 64 * V
    assert torch.count_nonzero(got[2][V:]) == 0  # padded head rows get no gradient


def test_topk_targets_hold_the_largest_probabilities_and_the_exact_tail_mass():
    z = torch.randn(7, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 3
    targets = topk_targets(z, 5, 1.5, torch.float64)
    log_q = F.log_softmax(z / 1.5, dim=-1)
    for row in range(7):
        order = sorted(range(50), key=lambda j: -log_q[row, j].item())[:5]
        assert targets.ids[row].tolist() == order
        rest = sum(math.exp(log_q[row, j].item()) for j in range(50) if j not in order)
        assert targets.tail[row].item() == pytest.approx(math.log(rest), rel=1e-12)
    assert targets.ids.dtype == torch.int32
    assert topk_targets(z, 5).logprobs.dtype == torch.float16  # the storage default
    with pytest.raises(ValueError, match="k"):
        topk_targets(z, 51)


def test_cached_targets_refuse_other_losses():
    h_s, w_s, z_t, labels = inputs(8, seed=5)
    targets = topk_targets(z_t, 4, 1.0, torch.float64)
    with pytest.raises(ValueError, match="forward_kl"):
        fused_cached_loss(h_s, w_s, targets, labels, LossSpec("jsd"), 6, vocab_size=V)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def build_teacher_cache(folder, *, teacher, teacher_dir, sequences, vocab, k, temperature=1.0, batch_size=8,
                        shard_sequences=None, teacher_flops_per_token=None):
    """A whole cache in one process, as the trainer builds it with one rank: the shards, then the
    index."""
    from distill.runtime.checkpoint import checkpoint_digest

    shards = build_cache_shards(folder, teacher=teacher, sequences=sequences, vocab=vocab, k=k,
                                temperature=temperature, logprob_dtype="float16", batch_size=batch_size,
                                shard_sequences=shard_sequences)
    return write_cache_index(folder, shards, sequences=sequences, vocab=vocab, k=k, temperature=temperature,
                             logprob_dtype="float16", teacher_digest=checkpoint_digest(teacher_dir),
                             teacher_flops_per_token=teacher_flops_per_token)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny teacher, its packed data and a cache of it (top-5, fp16, two shards)."""
    root = tmp_path_factory.mktemp("cache")
    fields = tiny_run(root)
    teacher_dir = fields["teacher_dir"]
    tokenizer = load_tokenizer(teacher_dir)
    teacher = load_teacher(teacher_dir)
    data = load_packed([TRAIN_TEXT], tokenizer, seq_len=16, seed=0)
    sequences = data.sequences[:10]
    index = build_teacher_cache(root / "cache", teacher=teacher, teacher_dir=teacher_dir, sequences=sequences,
                                vocab=len(tokenizer), k=5, temperature=1.5, batch_size=3, shard_sequences=4,
                                teacher_flops_per_token=1000.0)
    return dict(root=root, teacher=teacher, teacher_dir=teacher_dir, sequences=sequences, index=index,
                vocab=len(tokenizer), data=data)


def open_cache(built, folder=None, **changes):
    from distill.runtime.checkpoint import checkpoint_digest

    args = dict(sequences=built["sequences"], vocab=built["vocab"], temperature=1.5,
                teacher_digest=checkpoint_digest(built["teacher_dir"]))
    args.update(changes)
    return TeacherCache.open(folder or built["root"] / "cache", **args)


def test_cache_round_trip_returns_the_teachers_top_k(built):
    index = read_index(built["root"] / "cache")
    assert [s["count"] for s in index.shards] == [4, 4, 2] and index.tokens == 10 * 16
    assert index.teacher_forward_flops == 1000.0 * 160 and index.data_sha256 == data_digest(built["sequences"])
    cache = open_cache(built)
    rows = torch.tensor([9, 0, 5, 4])
    got = cache.targets(rows)
    with torch.no_grad():
        hidden = final_hidden_states(built["teacher"], built["sequences"][rows, :-1])
        want = teacher_topk(hidden.reshape(-1, hidden.shape[-1]), head_weight(built["teacher"]), built["vocab"], 5,
                            1.5, torch.float16)
    assert got.ids.shape == (4, 16, 5) and got.tail.shape == (4, 16)
    assert torch.equal(got.ids.reshape(-1, 5), want.ids)
    assert torch.equal(got.logprobs.reshape(-1, 5), want.logprobs)
    torch.testing.assert_close(got.tail.reshape(-1), want.tail)
    # Stored probabilities plus the tail sum to one (fp16 log-probabilities: to about 1e-3).
    total = got.logprobs.double().exp().sum(-1) + got.tail.double().exp()
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=2e-3)


def test_cache_refuses_other_data_temperature_vocabulary_teacher_and_tampered_shards(built, tmp_path):
    import shutil

    data = built["sequences"].clone()
    data[3, 7] = (data[3, 7] + 1) % built["vocab"]
    cases = [(dict(sequences=data), "data_sha256"), (dict(temperature=1.0), "temperature"),
             (dict(vocab=built["vocab"] + 1), "vocab_size"), (dict(teacher_digest="0" * 64), "teacher_sha256")]
    for change, field in cases:
        with pytest.raises(InputError, match=field) as err:
            open_cache(built, **change)
        assert "\n" not in str(err.value) and INDEX_FILE in str(err.value)
    copy = tmp_path / "copy"
    shutil.copytree(built["root"] / "cache", copy)
    shard = copy / "shard-00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"shards\[1\]\.sha256"):
        open_cache(built, folder=copy)
    (copy / INDEX_FILE).unlink()
    with pytest.raises(InputError, match="no teacher cache index"):
        open_cache(built, folder=copy)


def test_a_cache_index_flopgate_did_not_write_is_refused(built, tmp_path, monkeypatch):
    """Attack: targets from some other model, with an index written by hand that names the
    audited teacher's digest and the shards' true sha256 (so every field check passes)."""
    import shutil

    copy = tmp_path / "forged"
    shutil.copytree(built["root"] / "cache", copy)
    index = json.loads((copy / INDEX_FILE).read_text(encoding="utf-8"))
    index["teacher_forward_flops"] = 0.0            # any edit of the index...
    (copy / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(InputError, match="does not verify") as err:
        open_cache(built, folder=copy)
    assert "\n" not in str(err.value) and INDEX_FILE in str(err.value)
    del index["mac"]                                 # ...or an index without a seal
    (copy / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(InputError, match="does not verify"):
        open_cache(built, folder=copy)
    # The untouched cache under another home's key (another machine, another FLOPGATE_HOME).
    open_cache(built)
    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "other-home"))
    with pytest.raises(InputError, match="does not verify"):
        open_cache(built)


def test_batch_sequence_ids_are_the_rows_data_batch_reads(built):
    data = built["data"]
    for start in (0, 5, len(data) - 2):  # the last one crosses into the next epoch
        ids = batch_sequence_ids(data, start, 4)
        inputs, labels = data.batch(start, 4)
        assert torch.equal(data.sequences[ids, :-1], inputs) and torch.equal(data.sequences[ids, 1:], labels)


# ----------------------------------------------------------------------------------------------
# Trainer and meter
# ----------------------------------------------------------------------------------------------

def test_meter_charges_one_off_compute_against_the_budget():
    meter = ComputeMeter(flops_per_token=10.0, budget_flops=1000.0, tolerance=0.0)
    meter.charge(400.0)
    meter.add(50)
    assert meter.flops == 900.0
    assert not meter.would_exceed(10) and meter.would_exceed(11)
    restored = ComputeMeter(10.0, 1000.0)
    restored.load_state_dict(meter.state_dict())
    assert restored.flops == 900.0 and restored.one_off_flops == 400.0
    with pytest.raises(ValueError):
        meter.charge(-1.0)


def test_trainer_on_cached_logits_builds_the_cache_once_and_charges_its_forward_once(tmp_path):
    cache_dir = tmp_path / "tcache"
    # The cache covers every packed token: 40 paragraphs keep its build under a second (all of
    # train.txt takes ~20 s on two cores) and are still far more than three steps read.
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(TRAIN_TEXT.read_text(encoding="utf-8").split("\n\n")[:40]) + "\n", encoding="utf-8")
    fields = tiny_run(tmp_path, max_steps=3, teacher_source="cached", teacher_cache_dir=str(cache_dir),
                      teacher_cache_k=8, flops_per_token=300.0, teacher_flops_per_token=200.0,
                      data_files=[str(text)])
    first = train(TrainConfig.parse(fields))
    index = read_index(cache_dir)
    assert index.k == 8 and index.logprob_dtype == "float16"
    charged = 200.0 * index.tokens                     # the teacher ran once over every packed token
    log = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl", encoding="utf-8")]
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["loss"] > 0 for r in log)
    assert first.flops_used == log[-1]["flops"] == 3 * 64 * 300.0 + charged
    # A second run on the same cache does not rebuild it (same index bytes) and pays its share again.
    before = (cache_dir / INDEX_FILE).read_bytes()
    second = train(TrainConfig.parse({**fields, "out_dir": str(tmp_path / "out2")}))
    assert (cache_dir / INDEX_FILE).read_bytes() == before
    assert second.flops_used == first.flops_used and second.final_loss == pytest.approx(first.final_loss, rel=1e-6)
    # A budget smaller than the cache's forward pass (and one step) refuses before building anything (exit 6).
    from distill.gate import GateRefused

    with pytest.raises(GateRefused, match="budget: the teacher cache"):
        train(TrainConfig.parse({**fields, "out_dir": str(tmp_path / "out3"), "teacher_cache_dir": str(tmp_path / "c2"),
                                 "budget_flops": charged / 2}))
    assert not (tmp_path / "c2").exists()


@pytest.mark.parametrize("change, message", [
    (dict(teacher_source="cached"), "teacher_cache_dir"),
    (dict(teacher_source="cached", teacher_cache_dir="c", loss="jsd"), "forward_kl"),
    (dict(teacher_source="cached", teacher_cache_dir="c", flops_per_token=1.0), "teacher_flops_per_token"),
])
def test_cached_config_is_checked(tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        TrainConfig.parse(tiny_run(tmp_path, **change))


def test_from_plan_maps_cached_logits(tmp_path):
    import shutil

    from audit.plan import load_plan
    from distill.data.training_data import build_manifest, write_manifest
    from distill_testkit import TOKENIZER_DIR
    from test_distill_trainer import write_plan

    tiny_run(tmp_path)  # teacher folder and student config
    shutil.copy(TRAIN_TEXT, tmp_path / "train.txt")
    write_manifest(tmp_path / "manifest.json",
                   build_manifest([tmp_path / "train.txt"], load_tokenizer(TOKENIZER_DIR), base=tmp_path))
    path = write_plan(tmp_path, kind="cached_logits", loss="forward_kl")
    cfg = TrainConfig.from_plan(load_plan(path), out_dir=tmp_path / "out", flops_per_token=5.0,
                                teacher_flops_per_token=2.0)
    assert cfg.teacher_source == "cached" and cfg.teacher_cache_dir == tmp_path / "out" / "teacher-cache"
    assert cfg.budget_flops == pytest.approx(5.0 * 640 + 2.0 * 640)  # student per token + teacher once
    # Without the teacher's figure a metered cached run is refused (fail closed).
    with pytest.raises(InputError, match="teacher_flops_per_token"):
        TrainConfig.from_plan(load_plan(path), out_dir=tmp_path / "out", flops_per_token=5.0)
    with pytest.raises(InputError, match="method.loss"):
        TrainConfig.from_plan(load_plan(write_plan(tmp_path, kind="cached_logits", loss="reverse_kl")),
                              out_dir=tmp_path / "out")


@pytest.mark.parametrize("sequences,per_shard,world", [(10, 4, 1), (10, 4, 3), (7, 100, 2), (3, 1, 4), (0, 5, 2)])
def test_shard_plan_tiles_the_rows_in_contiguous_ranges_shared_evenly(sequences, per_shard, world):
    from distill.train.teacher_cache import shard_plan

    plan = shard_plan(sequences, per_shard, world)
    assert [first for first, _, _ in plan] == sorted(first for first, _, _ in plan)
    covered = [row for first, count, _ in plan for row in range(first, first + count)]
    assert covered == list(range(sequences))
    assert all(1 <= count <= per_shard for _, count, _ in plan)
    per_rank = [sum(count for _, count, owner in plan if owner == rank) for rank in range(world)]
    assert max(per_rank) - min(per_rank) <= 1 and [o for *_, o in plan] == sorted(o for *_, o in plan)


@pytest.mark.parametrize("sequences,per_shard,world,batch", [(9, 100, 2, 4), (9, 3, 2, 2), (2203, 10 ** 6, 2, 3),
                                                            (5, 2, 4, 1), (16, 4, 2, 4)])
def test_lockstep_padding_gives_every_rank_the_same_number_of_forwards(sequences, per_shard, world, batch):
    from distill.train.teacher_cache import lockstep_padding, shard_plan

    plan = shard_plan(sequences, per_shard, world)
    forwards = [sum(math.ceil(count / batch) for _, count, owner in plan if owner == rank) for rank in range(world)]
    padding = lockstep_padding(sequences, per_shard, world, batch)
    assert min(padding) == 0 and len({f + p for f, p in zip(forwards, padding)}) == 1


# ----------------------------------------------------------------------------------------------
# The CPU path's row blocks, the cache's size, the disk check, the token limit
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("skip_ignored", [True, False], ids=["gather", "mask"])
def test_cached_loss_in_row_blocks_equals_its_reference(monkeypatch, skip_ignored):
    """Blocks of 3 rows inside chunks of 8 (the CPU path): value and gradient equal the reference,
    and a block of 1 row or of the whole chunk gives the same values to fp64's last bits."""
    import distill.train.losses as losses

    h_s, w_s, z_t, labels = inputs(45, seed=31)
    count = int((labels != -100).sum())
    spec = LossSpec("forward_kl", temperature=1.6, hard_label_weight=0.2)
    targets = topk_targets(z_t, 7, spec.temperature, torch.float64)
    want = value_and_grads(reference_cached_loss(h_s @ w_s.T, targets, labels, spec, count, vocab_size=V), [h_s, w_s])
    results = {}
    for rows in (3, 1, 8):
        monkeypatch.setattr(losses, "ELEMENTWISE_BLOCK_BYTES", rows * V * 8)
        results[rows] = value_and_grads(fused_cached_loss(h_s, w_s, targets, labels, spec, count, vocab_size=V,
                                                          chunk_size=8, skip_ignored=skip_ignored), [h_s, w_s])
    for got, ref in zip(results[3], want):
        torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-13)
    assert torch.count_nonzero(results[3][1][labels == -100]) == 0
    for rows in (1, 8):
        for a, b in zip(results[rows], results[3]):
            assert_same_up_to_simd_tails(a, b)


def test_cache_size_counts_the_bytes_the_shards_hold(built):
    from distill.train.teacher_cache import SHARD_HEADER_BYTES, cache_size

    # top-5 fp16: 5 int32 ids + 5 fp16 log-probs + one fp32 tail = 34 bytes per token.
    size = cache_size(160, 5, "float16", seq_len=16, shard_sequences=4)
    assert (size.bytes_per_token, size.payload_bytes, size.shards) == (34, 160 * 34, 3)
    folder = built["root"] / "cache"
    shard_files = [folder / s["file"] for s in read_index(folder).shards]
    on_disk = sum(path.stat().st_size for path in shard_files)
    assert size.payload_bytes < on_disk <= size.payload_bytes + len(shard_files) * SHARD_HEADER_BYTES
    assert on_disk + (folder / INDEX_FILE).stat().st_size <= size.total_bytes
    # bf16 is as large as fp16; fp32 log-probs take 4 bytes; ids stay 4 bytes (int32, as uint32 would).
    assert cache_size(160, 5, "bfloat16").bytes_per_token == 34 and cache_size(160, 5, "float32").bytes_per_token == 44
    assert cache_size(2048 * 10 ** 6, 64, "bfloat16").payload_bytes == 2048 * 10 ** 6 * (64 * 6 + 4)
    with pytest.raises(ValueError, match="logprob_dtype"):
        cache_size(10, 5, "int8")


def test_a_cache_too_large_for_the_disk_is_refused_before_anything_is_built(built, tmp_path, monkeypatch):
    import shutil

    import distill.train.teacher_cache as teacher_cache
    from audit.errors import FlopgateError
    from distill.train.teacher_cache import CacheDiskError, cache_size, check_cache_disk

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(teacher_cache.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    folder = tmp_path / "new" / "cache"
    with pytest.raises(CacheDiskError) as err:
        build_cache_shards(folder, teacher=built["teacher"], sequences=built["sequences"], vocab=built["vocab"], k=5,
                           shard_sequences=4)
    needed = cache_size(160, 5, "float16", seq_len=16, shard_sequences=4).total_bytes
    message = str(err.value)
    assert isinstance(err.value, FlopgateError) and "\n" not in message
    assert str(folder) in message and f"{needed:,} bytes" in message and "1,000 bytes free" in message
    assert not (tmp_path / "new").exists()                  # nothing made, the teacher never ran
    assert check_cache_disk(folder, 1000) == 1000           # exactly enough is enough
    monkeypatch.undo()
    assert check_cache_disk(folder, needed) > needed        # the real disk holds this tiny cache


def test_a_token_limit_builds_only_the_first_rows_and_the_cache_covers_them_only(built, tmp_path):
    from distill.runtime.checkpoint import checkpoint_digest
    from distill.train.teacher_cache import cache_sequences

    assert cache_sequences(10, 16, max_tokens=50) == 4 and cache_sequences(10, 16, max_tokens=64) == 4
    assert cache_sequences(10, 16, max_sequences=3, max_tokens=64) == 3 and cache_sequences(10, 16) == 10
    assert cache_sequences(10, 16, max_sequences=99) == 10
    sequences, digest = built["sequences"], checkpoint_digest(built["teacher_dir"])
    common = dict(teacher=built["teacher"], sequences=sequences, vocab=built["vocab"], k=5, temperature=1.5,
                  batch_size=3, shard_sequences=3)
    by_tokens = build_cache_shards(tmp_path / "a", max_tokens=50, **common)
    by_rows = build_cache_shards(tmp_path / "b", max_sequences=4, **common)
    assert [(s["first"], s["count"]) for s in by_tokens] == [(0, 3), (3, 1)]
    assert [s["sha256"] for s in by_tokens] == [s["sha256"] for s in by_rows]
    index = write_cache_index(tmp_path / "a", by_tokens, sequences=sequences, vocab=built["vocab"], k=5,
                              temperature=1.5, logprob_dtype="float16", teacher_digest=digest,
                              teacher_flops_per_token=1000.0, max_tokens=50)
    assert (index.sequences, index.tokens, index.teacher_forward_flops) == (4, 64, 64 * 1000.0)
    assert index.data_sha256 == data_digest(sequences[:4])
    cache = TeacherCache.open(tmp_path / "a", sequences=sequences, vocab=built["vocab"], temperature=1.5,
                              teacher_digest=digest, max_tokens=50)
    full = open_cache(built)
    rows = torch.tensor([3, 0, 2])
    assert all(torch.equal(a, b) for a, b in zip(cache.targets(rows), full.targets(rows)))
    with pytest.raises(InputError, match="packed sequence 4 is not in the cache"):
        cache.targets(torch.tensor([1, 4]))
    with pytest.raises(InputError, match="sequences"):  # opened without the limit: other data
        TeacherCache.open(tmp_path / "a", sequences=sequences, vocab=built["vocab"], temperature=1.5,
                          teacher_digest=digest)
