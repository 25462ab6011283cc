"""The policy engine: packs of cited rules (data, in ``policies/``) and one pure ``decide()``."""
