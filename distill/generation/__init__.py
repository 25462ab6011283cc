"""Teacher generation for sequence-level distillation: ``flopgate generate``.

The pieces, each replaceable on its own:

* :mod:`.prompts`  the audited prompts file (JSONL), read once against its signed digest;
* :mod:`.backend`  what a teacher backend is (:class:`~.backend.Backend`): one chat request in,
  one :class:`~.backend.Completion` with its token usage out, or a typed error saying whether
  to retry. :mod:`.api` is the OpenAI-compatible HTTP backend; a local backend (transformers
  ``generate``, vLLM) plugs in beside it with the same interface;
* :mod:`.retry`    exponential backoff with jitter, honouring ``Retry-After``;
* :mod:`.meter`    the audited token allowance (prompt and completion tokens), reserved before
  each request and settled with the usage the teacher reports;
* :mod:`.journal`  the job folder: ``samples.jsonl`` and ``attempts.jsonl``, appended with
  flush + fsync, read back on ``--resume``;
* :mod:`.runner`   bounded concurrency, the filter, and the stop at the allowance;
* the kept-sample manifest and the signed generation record: :mod:`distill.outputs.generation_record`.

The command itself is :mod:`distill.cli.generate_cmd`.

Imports: gate, data, outputs, runtime; and audit."""
