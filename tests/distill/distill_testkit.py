"""Shared helpers for the distillation tests: tiny Llama model folders built offline.

Models are built from seeded random weights at test time; the tokenizer and the synthetic
language ship in ``data/`` (regenerate with ``data/make_data.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data"
TOKENIZER_DIR = DATA / "tokenizer"
CHAT = DATA / "chat.jsonl"                # chat samples (messages with roles)
CHAT_TOKENIZER = DATA / "chat_tokenizer"  # word level, with a chat template
TRAIN_TEXT = DATA / "train.txt"
HELDOUT_TEXT = DATA / "heldout.txt"
TOKENIZER_SIZE = 64  # len() of the shipped word-level tokenizer

TEACHER_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=72)   # 8 padded rows past the tokenizer
STUDENT_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, vocab_size=68)   # 4 padded rows: a different padding


# Float64 results that take the same sums in the same order but run their elementwise kernels
# (exp, log) over other slice shapes: the vectorised body and the scalar tail of a kernel may
# round the last bit differently, and which elements fall in the tail depends on the CPU's vector
# width. Equal to within a few units in the last place, not bitwise (measured: bitwise on one
# Intel CPU, last-bit differences on an AMD EPYC).
SIMD_TAIL_RTOL = 1e-14   # about 45 ulp of a float64
SIMD_TAIL_ATOL = 1e-300  # so exact zeros (ignored rows' gradients) compare equal


def assert_same_up_to_simd_tails(got: torch.Tensor, want: torch.Tensor) -> None:
    """``got`` equals ``want`` to :data:`SIMD_TAIL_RTOL` (relative, element by element)."""
    torch.testing.assert_close(got, want, rtol=SIMD_TAIL_RTOL, atol=SIMD_TAIL_ATOL)


def llama_config(shape: dict, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(max_position_embeddings=256, tie_word_embeddings=False, rms_norm_eps=1e-5,
                       bos_token_id=None, eos_token_id=1, pad_token_id=None, **{**shape, **extra})


def make_model_dir(folder: Path, shape: dict = TEACHER_SHAPE, seed: int = 0, **extra) -> Path:
    """A Hugging Face model folder: seeded random tiny Llama + the shipped tokenizer."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(shape, **extra))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    for file in TOKENIZER_DIR.iterdir():
        shutil.copy(file, folder / file.name)
    return folder


def write_config(path: Path, shape: dict = STUDENT_SHAPE, **extra) -> Path:
    """A student ``config.json``."""
    llama_config(shape, **extra).to_json_file(str(path))
    return path


def tiny_run(root: Path, **overrides) -> dict:
    """Fields of a small CPU ``TrainConfig`` (as JSON-able values) with models under ``root``.

    The teacher has a wide weight init so its next-token distributions are far from uniform."""
    teacher = root / "teacher"
    if not teacher.exists():
        make_model_dir(teacher, seed=0, initializer_range=0.2)
    student = root / "student.json"
    if not student.exists():
        write_config(student)
    fields = dict(teacher_dir=str(teacher), student_config=str(student), data_files=[str(TRAIN_TEXT)],
                  seq_len=16, micro_batch=4, max_steps=4, lr=1e-3, warmup_steps=2, seed=0, device="cpu",
                  progress=False, checkpoint_every=100, out_dir=str(root / "out"))
    fields.update(overrides)
    return fields


def tiny_bpe(documents, vocab_size: int, *, sentencepiece_style: bool = False, folder: Path | None = None):
    """A fast BPE tokenizer trained offline on ``documents`` with an ``<eos>`` token: byte-level
    (GPT-2 style, ``\\u0120`` for a space) or SentencePiece style (``\\u2581`` for a space, no byte
    alphabet). Two of them with different sizes or styles tokenize the same text differently
    (cross-tokenizer distillation). Saved to ``folder`` when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if sentencepiece_style:
        tok.pre_tokenizer, tok.decoder, alphabet = pre_tokenizers.Metaspace(), decoders.Metaspace(), []
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder, alphabet = decoders.ByteLevel(), pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(list(documents), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                                                 initial_alphabet=alphabet, show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    if folder is not None:
        tokenizer.save_pretrained(str(folder))
    return tokenizer


def text_documents(path: Path) -> list[str]:
    """The blank-line separated documents of a text file."""
    return [doc.strip() for doc in path.read_text(encoding="utf-8").split("\n\n") if doc.strip()]


def fake_gpu_counter(monkeypatch, step_mj: int = 2_000, first_mj: int = 0) -> None:
    """A fake NVML (``pynvml``) whose "GPU 0", an H100, reads ``first_mj`` millijoules and then
    ``step_mj`` more at each reading; the CPU run reads it as its device."""
    import sys
    import types

    from distill.runtime import energy as runtime_energy

    readings = iter(range(first_mj, first_mj + 1_000 * step_mj, step_mj))
    fake = types.ModuleType("pynvml")
    fake.NVML_ERROR_NOT_SUPPORTED = 3
    fake.nvmlInit = fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetHandleByIndex = lambda index: index
    fake.nvmlDeviceGetName = lambda handle: "NVIDIA H100 80GB HBM3"
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda handle: next(readings)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(runtime_energy, "_nvml_target", lambda device: 0)
