"""Reading a config.json the way transformers does: the floats it writes as ``{"__float__": ...}``."""

import json
import math

import pytest

from audit.errors import InputError
from audit.flops.configs import resolve_config
from audit.flops.hf_config import build_config, decode_special_floats
from audit.flops.summary import summarize_model


def tiny_bamba(folder):
    """A two-layer Bamba (Mamba 2 + attention) saved by transformers itself: its
    ``time_step_limit`` (0.0, inf) is written as ``[0.0, {"__float__": "Infinity"}]``."""
    from transformers import BambaConfig

    BambaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=2, vocab_size=300, mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16,
                mamba_expand=2, attn_layer_indices=[1]).save_pretrained(folder)
    return folder / "config.json"


def test_a_config_transformers_saved_with_an_encoded_infinity_is_counted(tmp_path):
    from transformers import AutoConfig

    path = tiny_bamba(tmp_path / "saved")
    assert '"__float__": "Infinity"' in path.read_text()
    data = resolve_config(str(path)).data
    config = build_config(data, source=str(path))
    assert list(config.time_step_limit) == list(AutoConfig.from_pretrained(path.parent).time_step_limit)
    assert math.isinf(config.time_step_limit[1])

    # the same config with the bare literal (what older transformers wrote) counts the same
    bare = tmp_path / "bare" / "config.json"
    bare.parent.mkdir()
    bare.write_text(json.dumps({**data, "time_step_limit": [0.0, float("inf")]}))
    assert "Infinity" in bare.read_text() and "__float__" not in bare.read_text()
    saved, literal = (summarize_model(str(p), 64, use_cache=False) for p in (path, bare))
    assert saved.method == "counted"
    assert saved.train_flops_per_token == literal.train_flops_per_token > 0


def test_decoding_is_transformers_own():
    from transformers import PretrainedConfig

    value = {"a": [0.0, {"__float__": "Infinity"}], "b": {"c": {"__float__": "-Infinity"}},
             "d": {"__float__": "NaN"}, "unknown_tag": {"__float__": "Inf"}, "two_keys": {"__float__": "NaN", "x": 1},
             "not_a_string": {"__float__": 1}, "plain": 3}
    ours, theirs = decode_special_floats(value), PretrainedConfig._decode_special_floats(value)
    assert ours["a"] == [0.0, math.inf] and ours["b"]["c"] == -math.inf and math.isnan(ours["d"])
    assert {k: ours[k] for k in ("unknown_tag", "two_keys", "not_a_string", "plain")} == \
        {k: value[k] for k in ("unknown_tag", "two_keys", "not_a_string", "plain")}
    assert repr(ours) == repr(theirs)


def test_an_encoded_infinity_in_a_size_field_is_still_refused():
    data = dict(model_type="llama", hidden_size=64, num_hidden_layers={"__float__": "Infinity"},
                num_attention_heads=8, vocab_size=100)
    with pytest.raises(InputError, match="num_hidden_layers"):
        build_config(data, source="test")
