"""The 6·N·D figure reproduces published training compute within 2%."""

import json

import pytest

from audit.cli.main import main

PUBLISHED = [
    ("gpt3-175b", 3.0e11, 3.14e23, 3.14e23),          # Brown et al. 2020, Table D.1
    ("palm-540b", 7.8e11, 2.527e24, 2.527e24),        # Chowdhery et al. 2022, App. B
    ("llama-3.1-405b", 1.56e13, 3.8e25, 3.8e25),      # Llama 3 paper
    ("llama-2-70b", 2.0e12, 8.1e23, 8.4e23),          # Epoch / model card range
    ("qwen2.5-72b", 1.8e13, 7.8e24, 7.8e24),          # Epoch 6ND
]


@pytest.mark.parametrize("name,tokens,low,high", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_six_nd_reproduces_published_compute(name, tokens, low, high, capsys):
    assert main(["flops", name, "--tokens", str(tokens), "--seq-len", "128", "--json", "--no-cache"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert low * 0.98 <= data["six_nd_flops"] <= high * 1.02
    assert {"total_flops", "six_nd_flops", "params_total", "params_active", "components", "coverage"} <= set(data)
