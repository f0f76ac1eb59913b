import pytest

import nfd_rt
from nfd_rt.configs import NFDConfig


def test_named_configs_and_roundtrip():
    assert nfd_rt.configs.names() == ["tiny", "nfd-130m", "nfd-310m"]
    for name in nfd_rt.configs.names():
        cfg = nfd_rt.configs.get(name)
        assert NFDConfig.from_json(cfg.to_json()) == cfg
    big = nfd_rt.configs.get("nfd-310m")
    assert (big.latent_height, big.latent_width, big.tokens_per_frame) == (28, 48, 336)
    assert (big.hidden_size, big.depth, big.num_heads, big.window + big.sink_frames) == (1024, 16, 16, 32)


def test_unknown_name_and_bad_fields():
    with pytest.raises(ValueError, match="unknown config 'huge'"):
        nfd_rt.configs.get("huge")
    with pytest.raises(ValueError, match="rope_dims"):
        nfd_rt.configs.get("tiny").replace(rope_dims=(8, 8, 8))
    with pytest.raises(ValueError, match="schedule"):
        nfd_rt.configs.get("tiny").replace(schedule=(0.5, 1.0))
    with pytest.raises(ValueError, match="unknown config fields"):
        NFDConfig.from_dict({**nfd_rt.configs.get("tiny").to_dict(), "bogus": 1})


@pytest.mark.parametrize("name,target", [("nfd-130m", 130e6), ("nfd-310m", 310e6)])
def test_dit_parameter_counts_match_names(name, target):
    torch = pytest.importorskip("torch", reason="needs torch (the `torch` extra)")
    from nfd_rt.reference import NFDModel

    with torch.device("meta"):
        model = NFDModel(nfd_rt.configs.get(name), init_seed=None)
    count = sum(p.numel() for p in model.dit.parameters())
    assert abs(count - target) / target < 0.10, count
