"""The policy engine: packs of cited rules (data, in ``policies/``) and one pure ``decide()``.

Public API (import from the modules; nothing heavy is imported here):

- ``audit.policy.packs.load_packs(extra_dirs=()) -> PolicySet``; ``PolicySet.pack_files()``
- ``audit.policy.facts.resolve_plan_facts(loaded, packs) -> Plan`` and ``read_plan_facts(loaded,
  packs=None) -> PlanFacts`` (the one I/O step)
- ``audit.policy.engine.decide(plan, compute, packs, as_of, facts) -> Decision`` (pure)
- ``audit.policy.engine.gate_would_open(decision) -> bool``, ``exit_code(decision) -> int``
- ``audit.policy.teachers.resolve_teacher(model, access, license, packs)`` (what governs a teacher)
  and ``resolve_plan_teacher(plan.teacher, packs)`` (the same, keyed on the host of an API teacher)

See docs/policy.md for how packs, outcomes and fail-closed work.
"""
