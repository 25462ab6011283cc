"""Per-checkpoint licences: concrete Hugging Face ids resolve to the teacher entry and terms that
actually govern them (issue 16, policy fidelity II).

Families such as Qwen2, Qwen2.5, Qwen1.5, Nemotron-H and GLM-4 mix licences by size or release,
so a family-wide glob can map a checkpoint to the wrong (often the more permissive) licence. The
table below pins the resolution of real checkpoint ids; the comment on a row gives the entry the
2026.11.0 packs chose when it was wrong.
"""

from __future__ import annotations

import pytest

from audit.policy.conditions import matches_any
from audit.policy.teachers import _specificity, resolve_teacher

W = "weights"

# (teacher.model, access, teacher entry id, terms ids of that entry)
CHECKPOINTS = [
    # --- Qwen2: the 72B size keeps the Tongyi Qianwen licence (was qwen-apache / Apache-2.0) ---
    ("Qwen/Qwen2-72B-Instruct", W, "qwen2-tongyi", ("tongyi-qianwen-license-2023",)),
    ("Qwen/Qwen2-72B", W, "qwen2-tongyi", ("tongyi-qianwen-license-2023",)),
    ("Qwen/Qwen2-72B-Instruct-AWQ", W, "qwen2-tongyi", ("tongyi-qianwen-license-2023",)),
    ("Qwen/Qwen2-Math-72B-Instruct", W, "qwen2-math-72b", ("tongyi-qianwen-license-2023",)),
    ("Qwen/Qwen2-Math-72B", W, "qwen2-math-72b", ("tongyi-qianwen-license-2023",)),
    ("Qwen/Qwen2-7B-Instruct", W, "qwen2-apache", ("apache-2.0",)),
    ("Qwen/Qwen2-57B-A14B-Instruct", W, "qwen2-apache", ("apache-2.0",)),
    ("Qwen/Qwen2-Math-7B-Instruct", W, "qwen2-apache", ("apache-2.0",)),
    ("Qwen/Qwen2-VL-7B-Instruct", W, "qwen2-apache", ("apache-2.0",)),
    ("Qwen/Qwen2-VL-72B-Instruct", W, "qwen-license-72b", ("qwen-license-2024",)),
    # --- Qwen2.5: 72B -> Qwen licence, 3B -> research licence, other sizes Apache-2.0 -----------
    ("Qwen/Qwen2.5-72B-Instruct", W, "qwen-license-72b", ("qwen-license-2024",)),
    ("Qwen/Qwen2.5-72B", W, "qwen-license-72b", ("qwen-license-2024",)),
    ("Qwen/Qwen2.5-VL-72B-Instruct", W, "qwen-license-72b", ("qwen-license-2024",)),
    ("Qwen/QVQ-72B-Preview", W, "qwen-license-72b", ("qwen-license-2024",)),
    ("Qwen/Qwen2.5-Math-72B-Instruct", W, "qwen2.5-math-72b", ("qwen-license-2024",)),  # was qwen-apache
    ("Qwen/Qwen2.5-Math-PRM-72B", W, "qwen2.5-math-72b", ("qwen-license-2024",)),  # was qwen-apache
    ("Qwen/Qwen2.5-3B-Instruct", W, "qwen-research", ("qwen-research-license",)),
    ("Qwen/Qwen2.5-3B", W, "qwen-research", ("qwen-research-license",)),
    ("Qwen/Qwen2.5-VL-3B-Instruct", W, "qwen-research", ("qwen-research-license",)),
    ("Qwen/Qwen2.5-Coder-3B-Instruct", W, "qwen-research", ("qwen-research-license",)),
    ("Qwen/Qwen2.5-Omni-3B", W, "qwen-research", ("qwen-research-license",)),  # was qwen-apache
    ("Qwen/Qwen2.5-32B-Instruct", W, "qwen-apache", ("apache-2.0",)),  # was qwen-research (3B* glob)
    ("Qwen/Qwen2.5-7B-Instruct", W, "qwen-apache", ("apache-2.0",)),
    ("Qwen/Qwen2.5-7B-Instruct-1M", W, "qwen-apache", ("apache-2.0",)),
    ("Qwen/Qwen2.5-0.5B", W, "qwen-apache", ("apache-2.0",)),
    ("Qwen/Qwen2.5-Coder-32B-Instruct", W, "qwen2.5-coder-apache", ("apache-2.0",)),  # was qwen-research
    ("Qwen/Qwen2.5-Coder-7B", W, "qwen2.5-coder-apache", ("apache-2.0",)),
    ("Qwen/Qwen2.5-VL-32B-Instruct", W, "qwen2.5-vl-apache", ("apache-2.0",)),  # was qwen-research
    ("Qwen/Qwen2.5-VL-7B-Instruct", W, "qwen2.5-vl-apache", ("apache-2.0",)),
    ("Qwen/Qwen2.5-Math-7B-Instruct", W, "qwen2.5-math-apache", ("apache-2.0",)),
    ("Qwen/QwQ-32B", W, "qwq", ("apache-2.0",)),
    # --- first generation and Qwen1.5: research vs commercial Tongyi Qianwen licence -------------
    ("Qwen/Qwen-72B-Chat", W, "qwen-1", ("tongyi-qianwen-license-2023",)),
    ("Qwen/Qwen-1_8B-Chat", W, "qwen-1-research", ("tongyi-qianwen-research-license-2023",)),  # was qwen-1
    ("Qwen/Qwen1.5-0.5B-Chat", W, "qwen-1-research", ("tongyi-qianwen-research-license-2023",)),
    ("Qwen/Qwen1.5-7B-Chat", W, "qwen-1.5", ("tongyi-qianwen-license-2023",)),
    ("Qwen/Qwen1.5-110B-Chat", W, "qwen-1.5", ("tongyi-qianwen-license-2023",)),
    # --- Qwen3 --------------------------------------------------------------------------------------
    ("Qwen/Qwen3-8B", W, "qwen-apache", ("apache-2.0",)),
    ("Qwen/Qwen3-235B-A22B-Thinking-2507", W, "qwen-apache", ("apache-2.0",)),
    ("Qwen/Qwen3-Coder-480B-A35B-Instruct", W, "qwen3-coder", ("apache-2.0",)),
    ("Qwen/Qwen3-Coder-30B-A3B-Instruct", W, "qwen3-coder", ("apache-2.0",)),
    ("qwen-max", "api", "qwen-model-studio-api", ("alibaba-model-studio-terms",)),
    # --- DeepSeek: licence changed between releases of V3 ----------------------------------------
    ("deepseek-ai/DeepSeek-V3", W, "deepseek-license-models", ("deepseek-license-1.0",)),
    ("deepseek-ai/DeepSeek-V3-Base", W, "deepseek-license-models", ("deepseek-license-1.0",)),
    ("deepseek-ai/DeepSeek-V3.1", W, "deepseek-v3-mit", ("mit",)),
    ("deepseek-ai/DeepSeek-V3.1-Terminus", W, "deepseek-v3-mit", ("mit",)),
    ("deepseek-ai/DeepSeek-V3.2-Exp", W, "deepseek-v3-mit", ("mit",)),
    ("deepseek-ai/DeepSeek-V4-Flash", W, "deepseek-v4", ("mit",)),
    ("deepseek-ai/DeepSeek-R1", W, "deepseek-r1", ("mit", "deepseek-r1-readme")),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", W, "deepseek-r1-distill-qwen", ("mit", "deepseek-r1-readme")),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", W, "deepseek-r1-distill-llama-70b", ("mit",)),
    # --- Meta ----------------------------------------------------------------------------------------
    ("meta-llama/CodeLlama-7b-Instruct-hf", W, "code-llama", ("llama-2-license",)),
    ("meta-llama/Llama-3.2-3B-Instruct", W, "llama-3.2", ("llama-3.2-license",)),
    ("meta-llama/Llama-3.2-11B-Vision-Instruct", W, "llama-3.2-vision",
     ("llama-3.2-license", "llama-3.2-multimodal-terms")),
    ("meta-llama/Llama-4-Scout-17B-16E-Instruct", W, "llama-4", ("llama-4-license",)),
    # --- Google ----------------------------------------------------------------------------------------
    ("google/gemma-3-27b-it", W, "gemma", ("gemma-terms-of-use",)),
    ("google/gemma-3n-E4B-it", W, "gemma", ("gemma-terms-of-use",)),
    ("google/gemma-4-31b-it", W, "gemma-4", ("apache-2.0",)),
    # --- Mistral: Apache vs research vs non-production vs unverified --------------------------------
    ("mistralai/Mistral-Small-3.2-24B-Instruct-2506", W, "mistral-apache", ("apache-2.0",)),
    ("mistralai/Mistral-Small-Instruct-2409", W, "mistral-research", ("mistral-research-license",)),
    ("mistralai/Mistral-Large-Instruct-2411", W, "mistral-research", ("mistral-research-license",)),
    ("mistralai/Codestral-22B-v0.1", W, "mistral-non-production", ("mistral-non-production-license",)),
    ("mistralai/Magistral-Small-2506", W, "magistral-small", ("apache-2.0",)),
    ("mistralai/Devstral-Small-2505", W, "devstral-small", ("apache-2.0",)),
    ("mistralai/Devstral-Small-2-24B-Instruct-2512", W, "devstral-small", ("apache-2.0",)),
    ("mistralai/Devstral-2-123B-Instruct-2512", W, "devstral-2", ("devstral-2-license",)),
    # --- NVIDIA: Nemotron-H base models are research-only (was nvidia-open-model) ------------------
    ("nvidia/Nemotron-H-8B-Base-8K", W, "nemotron-h-research", ("nvidia-internal-research-license",)),
    ("nvidia/Nemotron-H-47B-Base-8K", W, "nemotron-h-research", ("nvidia-internal-research-license",)),
    ("nvidia/Nemotron-H-56B-Base-8K", W, "nemotron-h-other", ("nvidia-nemotron-h-licence-check",)),
    ("nvidia/Nemotron-4-340B-Instruct", W, "nvidia-open-model", ("nvidia-open-model-license",)),
    ("nvidia/NVIDIA-Nemotron-Nano-9B-v2", W, "nemotron-nano", ("nvidia-open-model-license",)),
    ("nvidia/Llama-3_3-Nemotron-Super-49B-v1", W, "llama-nemotron-super",
     ("nvidia-open-model-license", "llama-3.3-license")),
    # --- others ----------------------------------------------------------------------------------------
    ("ibm-granite/granite-3.1-8b-instruct", W, "granite-3", ("apache-2.0",)),
    ("ibm-granite/granite-4.0-h-tiny", W, "granite-4", ("apache-2.0",)),
    ("tiiuae/falcon-40b-instruct", W, "falcon-apache", ("apache-2.0",)),
    ("tiiuae/falcon-180B-chat", W, "falcon-180b", ("falcon-180b-license",)),
    ("tiiuae/Falcon3-10B-Instruct", W, "falcon-2-3", ("tii-falcon-license-2.0",)),
    ("tiiuae/Falcon-H1-7B-Instruct", W, "falcon-h1", ("tii-falcon-license-2.0",)),
    ("CohereLabs/c4ai-command-a-03-2025", W, "cohere-command-a", ("cc-by-nc-4.0", "cohere-c4ai-aup")),
    ("CohereLabs/c4ai-command-r7b-12-2024", W, "cohere-command-r", ("cc-by-nc-4.0", "cohere-c4ai-aup")),
    ("microsoft/Phi-4-reasoning", W, "microsoft-phi", ("mit",)),
    ("openai/gpt-oss-20b", W, "gpt-oss", ("apache-2.0", "gpt-oss-usage-policy")),
    ("xai-org/grok-2", W, "grok-2-weights", ("grok-2-community-license",)),
    ("xai-org/grok-1", W, "grok-1-weights", ("apache-2.0",)),
    ("zai-org/GLM-4.5", W, "glm-4.5", ("mit",)),
    ("zai-org/GLM-4.6", W, "glm-4.5", ("mit",)),
    ("THUDM/GLM-4-9B-0414", W, "glm-4-0414", ("mit",)),  # exact id beats the glm-4-9b glob
    ("THUDM/glm-4-9b-chat", W, "glm-4-9b", ("glm-4-license",)),
    ("moonshotai/Kimi-K2-Instruct", W, "kimi-k2", ("kimi-k2-license",)),
    ("baidu/ERNIE-4.5-300B-A47B-PT", W, "ernie-4.5", ("apache-2.0",)),
    ("tencent/Hunyuan-A13B-Instruct", W, "hunyuan", ("tencent-hunyuan-community-license",)),
]

# Checkpoints whose licence was not verified: they must stay unknown (REVIEW), not fall to a glob.
UNKNOWN = [
    ("Qwen/Qwen3.5-27B", W),          # Qwen/Qwen3* used to map later releases to Apache-2.0
    ("Qwen/Qwen1.5-72B-Chat", W),
    ("Qwen/Qwen2.5-Omni-7B", W),
    ("deepseek-ai/DeepSeek-V3-0324", W),
    ("moonshotai/Kimi-K2.5", W),
    ("MiniMaxAI/MiniMax-M2", W),
    ("internlm/internlm3-8b-instruct", W),
    ("zai-org/GLM-5", W),
    ("kimi-k2-0905-preview", "api"),
    ("glm-4.6", "api"),
]


@pytest.mark.parametrize("model,access,entry_id,terms", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_checkpoint_resolves_to_its_own_licence(builtin_packs, model, access, entry_id, terms):
    res = resolve_teacher(model, access, None, builtin_packs)
    assert [e.id for _, e in res.entries] == [entry_id], "exactly one built-in entry must win"
    assert res.terms == terms


@pytest.mark.parametrize("model,access", UNKNOWN, ids=[u[0] for u in UNKNOWN])
def test_unverified_checkpoints_stay_unknown(builtin_packs, model, access):
    res = resolve_teacher(model, access, None, builtin_packs)
    assert res.entries == () and res.terms == ()


def test_explicit_checkpoint_beats_family_glob():
    """The resolution rule: the most literal characters win, so a full checkpoint id (no
    wildcard) outranks any glob that also matches it with at least one character under '*'."""
    assert _specificity("Qwen/Qwen2-72B-Instruct") > _specificity("Qwen/Qwen2-*")
    assert _specificity("Qwen/Qwen2.5-Math-72B") > _specificity("Qwen/Qwen2.5-*")
    assert _specificity("THUDM/GLM-4-9B-0414") > _specificity("THUDM/glm-4-9b-*")
    assert _specificity("nvidia/Nemotron-H-8B-Base-8K") > _specificity("nvidia/Nemotron-H-*")


def test_every_exact_pattern_resolves_to_its_own_entry(builtin_packs):
    """A pattern without wildcards names one checkpoint; that checkpoint must resolve to the entry
    that lists it and to no other entry (no tie with a family glob, no duplicate listing)."""
    problems = []
    for _, entry in builtin_packs.teachers():
        for pattern in entry.models:
            if any(ch in pattern for ch in "*?["):
                continue
            res = resolve_teacher(pattern, entry.channel, None, builtin_packs)
            got = [e.id for _, e in res.entries]
            if got != [entry.id]:
                problems.append(f"{pattern} ({entry.channel}): {got}, expected [{entry.id}]")
    assert not problems, problems


def test_teacher_coverage_is_at_least_80_entries(builtin_packs):
    assert len(builtin_packs.teachers()) >= 80


def test_no_size_glob_swallows_a_larger_size(builtin_packs):
    """'...-3B*' also matches '...-32B'; size patterns must end at the size ('3B' or '3B-*')."""
    for model, other in [("Qwen/Qwen2.5-32B-Instruct", "qwen-research"),
                         ("Qwen/Qwen2.5-Coder-32B-Instruct", "qwen-research"),
                         ("Qwen/Qwen2.5-VL-32B-Instruct", "qwen-research"),
                         ("Qwen/Qwen2-72B-Instruct", "qwen2-apache"),
                         ("Qwen/Qwen2.5-Math-72B-Instruct", "qwen2.5-math-apache")]:
        candidates = [e for _, e in builtin_packs.teachers() if e.id == other]
        assert candidates, other
        assert not matches_any(model, candidates[0].models), (model, other)
