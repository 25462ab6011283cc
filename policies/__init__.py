"""Policy data shipped with flopgate: YAML packs for legal regimes, teacher terms, hardware
peaks and published training compute. Data only; the engine lives in ``audit.policy``."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
