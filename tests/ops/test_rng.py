import numpy as np
import pytest

from nfd_rt import rng

# Known-answer vectors of Philox4x32-10 from Random123 (kat_vectors).
KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    out = rng.philox4x32_10(np.array(counter, np.uint32), np.array(key, np.uint32))
    assert out.tolist() == expected


def test_philox_is_vectorised_elementwise():
    counters = np.array([c for c, _, _ in KAT], np.uint32)
    keys = np.array([k for _, k, _ in KAT], np.uint32)
    assert rng.philox4x32_10(counters, keys).tolist() == [e for _, _, e in KAT]


def test_normal_counter_layout_and_statistics():
    z = rng.normal(seed=7, frame=3, step=1, count=40001)
    assert z.dtype == np.float32 and z.shape == (40001,)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    # Element e comes from counter (e // 4, frame, step, 0): a prefix is the same whatever the count.
    assert np.array_equal(rng.normal(7, 3, 1, 10), z[:10])
    # Lanes 0/1 are one Box-Muller pair of words 0/1.
    words = rng.philox4x32_10(np.array([2, 3, 1, 0], np.uint32), rng.seed_to_key(7))
    z0, z1 = rng.uniform_pair_to_normal(words[:1], words[1:2])
    assert z[8] == z0[0] and z[9] == z1[0]


def test_noise_depends_on_every_counter_part():
    base = rng.normal(1, 2, 0, 64)
    for other in (rng.normal(2, 2, 0, 64), rng.normal(1, 3, 0, 64), rng.normal(1, 2, 1, 64)):
        assert not np.array_equal(base, other)
    assert np.array_equal(base, rng.normal(1, 2, 0, 64))


def test_seed_key_split_and_range():
    assert rng.seed_to_key(0x0123456789ABCDEF).tolist() == [0x89ABCDEF, 0x01234567]
    with pytest.raises(ValueError, match="seed"):
        rng.seed_to_key(-1)
