"""Unit tests for methods/: counts (formulas and published numbers), shapes, the math of each
method against a hand computation, gradients, export, initializers, build errors, state_dict."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from lrpt import methods
from lrpt.methods import build, count_trainable, initial_prompt

ALL = ["dept", "dpt", "lamp", "lopt1", "lopt2", "pt", "residual", "ulpt"]
USES_EMBEDDING = {"pt", "lamp", "residual", "dept"}  # methods that start from vocabulary/text rows


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def embedding(vocab: int, width: int, seed: int = 123) -> torch.Tensor:
    return torch.randn(vocab, width, generator=gen(seed))


def make(name: str, c: int, e: int, seed: int = 0, **kw) -> methods.PromptModule:
    """Build with a fake vocabulary for the methods that need one, and a seeded generator."""
    if name in USES_EMBEDDING:
        kw.setdefault("embedding_weight", embedding(200, e))
    return build(name, c, e, generator=gen(seed), **kw)


# ---------------------------------------------------------------- parameter counts

def formula(name: str, c: int, e: int, r: int) -> int:
    return {
        "pt": c * e,
        "dpt": c * r + r * e,
        "lopt1": r * (c + e),
        "lopt2": 2 * r * e,
        "lamp": c * r + r + r * e,
        "residual": c * e + 2 * e * r + r + e + 2 * e,  # r plays the bottleneck m here
        "dept": c * e + r * (256 + e),  # s = 256 input positions by default
        "ulpt": c * r + 2 * e,
    }[name]


def size_kw(name: str, r: int) -> dict:
    return {"pt": {}, "residual": {"bottleneck": r}}.get(name, {"rank": r})


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("c,e,r", [(1, 1, 1), (7, 5, 3), (20, 16, 5), (13, 64, 13), (100, 32, 8)])
def test_count_matches_formula(name, c, e, r):
    m = make(name, c, e, **size_kw(name, r))
    assert m.num_trainable_params() == formula(name, c, e, r)
    assert count_trainable(m) == m.num_trainable_params()


@pytest.mark.parametrize("e,pt,dpt,residual", [
    (512, 51_200, 6_120, 462_736),     # T5-Small
    (768, 76_800, 8_680, 693_904),     # T5-Base
    (1024, 102_400, 11_240, 925_072),  # T5-Large
])
def test_published_counts_t5(e, pt, dpt, residual):
    # The defaults are the papers': DPT b = 10, Residual m = 400.
    assert make("pt", 100, e).num_trainable_params() == pt
    assert make("dpt", 100, e).num_trainable_params() == dpt
    assert make("residual", 100, e).num_trainable_params() == residual


def test_published_counts_lamp():
    assert make("lamp", 100, 768).num_trainable_params() == 6_952                      # T5-Base, default r = 8
    # The paper's LLaMA example: 500·8 + 8 + 8·4096 = 36,776, its "36.8K" (36,808 would not fit the formula).
    assert make("lamp", 500, 4096, init="random").num_trainable_params() == 36_776


def test_default_sizes():
    assert make("dpt", 100, 64).rank == 10
    assert make("lamp", 100, 64).rank == 8
    assert make("lopt1", 20, 64).rank == 5 and make("lopt2", 20, 64).rank == 5
    assert make("lopt1", 3, 64).rank == 1
    assert make("residual", 10, 16).bottleneck == 400
    # Defaults shrink to fit small prompts; explicit values are validated instead.
    assert make("dpt", 4, 64).rank == 4 and make("lamp", 5, 3).rank == 3


def test_kept_params():
    assert make("pt", 10, 8).num_kept_params() == 80
    assert make("residual", 10, 8, bottleneck=4).num_kept_params() == 80  # the MLP is dropped after training
    assert make("lamp", 10, 8, rank=2, pool=3).num_kept_params() == 4 * 8
    assert make("dpt", 10, 8, rank=2).num_kept_params() == 80


# ---------------------------------------------------------------- shapes and math

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("c,e", [(1, 4), (10, 16), (33, 8)])
def test_forward_shape(name, c, e):
    m = make(name, c, e)
    p = m()
    assert p.shape == (m.output_length, e) == (c, e)
    assert p.dtype == torch.float32 and torch.isfinite(p).all()


@pytest.mark.parametrize("c,p,rows", [(12, 3, 4), (10, 3, 4), (10, 1, 10), (10, 10, 1), (7, 2, 4), (5, 4, 2)])
def test_lamp_pooling_shape_and_values(c, p, rows):
    m = make("lamp", c, 6, rank=3, pool=p)
    out = m()
    assert m.output_length == rows and out.shape == (rows, 6)
    full = (m.u * m.q) @ m.v
    for j in range(rows):  # block j covers rows [j·p, min((j+1)·p, c)); a short last block averages what it has
        block = full[j * p:min((j + 1) * p, c)]
        torch.testing.assert_close(out[j], block.sum(0) / block.shape[0])


def test_lamp_short_last_block_is_last_row_alone():
    m = make("lamp", 10, 6, rank=3, pool=3)
    full = (m.u * m.q) @ m.v
    torch.testing.assert_close(m()[3], full[9])
    torch.testing.assert_close(m()[0], (full[0] + full[1] + full[2]) / 3)


@pytest.mark.parametrize("c,e,r", [(10, 6, 3), (6, 10, 6), (12, 12, 12)])
def test_lamp_is_sum_of_outer_products(c, e, r):
    m = make("lamp", c, e, rank=r)
    with torch.no_grad():  # move away from init so the check is not just "SVD reconstructs"
        for t in (m.u, m.q, m.v):
            t.add_(torch.randn(t.shape, generator=gen(7)))
    expected = torch.zeros(c, e)
    for i in range(r):
        expected += m.q[i] * torch.outer(m.u[:, i], m.v[i, :])
    torch.testing.assert_close(m(), expected)


@pytest.mark.parametrize("init", ["vocab", "random"])
@pytest.mark.parametrize("c,e", [(10, 6), (6, 10), (20, 20)])
def test_lamp_full_rank_init_equals_p0(init, c, e):
    w = embedding(200, e)
    p0 = initial_prompt(c, e, init, embedding_weight=w, generator=gen(3))
    m = build("lamp", c, e, rank=min(c, e), init=init, embedding_weight=w, generator=gen(3))
    torch.testing.assert_close(m(), p0, atol=1e-5, rtol=1e-5)


def test_lamp_low_rank_init_is_truncated_svd():
    w = embedding(200, 12)
    p0 = initial_prompt(10, 12, embedding_weight=w, generator=gen(3))
    m = build("lamp", 10, 12, rank=4, embedding_weight=w, generator=gen(3))
    u, s, vh = torch.linalg.svd(p0.double(), full_matrices=False)
    torch.testing.assert_close(m(), ((u[:, :4] * s[:4]) @ vh[:4]).float(), atol=1e-5, rtol=1e-5)


def test_dpt_and_lopt1_are_products():
    d = make("dpt", 9, 7, rank=3)
    assert d.a.shape == (9, 3) and d.b.shape == (3, 7)
    torch.testing.assert_close(d(), d.a @ d.b)
    l1 = make("lopt1", 9, 7, rank=2)
    assert l1.u.shape == (9, 2) and l1.v.shape == (2, 7)
    torch.testing.assert_close(l1(), l1.u @ l1.v)


def test_dpt_probe_of_a_full_prompt_has_c_entries_and_full_rank():
    """DPT's paper probes a full prompt: --rank_probe --rank c gives Σ of c entries, P of rank c; the default
    probes b = 10. Switching an entry of Σ off drops exactly one rank (P = A·ReLU(Σ)·B by hand)."""
    c, e = 12, 32
    full, inner = make("dpt", c, e, rank=c, rank_probe=True), make("dpt", c, e, rank_probe=True)
    assert full.sigma.shape == (c,) and inner.sigma.shape == (10,)
    assert torch.linalg.matrix_rank(full().detach()) == c and torch.linalg.matrix_rank(inner().detach()) == 10
    with torch.no_grad():
        full.sigma[[2, 5]] = torch.tensor([-1.0, 0.5])
    expected = full.a.double() @ torch.diag(torch.tensor([1.0] * 2 + [0.0] + [1.0] * 2 + [0.5] + [1.0] * 6,
                                                         dtype=torch.float64)) @ full.b.double()
    torch.testing.assert_close(full().double(), expected)
    assert torch.linalg.matrix_rank(full().detach()) == c - 1 and full.diagnostics() == {"probe_positive_rank": 11}


def test_dpt_init_is_uniform_half():
    d = make("dpt", 100, 64)
    for t in (d.a, d.b):
        assert t.abs().max() <= 0.5 and t.abs().max() > 0.45


@pytest.mark.parametrize("activation,fn", [
    ("elu", F.elu), ("relu", F.relu), ("gelu", F.gelu),
    ("tanh", torch.tanh), ("sigmoid", torch.sigmoid), ("identity", lambda x: x),
])
def test_lopt2_formula(activation, fn):
    m = make("lopt2", 9, 7, rank=3, activation=activation)
    assert m.x0.shape == (9, 7) and m.u.shape == (7, 3) and m.v.shape == (3, 7)
    torch.testing.assert_close(m(), fn(m.x0 @ m.u) @ m.v)


def test_lopt2_default_activation_is_elu():
    m = make("lopt2", 9, 7, rank=3)
    assert m.activation == "elu"
    torch.testing.assert_close(m(), F.elu(m.x0 @ m.u) @ m.v)


def test_lopt_init_scale_is_t5x_like():
    # Documented choice: X starts with about the variance of U(-0.5, 0.5) = 1/12, independent of r and e.
    for m in (make("lopt1", 100, 512, rank=5), make("lopt1", 100, 512, rank=50)):
        assert 0.6 / 12 < m().var().item() < 1.5 / 12
    m = make("lopt2", 100, 512, rank=25)
    assert 0.4 / 12 < m().var().item() < 0.9 / 12  # E[ELU(z)²]/12 ≈ 0.64/12


def test_residual_formula_by_hand():
    m = make("residual", 6, 8, bottleneck=5)
    with torch.no_grad():  # non-trivial LayerNorm affine so it is part of the check
        m.norm.weight.normal_(generator=gen(1))
        m.norm.bias.normal_(generator=gen(2))
    p = m.prompt
    w1, b1, w2, b2 = m.mlp[0].weight, m.mlp[0].bias, m.mlp[2].weight, m.mlp[2].bias
    h = torch.clamp(p @ w1.T + b1, min=0) @ w2.T + b2
    mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    expected = (h - mu) / torch.sqrt(var + m.norm.eps) * m.norm.weight + m.norm.bias + p
    torch.testing.assert_close(m(), expected)


# ---------------------------------------------------------------- gradients, export, state

@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_exactly_the_trainable_params(name):
    m = make(name, 10, 8, **({"pool": 3} if name == "lamp" else {}))
    offsets = m.token_offsets()
    (m().sum() + (offsets.sum() if offsets is not None else 0)).backward()
    params = dict(m.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    for pname, p in params.items():
        assert p.grad is not None, pname
        # residual: the sum of a LayerNorm output has zero gradient w.r.t. the MLP; DePT's A: B starts at zero
        if (name, pname) != ("dept", "a") and name != "residual":
            assert p.grad.abs().sum() > 0, pname
    for bname, b in m.named_buffers():
        assert not b.requires_grad and b.grad is None, bname


def test_lopt2_x0_is_a_persistent_buffer():
    m = make("lopt2", 10, 8)
    assert "x0" in dict(m.named_buffers()) and "x0" not in dict(m.named_parameters())
    assert "x0" in m.state_dict()
    assert m.num_trainable_params() == 2 * m.rank * 8


@pytest.mark.parametrize("name", ALL)
def test_dense_is_detached_copy(name):
    m = make(name, 10, 8)
    p = m.dense()
    torch.testing.assert_close(p, m())
    assert not p.requires_grad and p.grad_fn is None
    before = m().detach().clone()
    p.add_(1.0)
    torch.testing.assert_close(m().detach(), before)


@pytest.mark.parametrize("name", ALL)
def test_seeded_build_is_reproducible(name):
    torch.testing.assert_close(make(name, 10, 8, seed=5)(), make(name, 10, 8, seed=5)())


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name):
    kw = {"init": "random"} if name in USES_EMBEDDING else {}
    a, b = make(name, 10, 8, seed=0, **kw), make(name, 10, 8, seed=1, **kw)
    assert not torch.allclose(a(), b())
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(), a())


@pytest.mark.parametrize("name", ALL)
def test_extra_repr_names_the_sizes(name):
    text = repr(make(name, 10, 8))
    assert "num_tokens=10" in text and "embed_dim=8" in text
    if name in ("dpt", "lopt1", "lopt2", "lamp"):
        assert "rank=" in text
    if name == "residual":
        assert "bottleneck=400" in text


# ---------------------------------------------------------------- initial_prompt

def test_vocab_init_samples_distinct_rows_within_limit():
    w = embedding(300, 8)
    p = initial_prompt(50, 8, "vocab", embedding_weight=w, vocab_limit=100, generator=gen(0))
    assert p.shape == (50, 8) and p.dtype == torch.float32
    idx = [int(torch.nonzero((w == row).all(1))[0]) for row in p]
    assert all(i < 100 for i in idx)
    assert len(set(idx)) == 50


def test_vocab_init_with_more_tokens_than_rows_reuses_rows():
    w = embedding(300, 8)
    p = initial_prompt(30, 8, "vocab", embedding_weight=w, vocab_limit=10, generator=gen(0))
    for row in p:
        assert (w[:10] == row).all(1).any()


def test_vocab_init_is_deterministic_and_seed_dependent():
    w = embedding(300, 8)
    a = initial_prompt(20, 8, embedding_weight=w, generator=gen(4))
    torch.testing.assert_close(a, initial_prompt(20, 8, embedding_weight=w, generator=gen(4)))
    assert not torch.equal(a, initial_prompt(20, 8, embedding_weight=w, generator=gen(5)))


def test_init_is_fresh_float32():
    w = embedding(50, 8).to(torch.bfloat16)
    for init in ("vocab", "text"):
        p = initial_prompt(5, 8, init, embedding_weight=w, init_token_ids=[1, 2], generator=gen(0))
        assert p.dtype == torch.float32
    w = embedding(50, 8)
    before = w.clone()
    p = initial_prompt(5, 8, "text", embedding_weight=w, init_token_ids=[1, 2, 3, 4, 5])
    p.add_(1.0)
    torch.testing.assert_close(w, before)


def test_text_init_repeats_cyclically_and_truncates():
    w = embedding(50, 8)
    p = initial_prompt(7, 8, "text", embedding_weight=w, init_token_ids=[3, 7, 9])
    torch.testing.assert_close(p, w[[3, 7, 9, 3, 7, 9, 3]])
    p = initial_prompt(2, 8, "text", embedding_weight=w, init_token_ids=[3, 7, 9])
    torch.testing.assert_close(p, w[[3, 7]])


def test_random_init_is_uniform_half():
    p = initial_prompt(100, 64, "random", generator=gen(0))
    assert p.abs().max() <= 0.5 and p.abs().max() > 0.49 and abs(p.mean()) < 0.02
    torch.testing.assert_close(p, initial_prompt(100, 64, "random", generator=gen(0)))


def test_init_errors():
    w = embedding(50, 8)
    with pytest.raises(ValueError, match="embedding_weight"):
        initial_prompt(5, 8, "vocab")
    with pytest.raises(ValueError, match="embedding_weight"):
        initial_prompt(5, 8, "text", init_token_ids=[1])
    for ids in (None, []):
        with pytest.raises(ValueError, match="init_token_ids"):
            initial_prompt(5, 8, "text", embedding_weight=w, init_token_ids=ids)
    with pytest.raises(ValueError, match="vocabulary"):
        initial_prompt(5, 8, "text", embedding_weight=w, init_token_ids=[50])
    with pytest.raises(ValueError, match="random, vocab, text"):
        initial_prompt(5, 8, "gaussian", embedding_weight=w)
    with pytest.raises(ValueError, match="width"):
        initial_prompt(5, 9, "vocab", embedding_weight=w)
    with pytest.raises(ValueError, match="GatheredParameters"):  # ZeRO-3 placeholder
        initial_prompt(5, 8, "vocab", embedding_weight=torch.empty(0))


# ---------------------------------------------------------------- build

def test_available_lists_all_methods():
    assert methods.available() == ALL


def test_unknown_method_lists_known():
    with pytest.raises(ValueError, match="known: " + ", ".join(ALL)):
        build("prefix", 10, 8)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("c,e", [(0, 8), (-1, 8), (10, 0)])
def test_bad_sizes(name, c, e):
    with pytest.raises(ValueError, match="num_tokens" if c < 1 else "embed_dim"):
        make(name, c, max(e, 1) if c < 1 else e)


@pytest.mark.parametrize("name,c,e,rank", [
    ("dpt", 10, 8, 9), ("dpt", 4, 8, 5), ("lopt1", 10, 8, 9), ("lopt1", 4, 8, 5),
    ("lamp", 10, 8, 9), ("lamp", 4, 8, 5), ("lopt2", 10, 8, 9),
    ("dpt", 10, 8, 0), ("lopt2", 10, 8, 0), ("lamp", 10, 8, 0),
])
def test_rank_out_of_range(name, c, e, rank):
    with pytest.raises(ValueError, match="rank"):
        make(name, c, e, rank=rank)


def test_lopt2_rank_may_exceed_c():
    assert make("lopt2", 4, 8, rank=8).rank == 8  # U is e×r: only e bounds it


@pytest.mark.parametrize("pool", [0, 11])
def test_pool_out_of_range(pool):
    with pytest.raises(ValueError, match="pool"):
        make("lamp", 10, 8, rank=2, pool=pool)


def test_bad_activation_and_bottleneck():
    with pytest.raises(ValueError, match="elu, relu"):
        make("lopt2", 10, 8, activation="swish")
    with pytest.raises(ValueError, match="bottleneck"):
        make("residual", 10, 8, bottleneck=0)


def test_unsupported_keyword():
    with pytest.raises(ValueError, match=r"method 'pt' does not take 'rank' \(it takes: init, "):
        build("pt", 10, 8, init="random", rank=4)
    with pytest.raises(ValueError, match="does not take 'init'"):
        build("dpt", 10, 8, init="vocab")
    with pytest.raises(ValueError, match="does not take 'pool'"):
        build("lopt1", 10, 8, pool=2)


def test_none_keywords_mean_default():
    m = build("pt", 10, 8, init="random", rank=None, pool=None, bottleneck=None, activation=None)
    assert m.num_trainable_params() == 80
    m = build("dpt", 20, 16, rank=None, init=None, embedding_weight=None)
    assert m.rank == 10
    m = build("lamp", 20, 16, rank=None, pool=None, embedding_weight=embedding(50, 16))
    assert m.rank == 8 and m.pool == 1


def test_build_text_init():
    w = embedding(50, 8)
    m = build("pt", 4, 8, init="text", embedding_weight=w, init_token_ids=[5, 6])
    torch.testing.assert_close(m(), w[[5, 6, 5, 6]])
