"""The variants' trainable networks on their own: Deep-SVDD heads and the RealNVP flow."""

from __future__ import annotations

import math

import pytest
import torch

from padim.errors import PersistError
from padim.variants._training import (
    generator_from_tensor,
    generator_to_tensor,
    optimizer_from_flat,
    optimizer_to_flat,
)
from padim.variants.flow import RealNVP
from padim.variants.heads import CENTRE_MIN_ABS, SVDDHeads


def _cloud(n: int = 256, d: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 3.0 + 5.0


def test_svdd_heads_output_one_representation_per_head() -> None:
    heads = SVDDHeads(in_dim=8, num_heads=3, f=4, rep_dim=5)
    assert heads(_cloud()).shape == (256, 3, 5)


def test_svdd_heads_are_independent_networks() -> None:
    # Changing head 1's first-layer weights must not move heads 0 and 2.
    heads = SVDDHeads(in_dim=8, num_heads=3, f=4, rep_dim=5).eval()
    x = _cloud()
    before = heads(x)
    with torch.no_grad():
        heads.weights[0][1].mul_(2.0)
    after = heads(x)
    assert torch.equal(before[:, 0], after[:, 0]) and torch.equal(before[:, 2], after[:, 2])
    assert not torch.allclose(before[:, 1], after[:, 1])


def test_svdd_centres_keep_away_from_zero() -> None:
    heads = SVDDHeads(in_dim=8, num_heads=2, f=4, rep_dim=16)
    heads.set_centres(_cloud())
    assert bool(heads.centred)
    assert bool((heads.centres.abs() >= CENTRE_MIN_ABS - 1e-7).all())


def test_svdd_setting_centres_leaves_batchnorm_statistics_alone() -> None:
    heads = SVDDHeads(in_dim=8, num_heads=2, f=4, rep_dim=16)
    before = {k: v.clone() for k, v in heads.state_dict().items() if "norms" in k}
    heads.set_centres(_cloud())
    after = {k: v for k, v in heads.state_dict().items() if "norms" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_svdd_one_class_training_shrinks_the_loss() -> None:
    torch.manual_seed(0)
    heads = SVDDHeads(in_dim=8, num_heads=2, f=4, rep_dim=8)
    x = _cloud()
    heads.set_centres(x)
    opt = torch.optim.Adam(heads.parameters(), lr=1e-3)
    first = float(heads.loss(x, "one-class", 0.1).detach())
    for _ in range(100):
        opt.zero_grad()
        heads.loss(x, "one-class", 0.1).backward()
        opt.step()
    assert float(heads.loss(x, "one-class", 0.1).detach()) < 0.5 * first


def test_svdd_radius_leaves_a_fraction_nu_outside() -> None:
    heads = SVDDHeads(in_dim=8, num_heads=2, f=4, rep_dim=8).eval()
    x = _cloud(n=1000)
    heads.set_centres(x)
    heads.update_radii(x, nu=0.1)
    outside = (heads.squared_distances(x).sqrt() > heads.radii).float().mean(dim=0)
    assert torch.allclose(outside, torch.full((2,), 0.1), atol=0.01)


def test_svdd_soft_boundary_scores_are_relative_to_the_sphere() -> None:
    heads = SVDDHeads(in_dim=8, num_heads=1, f=4, rep_dim=8).eval()
    x = _cloud(n=500)
    heads.set_centres(x)
    heads.update_radii(x, nu=0.1)
    soft = heads.scores(x, "soft-boundary")
    hard = heads.scores(x, "one-class")
    assert torch.allclose(hard - soft, heads.radii.expand(500))


def test_flow_starts_as_identity_after_actnorm() -> None:
    flow = RealNVP(dim=8, num_blocks=3, hidden=16)
    x = _cloud()
    z, _ = flow(x)  # first training-mode call initialises ActNorm
    z, logdet = flow(x)
    # Couplings are zero-initialised, so z is the standardised x, permuted; the
    # later ActNorms see standardised data already and start as the identity.
    standardised = (x - x.mean(0)) / x.std(0)
    assert torch.allclose(z.pow(2).sum(1), standardised.pow(2).sum(1), rtol=1e-4)
    assert torch.allclose(logdet, -x.std(0).log().sum().expand(256), rtol=1e-4)


def test_flow_log_determinant_matches_autograd_jacobian() -> None:
    flow = RealNVP(dim=6, num_blocks=3, hidden=8)
    flow(_cloud(d=6))  # initialise ActNorm
    with torch.no_grad():  # move the couplings off the identity
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    flow.eval()
    x = _cloud(n=1, d=6, seed=1)[0]
    jac = torch.autograd.functional.jacobian(lambda v: flow(v.unsqueeze(0))[0][0], x)
    with torch.no_grad():
        _, logdet = flow(x.unsqueeze(0))
    assert math.isclose(float(logdet), float(torch.linalg.slogdet(jac).logabsdet), rel_tol=1e-4)


def test_flow_training_lowers_the_likelihood_of_training_data_below_outliers() -> None:
    torch.manual_seed(0)
    flow = RealNVP(dim=8, num_blocks=4, hidden=32)
    # Correlated normal data: the flow has to learn the correlation, not just scale.
    base = _cloud(n=512, d=4)
    x = torch.cat([base, base + 0.1 * _cloud(n=512, d=4, seed=2)], dim=1)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    for _ in range(200):
        opt.zero_grad()
        flow.nll(x).mean().backward()
        opt.step()
    flow.eval()
    # Outliers break the learned correlation but stay inside the marginal ranges.
    outliers = torch.cat([base[:32], base[:32].flip(0)], dim=1)
    with torch.no_grad():
        assert float(flow.nll(outliers).median()) > float(flow.nll(x).quantile(0.99))


def test_optimizer_state_round_trip_resumes_identically() -> None:
    def run(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad()
            model(_cloud(n=32, d=8)).pow(2).sum().backward()
            opt.step()

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-6)
    run(model, opt, 3)
    tensors, meta = optimizer_to_flat(opt)
    clone = torch.nn.Linear(8, 3)
    clone.load_state_dict(model.state_dict())
    clone_opt = torch.optim.Adam(clone.parameters(), lr=0.5)
    optimizer_from_flat(clone_opt, tensors, meta)
    run(model, opt, 3)
    run(clone, clone_opt, 3)
    assert torch.equal(model.weight, clone.weight)


def test_optimizer_state_for_another_shape_is_refused() -> None:
    model = torch.nn.Linear(8, 3)
    opt = torch.optim.Adam(model.parameters())
    model(_cloud(n=4)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_flat(opt)
    other = torch.nn.Linear(5, 3)
    with pytest.raises(PersistError):
        optimizer_from_flat(torch.optim.Adam(other.parameters()), tensors, meta)


def test_generator_state_round_trip() -> None:
    g = torch.Generator().manual_seed(3)
    torch.rand(5, generator=g)
    state = generator_to_tensor(g)
    expected = torch.rand(5, generator=g)
    h = torch.Generator()
    generator_from_tensor(h, state)
    assert torch.equal(torch.rand(5, generator=h), expected)
