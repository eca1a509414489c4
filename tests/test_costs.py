"""What an answer costs: FLOPs counted per engine step, energy from RAPL/NVML or the reason there is none, and
the figures in /metrics, /admin/versions and the bot's /stats."""
import pytest
import torch

from bot.stats import format_cost
from llmcore.costs import EnergyMeter, step_flops, token_flops
from llmcore.engine import Engine
from llmcore.model import ModelConfig, build_model
from llmcore.sampling import SamplingParams

CONFIG = ModelConfig(arch="transformer", vocab_size=50, n_layer=2, n_embd=32, n_head=4, block_size=64)


def test_flops_count_every_linear_layer_the_attention_span_and_the_output_layer_once_per_chosen_token():
    c, layers, vocab = 32, 2, 50
    assert token_flops(CONFIG, 0) == layers * (24 * c * c + 4 * c)
    assert token_flops(CONFIG, 9) - token_flops(CONFIG, 0) == layers * 4 * c * 9  # attention grows with the position
    head = 2 * c * vocab
    assert step_flops(CONFIG, [3], []) == sum(token_flops(CONFIG, p) for p in range(3)) + head
    assert step_flops(CONFIG, [], [5, 7]) == token_flops(CONFIG, 5) + token_flops(CONFIG, 7) + 2 * head
    lstm = ModelConfig(arch="lstm", vocab_size=50, n_layer=2, n_embd=32)
    assert token_flops(lstm, 0) == token_flops(lstm, 100) == 2 * 2 * 4 * 64 * 32


def test_the_engine_reports_the_flops_of_each_step():
    torch.manual_seed(0)
    engine = Engine(build_model(CONFIG), set(), max_batch=2)
    engine.add([5, 6, 7], SamplingParams(max_new_tokens=4), ignore_stop=True)
    engine.step()  # prefill of 3 tokens, the first new token
    assert engine.last_step_flops == step_flops(CONFIG, [3], []) and engine.last_step_tokens == 1
    engine.step()  # the first new token is fed at position 3
    assert engine.last_step_flops == step_flops(CONFIG, [], [3]) and engine.last_step_tokens == 1


def rapl_zone(root, name, energy_uj, max_uj):
    zone = root / name
    zone.mkdir()
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


def test_rapl_energy_adds_up_packages_and_survives_the_counter_wrapping(tmp_path):
    first = rapl_zone(tmp_path, "intel-rapl:0", 999_000_000, 1_000_000_000)
    rapl_zone(tmp_path, "intel-rapl:1", 5_000_000, 1_000_000_000)
    meter = EnergyMeter._rapl(str(tmp_path / "intel-rapl:[0-9]*"))
    assert meter.unavailable is None and meter.joules() == 0.0
    (first / "energy_uj").write_text("2000000\n")  # wrapped: 1,000 J up to the range, then 2 J
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("8000000\n")
    assert meter.joules() == pytest.approx(3.0 + 3.0)


def test_without_rapl_energy_is_not_available_and_says_why(tmp_path):
    meter = EnergyMeter._rapl(str(tmp_path / "intel-rapl:[0-9]*"))
    assert meter.joules() is None and "RAPL" in meter.unavailable


def test_stats_line_shows_flops_and_energy_or_why_not():
    assert format_cost({"flops_per_token": 4.2e6, "joules_per_1k_tokens": 12.34, "energy_unavailable": None}) == \
        "Cost per answer: 4.2 MFLOP per generated token; 12.3 J per 1,000 tokens"
    line = format_cost({"flops_per_token": 4.2e6, "joules_per_1k_tokens": None, "energy_unavailable": "no RAPL powercap"})
    assert line == "Cost per answer: 4.2 MFLOP per generated token; energy n/a (no RAPL powercap)"
    assert "no model answers" in format_cost({"flops_per_token": None, "joules_per_1k_tokens": None})
