"""config.py: --set parsing per field type, prefixes, unknown keys, from_dict, ModelConfig validation."""
import pytest

from gpt3lab.config import ModelConfig, TrainConfig, apply_overrides, check_overrides_known, from_dict
from gpt3lab.errors import ConfigError


def test_overrides_parse_by_field_type_and_prefix():
    cfg = apply_overrides(TrainConfig(), ["train.lr=3e-4", "max_steps=1e3", "compile=yes", "model.n_layer=2",
                                          "decay_steps=none"], "train")
    assert (cfg.lr, cfg.max_steps, cfg.compile, cfg.decay_steps) == (3e-4, 1000, True, None)
    assert isinstance(cfg.max_steps, int)
    assert apply_overrides(ModelConfig(), ["model.n_layer=2", "train.lr=1"], "model").n_layer == 2


@pytest.mark.parametrize("item, match", [("lr", "expected key=value"), ("train.max_steps=ten", "expected a int"),
                                         ("train.compile=maybe", "expected a bool")])
def test_bad_overrides_name_the_setting(item, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(TrainConfig(), [item], "train")


def test_unknown_keys_are_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"--set train.lrr: unknown setting; valid: .*train\.lr"):
        check_overrides_known(["train.lrr=1"], ("train", TrainConfig()), ("model", ModelConfig()))
    check_overrides_known(["lr=1", "model.n_head=2"], ("train", TrainConfig()), ("model", ModelConfig()))
    with pytest.raises(ConfigError, match=r"cfg: unknown key\(s\) bogus; valid keys: .*n_layer"):
        from_dict(ModelConfig, {"n_layer": 2, "bogus": 1}, where="cfg")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        from_dict(ModelConfig, [1], where="cfg")


@pytest.mark.parametrize("kw, match", [(dict(n_layer=0), "model.n_layer=0"), (dict(attention_pattern="x"),
                                       "attention_pattern"), (dict(dropout=1.0), "model.dropout")])
def test_model_config_refuses_bad_shapes(kw, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kw)


def test_set_d_model_rederives_head_width_and_mlp_width():
    """--set model.d_model without a preset used to keep d_head=64 and d_ff=3072 of the 768-wide default."""
    from gpt3lab.config import ModelConfig, apply_overrides

    c = apply_overrides(ModelConfig(), ["model.d_model=32", "model.n_head=2"], "model")
    assert (c.d_head, c.d_ff, c.d_attn) == (16, 128, 32)
    c = apply_overrides(ModelConfig(n_head=40, d_model=5140, d_head=128), ["model.n_layer=2"], "model")
    assert c.d_head == 128                                   # set on purpose (the 13B row): kept
    c = apply_overrides(ModelConfig(d_model=64, n_head=2, d_head=8), ["model.d_model=128"], "model")
    assert c.d_head == 8                                     # differs from the derived 32: kept
    c = apply_overrides(ModelConfig(), ["model.d_model=64", "model.n_head=4", "model.d_ff=100"], "model")
    assert c.d_ff == 100
