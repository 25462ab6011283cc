"""Input limits: the most flopgate reads of each kind of input.

A hostile input (a multi-GB plan, a config with a billion layers, a folder 1,500 levels deep,
an envelope with 100,000 signatures, JSON nested 100,000 deep) gets a one-line error naming the
file, the field and the limit (exit 2, or the verification's refusal code for an envelope),
never a hang, a ``MemoryError`` or a ``RecursionError``. Each limit is far above any real input;
docs/gate.md ("Input limits") lists them.
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Bytes of a file read whole (``audit.fsutil.read_input`` checks the size before reading).
MAX_SMALL_FILE_BYTES = 4 * MiB
"""A plan, a model config.json, a policy pack, a reference table, a checkpoint state, and any
input file without a larger limit below (the default of ``read_input``)."""
MAX_KEY_BYTES = 64 * KiB
"""A private or public key, the count-cache MAC key (an Ed25519 key file is under 1 KiB)."""
MAX_ENVELOPE_BYTES = 16 * MiB
"""A signed audit envelope or an approval (ours are tens of KiB)."""
MAX_MANIFEST_BYTES = 64 * MiB
"""A dataset manifest (a few hundred bytes per file listed)."""
MAX_DOCUMENT_BYTES = 256 * MiB
"""A licence file, an authorization document, a tokenizer file, a chat template."""
MAX_DATA_BYTES = 2 * GiB
"""A data file read whole (text or JSONL), a prompts file, a generation journal, kept samples,
a run's metrics log: split a larger corpus across several input files."""

# JSON
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects read from a JSON file (configs, manifests, envelopes,
signed statements; ours are under 10 deep): checked before parsing."""

# DSSE envelopes
MAX_SIGNATURES = 16
"""Most signatures an envelope may carry (flopgate writes one): refused before any is checked,
as each is tried against every trusted key."""

# Model folders
MAX_FOLDER_DEPTH = 64
"""Deepest sub-folder level listed in a model folder (Hugging Face folders use one or two)."""

# Model configs (``audit.flops.configs.check_config_sizes``): each an integer in 1..ceiling.
MAX_LAYERS = 10_000
MAX_HIDDEN = 1_000_000
MAX_INTERMEDIATE = 10_000_000
MAX_HEADS = 100_000
MAX_VOCAB = 10_000_000
MAX_EXPERTS = 100_000
MAX_POSITIONS = 100_000_000

# YAML (``audit.yamlio``)
MAX_YAML_NODES = 1_000_000
"""Most values (scalars, lists, mappings) in one YAML document once aliases are expanded: a
"billion laughs" bomb is refused (a plan holds about a hundred)."""
