"""Bills of materials from a signed audit: ``flopgate export``.

``sources`` verifies the inputs (the audit envelope, and run and generation records of the
same audit) and ``facts`` reads from them, once, everything a bill of materials says: names,
digests, licences, energy, evaluation. ``cyclonedx`` and ``spdx`` only render those facts, so
both formats carry the same names and sha256 digests as the signed audit. ``sign`` wraps an
export in the same DSSE/in-toto envelope as every other flopgate attestation.
See ``docs/exports.md``.
"""

from __future__ import annotations

CYCLONEDX_16 = "cyclonedx-1.6"
CYCLONEDX_17 = "cyclonedx-1.7"
SPDX_301 = "spdx-3.0.1"
FORMATS = (CYCLONEDX_16, CYCLONEDX_17, SPDX_301)
