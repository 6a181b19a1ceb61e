"""mindspore_nets.buckets against diffusers' PixArt resolution-binning tables."""

import pytest

from mindspore_nets import buckets
from mindspore_nets.buckets import bucket_table, closest_bucket, latent_hw, parse_buckets

from .helpers import run_python


@pytest.fixture(scope="module")
def diffusers_bins():
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
        ASPECT_RATIO_256_BIN,
        ASPECT_RATIO_512_BIN,
        ASPECT_RATIO_1024_BIN,
    )
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

    return {32: ASPECT_RATIO_256_BIN, 64: ASPECT_RATIO_512_BIN, 128: ASPECT_RATIO_1024_BIN, 256: ASPECT_RATIO_2048_BIN}


@pytest.fixture(scope="module")
def classify():
    pytest.importorskip("diffusers")
    from diffusers.image_processor import PixArtImageProcessor

    return PixArtImageProcessor.classify_height_width_bin


def _as_int_table(table):
    out = {}
    for key, (h, w) in table.items():
        assert float(h).is_integer() and float(w).is_integer(), (key, h, w)
        out[key] = (int(h), int(w))
    return out


@pytest.mark.parametrize("sample_size,n_entries", [(32, 33), (64, 33), (128, 33), (256, 40)])
def test_tables_equal_diffusers(diffusers_bins, sample_size, n_entries):
    ours = bucket_table(sample_size)
    ref = _as_int_table(diffusers_bins[sample_size])
    assert len(ours) == n_entries
    assert list(ours) == list(ref)  # same keys in the same order (order decides min() ties)
    assert ours == ref
    for h, w in ours.values():
        assert isinstance(h, int) and isinstance(w, int)


def test_original_tables():
    assert len(buckets.ASPECT_RATIO_1024) == 40
    assert buckets.ASPECT_RATIO_1024["1.0"] == (1024, 1024)
    assert buckets.ASPECT_RATIO_1024["0.26"] == (512, 1984)
    for key, (h, w) in buckets.ASPECT_RATIO_1024.items():
        assert h % 64 == 0 and w % 64 == 0
        assert 0.90e6 <= h * w <= 1.0 * 1024 * 1024 + 1, key
        assert buckets.ASPECT_RATIO_512[key] == (h // 2, w // 2)
        assert buckets.ASPECT_RATIO_256[key] == (h // 4, w // 4)
        assert buckets.ASPECT_RATIO_2048[key] == (2 * h, 2 * w)
    dropped = set(buckets.ASPECT_RATIO_1024) - set(buckets.ASPECT_RATIO_1024_BIN)
    assert dropped == {"0.26", "0.27", "2.89", "3.11", "3.62", "3.75", "3.88"}
    assert dict(buckets.ASPECT_RATIO_2048_BIN) == dict(buckets.ASPECT_RATIO_2048)
    with pytest.raises(TypeError):
        buckets.ASPECT_RATIO_1024["1.0"] = (1, 1)  # read-only
    table = bucket_table(128)
    table["1.0"] = (1, 1)  # a copy: the module table is unaffected
    assert bucket_table(128)["1.0"] == (1024, 1024)


SIZES = [
    (1024, 1024), (768, 1344), (1344, 768), (512, 512), (256, 256), (2048, 2048), (1080, 1920), (1920, 1080),
    (720, 1280), (600, 800), (800, 600), (100, 1000), (1000, 100), (2000, 500), (500, 2000), (1, 4), (4, 1),
    (530, 2048), (1980, 512), (577, 1000), (3, 2), (2, 3), (999, 1001), (1001, 999), (1234, 4321), (4321, 1234),
    (1850, 512), (1600, 555), (300, 1100), (1152, 896), (1023, 1024), (1, 1000), (1000, 1),
]


@pytest.mark.parametrize("sample_size", [32, 64, 128, 256])
def test_closest_bucket_matches_diffusers(diffusers_bins, classify, sample_size):
    sizes = SIZES + [(h, w) for h, w in bucket_table(sample_size).values()]
    # ratios exactly between two neighbouring keys (tie -> first key in table order)
    keys = list(bucket_table(sample_size))
    sizes += [(round((float(a) + float(b)) / 2 * 10000), 10000) for a, b in zip(keys, keys[1:])]
    for h, w in sizes:
        key, hw = closest_bucket(h, w, sample_size)
        assert hw == classify(h, w, ratios=diffusers_bins[sample_size]), (h, w)
        assert bucket_table(sample_size)[key] == hw


def test_closest_bucket_examples():
    assert closest_bucket(1024, 1024, 128) == ("1.0", (1024, 1024))
    assert closest_bucket(1080, 1920, 128) == ("0.57", (768, 1344))
    assert closest_bucket(1920, 1080, 256) == ("1.75", (2688, 1536))
    # 3.11 exists only in the 2048 table
    assert closest_bucket(3110, 1000, 256)[0] == "3.11"
    assert closest_bucket(3110, 1000, 128)[0] == "3.0"
    with pytest.raises(ValueError):
        closest_bucket(0, 1024, 128)


def test_bucket_table_invalid_sample_size():
    with pytest.raises(ValueError, match="Invalid sample size 96"):
        bucket_table(96)


def test_parse_buckets():
    assert parse_buckets("all", 128) == list(bucket_table(128))
    assert parse_buckets(" ALL ", 256) == list(bucket_table(256))
    assert parse_buckets("1.0,0.57", 128) == ["1.0", "0.57"]
    assert parse_buckets(" 1.0 , 0.57 ,1.0,", 64) == ["1.0", "0.57"]
    assert parse_buckets("0.26", 256) == ["0.26"]


@pytest.mark.parametrize(
    "spec,bad",
    [("1", "'1'"), ("1.0,0.26", "'0.26'"), ("1.00", "'1.00'"), ("square", "'square'"), ("1.0,2,7.5", "'2', '7.5'")],
)
def test_parse_buckets_unknown_key(spec, bad):
    with pytest.raises(ValueError) as info:
        parse_buckets(spec, 128)
    msg = str(info.value)
    assert bad in msg
    assert "valid: 0.25, 0.28," in msg and "4.0" in msg  # lists the valid keys


def test_parse_buckets_empty_and_bad_sample_size():
    with pytest.raises(ValueError, match="empty"):
        parse_buckets(" , ", 128)
    with pytest.raises(ValueError, match="Invalid sample size"):
        parse_buckets("all", 100)


def test_latent_hw():
    assert latent_hw((1024, 1024)) == (128, 128)
    assert latent_hw((768, 1344)) == (96, 168)
    assert latent_hw(bucket_table(32)["0.28"]) == (16, 58)
    for sample_size in (32, 64, 128, 256):
        assert latent_hw(bucket_table(sample_size)["1.0"]) == (sample_size, sample_size)


def test_buckets_module_is_torch_free():
    proc = run_python("from mindspore_nets.buckets import closest_bucket\n"
                      "assert closest_bucket(768, 1344, 128) == ('0.57', (768, 1344))\n")
    assert proc.returncode == 0, proc.stderr
