"""What a round reads of the economy alone, kept per economy (econspin.economy_terms): the same rounds, bit for bit."""

import dataclasses

import pytest
import torch
from fused_cases import two_populations
from helpers import rollout
from test_fused import assert_outcomes_close

from econspin.fused import fused_trade
from econspin.market import trade
from econspin.round import step


def fresh(economy):
    """The same economy with nothing kept (``dataclasses.replace`` builds a new one)."""
    return dataclasses.replace(economy)


@pytest.mark.parametrize("mode", ["expected", "sampled"])
@pytest.mark.parametrize("network", [False, True])
def test_rounds_from_kept_terms_are_the_rounds_from_fresh_ones(mode, network):
    run = rollout([two_populations(heads=2, visibility=0.8, mode=mode)] * 2, dtype="float32")
    economy = run.economy
    if network:
        mask = torch.rand(64, 64, generator=torch.Generator().manual_seed(1)) < 0.6
        economy = dataclasses.replace(economy, trade_mask=mask)
    state = run.state
    with torch.no_grad():
        for _ in range(3):
            kept, afresh = step(state, economy), step(state, fresh(economy))
            for name in ("states", "money", "revenue", "spending", "entropy", "surplus"):
                assert torch.equal(getattr(kept, name), getattr(afresh, name)), name
            state = kept
    assert len(economy.__dict__["_round_terms"]) == 2  # the fused terms of one precision and batch, the field weights


def test_nothing_is_kept_where_a_parameter_requires_a_gradient():
    run = rollout(two_populations())
    economy = dataclasses.replace(run.economy, query=run.economy.query.clone().requires_grad_(True))
    with torch.no_grad():  # the fused step still runs: nothing asks for a gradient in this round
        step(run.state, economy)
    assert "_round_terms" not in economy.__dict__
    with torch.no_grad():
        step(run.state, run.economy)
    assert "_round_terms" in run.economy.__dict__


def test_a_network_kept_for_one_economy_serves_another_with_other_sellers_its_own_partners():
    """One trade mask, two economies whose sellers differ: the second counts its own allowed sellers.

    The mask's terms are kept per mask tensor (economy_terms.network_terms), beside the sellers
    they were counted with; another economy on the same mask with agents 0-9 no longer selling
    gets the reference kernel's outcome, not the first economy's partners.
    """
    run = rollout(two_populations(heads=2, visibility=0.8))
    mask = torch.rand(64, 64, generator=torch.Generator().manual_seed(2)) < 0.3
    first = dataclasses.replace(run.economy, trade_mask=mask)
    seller = first.seller.clone()
    seller[:10] = False
    second = dataclasses.replace(first, seller=seller)
    for economy in (first, second):
        fused = fused_trade(run.state, economy)
        assert_outcomes_close(trade(run.state, economy), fused, 1e-12)
    assert not torch.allclose(fused_trade(run.state, first).entropy, fused_trade(run.state, second).entropy)
