"""Models: cached incremental decoding equals the full forward pass, for both architectures."""
import pytest
import torch

from llmcore.model import ARCHS, ModelConfig, build_model, default_config, resolve_device

TOL = 1e-4


def tiny(arch: str, vocab: int = 61, block: int = 48) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, vocab_size=vocab, n_layer=2, n_embd=32, n_head=4, block_size=block)).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_token_by_token_decoding_equals_full_forward(arch):
    model = tiny(arch)
    idx = torch.randint(0, 61, (3, 40))
    full = model(idx)
    cache = model.new_cache(3)
    steps = [model.step(idx[:, t : t + 1], cache, all_logits=True) for t in range(40)]
    assert (torch.cat(steps, 1) - full).abs().max().item() <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_then_steps_equals_full_forward(arch):
    model = tiny(arch)
    idx = torch.randint(0, 61, (2, 30))
    full = model(idx)
    cache = model.new_cache(2, max_len=30)
    first = model.step(idx[:, :17], cache, all_logits=True)
    rest = [model.step(idx[:, t : t + 1], cache, all_logits=True) for t in range(17, 30)]
    assert (torch.cat([first] + rest, 1) - full).abs().max().item() <= TOL
    assert cache.lengths.tolist() == [30, 30]


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_of_different_lengths_decode_together(arch):
    """What the batching engine relies on: ragged rows, and steps on a subset of rows."""
    model = tiny(arch)
    idx = torch.randint(0, 61, (4, 25))
    full = model(idx)
    lengths = [5, 19, 1, 11]
    cache = model.new_cache(4)
    for row, n in enumerate(lengths):
        model.step(idx[row : row + 1, :n], cache, rows=torch.tensor([row]))
    step_in = torch.stack([idx[r, n : n + 1] for r, n in enumerate(lengths)])  # (4, 1)
    last = model.step(step_in, cache)
    expected = torch.stack([full[r, n] for r, n in enumerate(lengths)])
    assert (last - expected).abs().max().item() <= TOL
    subset = torch.tensor([3, 1])
    nxt = model.step(torch.stack([idx[3, 12:13], idx[1, 20:21]]), cache, rows=subset)
    assert (nxt - torch.stack([full[3, 12], full[1, 20]])).abs().max().item() <= TOL
    assert cache.lengths.tolist() == [6, 21, 2, 13]


def test_padded_prefill_into_fresh_and_used_rows_equals_full_forward():
    """The engine's prefill: right-padded prompts into empty rows (run packed, padding never reaches the layers) and
    into rows that already hold tokens (the masked path); each row's logits are its last real token's, and decoding
    after them equals the full forward pass."""
    model = tiny("transformer")
    idx = torch.randint(0, 61, (4, 30))
    full = model(idx)
    lengths = torch.tensor([7, 20, 1, 13])
    cache = model.new_cache(6)
    cache.k.normal_()  # stale keys of earlier sequences: masked by the lengths, overwritten by new ones
    rows = torch.tensor([5, 0, 3, 2])
    padded = idx.masked_fill(torch.arange(30)[None, :] >= lengths[:, None], 0)[:, :20]
    last = model.step(padded, cache, rows=rows, lengths=lengths)
    assert (last - full[torch.arange(4), lengths - 1]).abs().max().item() <= TOL
    assert cache.lengths[rows].tolist() == lengths.tolist()
    more = torch.tensor([3, 2, 5, 4])  # a second padded chunk after what the rows hold
    chunk = torch.stack([idx[r, n : n + 5] for r, n in enumerate(lengths.tolist())])
    last = model.step(chunk, cache, rows=rows, lengths=more)
    assert (last - full[torch.arange(4), lengths + more - 1]).abs().max().item() <= TOL
    step_in = torch.stack([idx[r, n : n + 1] for r, n in enumerate((lengths + more).tolist())])
    nxt = model.step(step_in, cache, rows=rows)
    assert (nxt - full[torch.arange(4), lengths + more]).abs().max().item() <= TOL


def test_transformer_rejects_context_beyond_its_block():
    model = tiny("transformer", block=16)
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = model.new_cache(1)
    model.step(torch.zeros(1, 16, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="context full"):
        model.step(torch.zeros(1, 1, dtype=torch.long), cache)


@pytest.mark.parametrize("arch", ARCHS)
def test_weights_are_tied_and_config_round_trips(arch):
    model = tiny(arch)
    assert model.head.weight.data_ptr() == model.wte.weight.data_ptr()
    assert ModelConfig.from_dict(model.config.to_dict()) == model.config


def test_config_rejects_unknown_keys_and_arches():
    with pytest.raises(ValueError, match="unknown arch"):
        ModelConfig(arch="gru", vocab_size=10)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"arch": "lstm", "vocab_size": 10, "wings": 2})


@pytest.mark.parametrize("arch", ARCHS)
def test_default_sizes_are_small_enough_for_cpu_minutes(arch):
    params = build_model(default_config(arch, 8000)).num_params()
    assert 1e6 < params < 6e6


def test_dropout_acts_on_the_residual_branches_not_on_the_attention_weights():
    """Training mode: attention alone is deterministic (dropout on its weights cost a third of a CPU training step),
    while the block around it still drops out."""
    torch.manual_seed(0)
    block = build_model(default_config("transformer", 64)).blocks[0].train()
    x = torch.randn(2, 40, block.ln_1.normalized_shape[0])
    assert torch.equal(block.attn(x), block.attn(x))
    assert not torch.equal(block(x), block(x))


def test_device_auto_follows_cuda_availability():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU versions above always run)")
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decoding_equals_full_forward_on_cuda(arch):
    model = tiny(arch).cuda()
    idx = torch.randint(0, 61, (3, 40), device="cuda")
    full = model(idx)
    cache = model.new_cache(3)
    assert cache.k.device.type == "cuda" and cache.lengths.device.type == "cpu"  # bookkeeping stays on the host
    steps = [model.step(idx[:, t : t + 1], cache, all_logits=True) for t in range(40)]
    assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-3  # TF32 matmuls on the GPU
