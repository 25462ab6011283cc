"""Runs the prompts of a job through a backend: bounded concurrency, retries, the filter, and a
stop before the audited token allowance would be passed.

The main thread reserves each request's bound on the meter and submits it to at most
``concurrency`` worker threads; a worker makes the attempts (retrying transient failures with
backoff) and journals each one; the main thread applies the filter to each answer and appends
the sample, so the filter and ``samples.jsonl`` are only ever used from one thread. When a
reservation does not fit, the main thread waits for requests in flight to settle (they usually
spend less than their bound); when none is in flight, the job stops: the next request could
pass the allowance.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from audit.errors import FlopgateError, InputError
from distill.generation.backend import Backend, Completion, Fatal, Sampling, Transient
from distill.generation.journal import Journal
from distill.generation.meter import TokenMeter
from distill.data.prompts import Prompt
from distill.generation.retry import RetryPolicy


class GenerationFailed(FlopgateError):
    """A prompt kept failing after every retry: the job stops (resume it later). Exit 1."""

    exit_code = 1


@dataclass
class RunSummary:
    answered: int = 0
    kept: int = 0
    discarded: int = 0
    stopped_by_budget: bool = False
    message: str = ""


_REQUEUE = object()   # a retry found no room on the meter: the main thread decides (wait or stop)


def run_prompts(prompts: Sequence[Prompt], backend: Backend, sampling: Sampling, meter: TokenMeter,
                journal: Journal, *, concurrency: int, retry: RetryPolicy,
                keep: Optional[Callable[[dict], bool]] = None, filter_name: Optional[str] = None,
                log: Callable[[str], None] = lambda line: None,
                progress: Optional[Callable[[], None]] = None) -> RunSummary:
    """Answer ``prompts`` (those not done yet), appending one sample per answer; ``progress``
    is called from this (the main) thread after each answer or failure is handled."""
    summary = RunSummary()
    stop = threading.Event()
    pending = deque(prompts)
    inflight: dict = {}
    error: Optional[BaseException] = None

    def attempts(prompt: Prompt, reservation):
        bound = (prompt.max_prompt_tokens(), sampling.max_tokens)
        last: Optional[Transient] = None
        for number in range(retry.max_attempts):
            if number:
                if stop.is_set():
                    return _REQUEUE
                reservation = meter.reserve(*bound)
                if reservation is None:
                    return _REQUEUE
            attempt = journal.start(prompt.id, *bound)
            try:
                answer = backend.complete(prompt.as_messages(), sampling)
            except Transient as exc:
                charged = bound if exc.spent else (0, 0)
                meter.settle(reservation, *charged)
                journal.end(attempt, "retry", *charged, detail=exc.what)
                last = exc
                if number + 1 < retry.max_attempts:
                    delay = retry.delay(number, exc.retry_after)
                    log(f"  prompt {prompt.id}: {exc.what}; retry {number + 1} in {delay:.2f} s")
                    if stop.wait(delay):
                        return _REQUEUE
                continue
            except Fatal as exc:
                meter.settle(reservation, 0, 0)
                journal.end(attempt, "fatal", 0, 0, detail=str(exc))
                raise
            except BaseException as exc:  # unknown: the teacher may have worked, charge the bound
                meter.settle(reservation, *bound)
                journal.end(attempt, "error", *bound, detail=type(exc).__name__)
                raise
            meter.settle(reservation, answer.prompt_tokens, answer.completion_tokens)
            journal.end(attempt, "ok", answer.prompt_tokens, answer.completion_tokens)
            return answer
        raise GenerationFailed(f"prompt {prompt.id!r}: no answer after {retry.max_attempts} attempts "
                               f"(last: {last.what if last else 'unknown'}); resume the job later (--resume)")

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="flopgate-generate") as pool:
        while True:
            while pending and not stop.is_set() and len(inflight) < concurrency:
                prompt = pending[0]
                bound = (prompt.max_prompt_tokens(), sampling.max_tokens)
                reservation = meter.reserve(*bound)
                if reservation is None:
                    if not inflight:
                        summary.stopped_by_budget = True
                        summary.message = _budget_message(meter, prompt, bound)
                        stop.set()
                    break
                pending.popleft()
                inflight[pool.submit(attempts, prompt, reservation)] = prompt
            if not inflight:
                break
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for future in finished:
                prompt = inflight.pop(future)
                try:
                    answer = future.result()
                except BaseException as exc:  # noqa: BLE001 - the first error ends the job after the drain
                    if error is None:
                        error = exc
                    stop.set()
                    continue
                if answer is _REQUEUE:
                    pending.appendleft(prompt)
                    continue
                if error is None:
                    try:
                        _write_sample(journal, prompt, answer, sampling, keep, filter_name, summary)
                    except BaseException as exc:  # noqa: BLE001
                        error = exc
                        stop.set()
                if meter.over and not summary.stopped_by_budget:
                    summary.stopped_by_budget = True
                    summary.message = ("stopped: the teacher reported more tokens than the request's bound, so the "
                                       "allowance is spent")
                    stop.set()
            if progress is not None and error is None:
                try:
                    progress()
                except BaseException as exc:  # noqa: BLE001
                    error = exc
                    stop.set()
    if error is not None:
        raise error
    if not summary.message:
        summary.message = f"done: {summary.answered} prompt(s) answered in this session"
    return summary


def _write_sample(journal: Journal, prompt: Prompt, answer: Completion, sampling: Sampling,
                  keep, filter_name, summary: RunSummary) -> None:
    row = {"id": prompt.id, "messages": prompt.as_messages(),
           "completion": {"role": "assistant", "content": answer.text},
           "teacher_model": answer.model, "sampling": sampling.as_dict(),
           "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
           "finish_reason": answer.finish_reason, "response_id": answer.response_id}
    kept = True
    if keep is not None:
        try:
            verdict = keep(copy.deepcopy(row))
        except Exception as exc:  # noqa: BLE001 - the user's filter: one line, not a traceback
            raise InputError(f"raised {type(exc).__name__}: {exc} on prompt {prompt.id!r}"[:300],
                             field=f"--filter {filter_name}") from None
        if not isinstance(verdict, bool):
            raise InputError(f"returned {verdict!r} on prompt {prompt.id!r}; expected True (keep) or False "
                             "(discard)"[:300], field=f"--filter {filter_name}")
        kept = verdict
    row["status"] = "kept" if kept else "discarded"
    row["time"] = time.time()
    journal.sample(row)
    summary.answered += 1
    if kept:
        summary.kept += 1
    else:
        summary.discarded += 1


def _budget_message(meter: TokenMeter, prompt: Prompt, bound: tuple[int, int]) -> str:
    return (f"stopped before the audited token allowance: {meter.used_prompt:,} of {meter.prompt_limit:,.0f} "
            f"prompt tokens and {meter.used_completion:,} of {meter.completion_limit:,.0f} generated tokens spent; "
            f"the next prompt ({prompt.id}) could need {bound[0]:,} + {bound[1]:,} more")
