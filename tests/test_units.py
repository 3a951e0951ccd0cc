"""Labels, units and 3-4 significant figures read from result key names (workbook.units)."""
import pytest

from workbook import units


@pytest.mark.parametrize("key, unit", [
    ("best_b1_latency_ms", "ms"), ("search_seconds", "s"), ("load_s", "s"), ("peak_gb", "GB"),
    ("host_rss_mb", "MB"), ("peak_memory_mib", "MiB"), ("free_gib", "GiB"),
    ("interp_share_pct", "%"), ("speed_x", "×"), ("throughput_img_s", "img/s"),
    ("decode_tokens_s", "tokens/s"), ("decode_tok_s", "tok/s"), ("power_w", "W"), ("energy_j", "J"),
    ("sm_clock_mhz", "MHz"), ("gpu_temp_c", "°C"), ("decode_weight_gb_s", "GB/s"),
    ("mean_ulp", "ulp"),
    # ratio words: a ratio, whatever else the key says
    ("decode_speedup_over_one_process", "×"), ("peak_memory_ratio", "×"), ("latency_ms_ratio", "×"),
    ("fwd_bwd_speedup_low", "×"),
    # a unit inside the key, or followed by "per X"
    ("interp_ms_fastest_bilinear_1024px_bfloat16", "ms"), ("tower_saving_pct_1024px_b1", "%"),
    ("energy_j_per_step", "J/step"), ("decode_ms_per_step_p50", "ms/step"),
    ("decode_tokens_s_per_seq", "tokens/s/seq"),
    # no unit: counts, flags, names; one-letter units count only at the end
    ("batch", None), ("completion_tokens", None), ("cosine_min", None), ("best_b1_config", None),
    ("x_is_s_not", None), ("c_offset", None), ("w", None), ("x", None), ("s", None), ("ms", "ms"),
])
def test_unit(key, unit):
    assert units.unit(key) == unit


@pytest.mark.parametrize("key, label", [
    ("best_b1_latency_ms", "best batch-1 latency"),
    ("decode_speedup_over_one_process", "decode speed-up over one process"),
    ("search_seconds", "search"),
    ("best_throughput_img_s", "best throughput"),
    ("stack_b256_fwd_bwd_speedup", "stack batch-256 forward+backward speed-up"),
    ("tower_saving_pct_1024px_b1", "tower saving 1024px batch-1"),
    ("decode_ms_per_step_p50", "decode p50"),
    ("latency_ms_ratio", "latency ratio"),
    ("speed_x", "speed"),
    ("n", "n"),
    ("ms", "ms"),  # nothing left but the unit: the key itself
])
def test_label(key, label):
    assert units.label(key) == label


@pytest.mark.parametrize("value, text", [
    (1162.3, "1162"), (12.345, "12.3"), (0.05835, "0.0584"), (-0.05835, "-0.0584"),
    (1234.5, "1235"), (999.7, "1000"), (999.4, "999"), (123.45, "123"), (2.0, "2"), (0.0, "0"),
    (9.996, "10"), (1.5e6, "1.5e+06"), (1.2e-5, "1.2e-05"), (7, "7"), (123456789, "123456789"),
    (True, "yes"), (False, "no"), (float("nan"), "nan"),
])
def test_number(value, text):
    assert units.number(value) == text


def test_fmt_with_units():
    assert units.fmt(1162.3, "best_b1_latency_ms") == "1162 ms"
    # × and % follow the number
    assert units.fmt(0.05835, "decode_speedup_over_one_process") == "0.0584×"
    assert units.fmt(12.345, "search_seconds") == "12.3 s"
    assert units.fmt(12.34, "tower_saving_pct_1024px_b1") == "12.3%"
    assert units.fmt(256, "batch_ms") == "256 ms"  # ints stay ints
    assert units.fmt(1.5, None) == "1.5" and units.fmt(1.5, "cosine_min") == "1.5"


def test_fmt_non_numbers():
    assert units.fmt(None, "x_ms") == "-"
    assert units.fmt("eager b1", "best_b1_config") == "eager b1"  # text unchanged, no unit
    assert units.fmt("1.23456", "x_ms") == "1.23456"
    assert units.fmt(True, "count_ms") == "yes"  # a flag never takes a unit
    assert units.fmt([1, 2], "sizes") == "[1, 2]"


def test_headline_items_keep_order():
    head = {"best_b1_latency_ms": 1162.3, "decode_speedup_over_one_process": 0.05835, "path": "tp",
            "tokens_identical": False, "ttft_ms": None}
    assert units.headline_items(head) == [
        ("best batch-1 latency", "1162 ms"), ("decode speed-up over one process", "0.0584×"),
        ("path", "tp"), ("tokens identical", "no"), ("ttft", "-")]
    assert units.headline_items({}) == [] and units.headline_items(None) == []
