"""Build the quickstart's tiny teacher: a 2-layer Llama trained on the bundled corpus, offline.

    python examples/quickstart/make_teacher.py            # writes examples/quickstart/teacher/

The corpus (``data/corpus.txt``) is a small synthetic language: paragraphs of 2-5 sentences
with agreement and word preferences. Each paragraph becomes one chat: the first sentence is the
user's turn, the rest the assistant's, so the teacher learns to answer a sentence with a few
more in the same language and to end its turn with ``<|end|>``. Training takes about 5 s on
two idle CPU cores, the whole script about 12 s with Python's start-up (measured 2026-12-07; a
busy machine takes longer). The folder (weights, config, tokenizer with its chat template, generation
config) is what the quickstart plans name as ``teacher.weights``; ``flopgate check`` hashes it.

Deterministic for a given --seed and torch version (CPU, one thread order).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOKENIZER = HERE / "data" / "tokenizer"
CORPUS = HERE / "data" / "corpus.txt"

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=72, max_position_embeddings=512)


def conversations(text: str) -> list[list[dict]]:
    """One chat per paragraph: first sentence from the user, the rest from the assistant."""
    chats = []
    for paragraph in (p.strip() for p in text.split("\n\n")):
        sentences = [s.strip() + " ." for s in paragraph.split(" .") if s.strip()]
        if len(sentences) >= 2:
            chats.append([{"role": "user", "content": sentences[0]},
                          {"role": "assistant", "content": " ".join(sentences[1:])}])
    return chats


def token_stream(tokenizer, chats: list[list[dict]]) -> list[int]:
    ids: list[int] = []
    for chat in chats:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids


def train_teacher(out: Path, *, steps: int = 200, seq_len: int = 128, batch: int = 8, lr: float = 3e-3,
                  seed: int = 0, log=print) -> dict:
    """Train and save the teacher in ``out``; returns the first and last training losses."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    config = LlamaConfig(**SHAPE, tie_word_embeddings=False, rms_norm_eps=1e-5, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=None)
    model = LlamaForCausalLM(config)
    stream = torch.tensor(token_stream(tokenizer, conversations(CORPUS.read_text(encoding="utf-8"))))
    rows = stream[: len(stream) // seq_len * seq_len].view(-1, seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(seed)
    losses, started = [], time.monotonic()
    model.train()
    for step in range(steps):
        ids = rows[torch.randint(len(rows), (batch,), generator=generator)]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {losses[-1]:.3f}")
    model.eval()
    model.generation_config = GenerationConfig(eos_token_id=[end_id, tokenizer.eos_token_id])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return {"first_loss": losses[0], "last_loss": losses[-1], "seconds": time.monotonic() - started,
            "tokens": int(rows.numel())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "teacher", help="output folder (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} already holds a model; remove it to build a new teacher")
        return 0
    result = train_teacher(args.out, steps=args.steps, seed=args.seed)
    print(f"teacher written to {args.out}: loss {result['first_loss']:.2f} -> {result['last_loss']:.2f} "
          f"in {result['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
