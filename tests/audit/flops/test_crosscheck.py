"""Where fvcore and FlopCounterMode are right, we agree with them exactly.

fvcore counts one multiply-add as one "flop" (forward only), so ours = 2 x fvcore.
FlopCounterMode counts 2 per multiply-add and sees the backward pass, like us.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from audit.flops.counter import FlopCounter

fvcore = pytest.importorskip("fvcore.nn", reason="fvcore is a core dependency; install the project")


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))


def convnet():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 4, 3, stride=2), torch.nn.Flatten(), torch.nn.Linear(4 * 7 * 7, 10))


class LogitsOnly(torch.nn.Module):
    """fvcore's tracer needs tensors out; HF models return ModelOutput objects."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, use_cache=False).logits


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=101, n_positions=64)
    return GPT2LMHeadModel._from_config(config, attn_implementation="eager").eval()


CASES = [
    ("mlp", mlp, lambda: torch.randn(4, 32)),
    ("convnet", convnet, lambda: torch.randn(2, 3, 16, 16)),
    ("gpt2-eager", lambda: LogitsOnly(tiny_gpt2()), lambda: torch.randint(0, 101, (2, 32))),
]


def ours_forward(model, x):
    with FlopCounter() as counter:
        model(x)
    return counter.tally


@pytest.mark.parametrize("name,make,inputs", CASES, ids=[c[0] for c in CASES])
def test_forward_equals_twice_fvcore(name, make, inputs):
    model, x = make(), inputs()
    theirs = fvcore.FlopCountAnalysis(model, (x,))
    theirs.unsupported_ops_warnings(False)
    theirs.uncalled_modules_warnings(False)
    # fvcore also counts norms (4-5 per element); compare the matmul-type operators
    matmul_ops = {"addmm", "bmm", "matmul", "linear", "einsum", "conv", "_convolution", "mm"}
    theirs_matmul = sum(v for op, v in theirs.by_operator().items() if op in matmul_ops)
    assert theirs_matmul > 0
    assert ours_forward(model, x).headline == 2 * theirs_matmul


@pytest.mark.parametrize("name,make,inputs", CASES, ids=[c[0] for c in CASES])
def test_training_step_equals_flop_counter_mode(name, make, inputs):
    model, x = make(), inputs()
    with FlopCounterMode(display=False) as theirs:
        model(x).float().sum().backward()
    model.zero_grad()
    with FlopCounter() as ours:
        model(x).float().sum().backward()
    assert ours.tally.headline == theirs.get_total_flops()
    assert not ours.tally.unknown_calls
