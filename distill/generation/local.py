"""Local teacher backends: the audited weights folder answers in process, in batches.

The runner (:mod:`distill.generation.runner`) sends one request per worker thread, as it does
to an API. :class:`BatchedBackend` gathers the requests in flight (up to ``batch_size``, waiting
at most ``gather_s`` for more) and answers them with one batched call on its own thread, so the
meter, retries, journal and resume work exactly as for an API teacher.

Two engines:

* :class:`TransformersBackend`: ``model.generate`` with left padding and the KV cache; greedy
  when the temperature is 0, else sampling (temperature, top-p). Works on CPU and GPU.
* :class:`VLLMBackend`: vLLM's offline ``LLM.chat`` (continuous batching, paged KV cache); used
  by ``--backend auto`` when vllm is installed and a CUDA device is present.

Token counts are exact: prompt tokens are the chat template's tokens without padding, generated
tokens run to the first stop token (counted) or ``max_tokens``. Padding in a batch is compute
the meter does not charge; the audit counts tokens, not padded slots. Sampling with a seed is
reproducible for the same batching (greedy decoding always is).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from distill.generation.backend import Completion, Fatal, Sampling

GATHER_S = 0.05
"""How long the batcher waits for more requests once one has arrived."""


@dataclass
class _Request:
    messages: list[dict]
    sampling: Sampling
    done: threading.Event = field(default_factory=threading.Event)
    result: Optional[Completion] = None
    error: Optional[BaseException] = None


class BatchedBackend:
    """Gathers concurrent ``complete`` calls into batches for :meth:`generate_batch`."""

    engine = "local"

    def __init__(self, batch_size: int, *, gather_s: float = GATHER_S):
        self.batch_size, self.gather_s = batch_size, gather_s
        self.batches = 0
        self._queue: "queue.Queue[Optional[_Request]]" = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="flopgate-teacher", daemon=True)
        self._thread.start()

    def generate_batch(self, conversations: list[list[dict]], sampling: Sampling) -> list[Completion]:
        raise NotImplementedError

    def complete(self, messages: list[dict], sampling: Sampling) -> Completion:
        request = _Request(messages, sampling)
        self._queue.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """``(batch, closing)``: ``first`` and what arrives within ``gather_s``, same sampling."""
        batch, deadline = [first], time.monotonic() + self.gather_s
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            if item.sampling != first.sampling:  # one job has one sampling; keep it for the next batch
                self._queue.put(item)
                break
            batch.append(item)
        return batch, False

    def _loop(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            if first is None:
                return
            batch, closing = self._gather(first)
            try:
                results = self.generate_batch([r.messages for r in batch], first.sampling)
                if len(results) != len(batch):
                    raise Fatal(f"the {self.engine} teacher returned {len(results)} answers for {len(batch)} prompts")
            except Fatal as exc:
                for request in batch:
                    request.error = exc
            except Exception as exc:  # noqa: BLE001 - the model's own error: one line, the job stops
                error = Fatal(f"the local teacher failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"[:300])
                for request in batch:
                    request.error = error
            else:
                for request, result in zip(batch, results):
                    request.result = result
            self.batches += 1
            for request in batch:
                request.done.set()


class TransformersBackend(BatchedBackend):
    """``model`` (eval mode, on ``device``) and its ``tokenizer``, which must have a chat template."""

    engine = "transformers"

    def __init__(self, model, tokenizer, *, model_id: str, batch_size: int, seed: Optional[int] = None,
                 describe: Optional[dict] = None, gather_s: float = GATHER_S):
        import torch

        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.device = next(model.parameters()).device
        self._describe = dict(describe or {})
        self.stop_ids = stop_token_ids(model, tokenizer)
        if not self.stop_ids:
            raise Fatal("the teacher has no stop token (generation_config.eos_token_id or the tokenizer's eos_token): "
                        "answers would always run to --max-tokens")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        if seed is not None:
            torch.manual_seed(seed)
        super().__init__(batch_size, gather_s=gather_s)

    def describe(self) -> dict:
        return {"backend": self.engine, "device": str(self.device), **self._describe}

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate_batch(self, conversations: list[list[dict]], sampling: Sampling) -> list[Completion]:
        import torch

        prompts = [self.prompt_ids(m) for m in conversations]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        sample = sampling.temperature > 0
        options = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p or 1.0, top_k=0) \
            if sample else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_tokens,
                                      eos_token_id=self.stop_ids, pad_token_id=self.pad_id, use_cache=True, **options)
        return [self._completion(row[width:].tolist(), len(p), sampling) for row, p in zip(out, prompts)]

    def _completion(self, generated: list[int], prompt_tokens: int, sampling: Sampling) -> Completion:
        stops = [i for i, t in enumerate(generated) if t in self.stop_ids]
        end = stops[0] + 1 if stops else min(len(generated), sampling.max_tokens)
        text = self.tokenizer.decode(generated[:stops[0]] if stops else generated[:end], skip_special_tokens=True)
        return Completion(text=text.strip(), prompt_tokens=prompt_tokens, completion_tokens=end, model=self.model_id,
                          finish_reason="stop" if stops else "length")


class VLLMBackend(BatchedBackend):
    """vLLM's offline engine on the audited folder (GPU only)."""

    engine = "vllm"

    def __init__(self, folder: Path, *, model_id: str, batch_size: int, seed: Optional[int] = None,
                 describe: Optional[dict] = None, gather_s: float = GATHER_S):
        from vllm import LLM

        self.model_id, self._describe = model_id, dict(describe or {})
        self.llm = LLM(model=str(folder), tokenizer=str(folder), seed=seed or 0, dtype="bfloat16",
                       max_num_seqs=batch_size, disable_log_stats=True)
        super().__init__(batch_size, gather_s=gather_s)

    def describe(self) -> dict:
        return {"backend": self.engine, "device": "cuda", **self._describe}

    def generate_batch(self, conversations: list[list[dict]], sampling: Sampling) -> list[Completion]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p or 1.0, seed=sampling.seed)
        outputs = self.llm.chat(conversations, params, use_tqdm=False)
        return [Completion(text=o.outputs[0].text.strip(), prompt_tokens=len(o.prompt_token_ids),
                           completion_tokens=len(o.outputs[0].token_ids), model=self.model_id,
                           finish_reason=o.outputs[0].finish_reason) for o in outputs]


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids that end an answer: the generation config's eos ids, then the chat template's end
    of turn and the tokenizer's eos (:func:`distill.runtime.models.end_of_turn_ids`)."""
    from distill.runtime.models import end_of_turn_ids

    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in ([configured] if isinstance(configured, int) else list(configured or [])) + end_of_turn_ids(tokenizer):
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    return ids


def choose_engine(requested: str) -> str:
    """``transformers`` or ``vllm`` for ``--backend`` (``auto``: vLLM when it is installed and a
    CUDA device is present; ``vllm`` without them is an ``InputError``)."""
    import importlib.util

    import torch

    vllm_runs = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if requested == "vllm" and not vllm_runs:
        from audit.errors import InputError

        raise InputError("the vllm engine needs the vllm package and a CUDA device; use --backend transformers "
                         "(or auto)", field="--backend")
    if requested != "auto":
        return requested
    return "vllm" if vllm_runs else "transformers"
