"""The value-aware thresholds on a real chain: the devnet's price oracle moves a price and the service's
decisions follow it; an oracle that reverts leaves the token-unit rule deciding, and the reason says so.

Through the real service (`running_service`: preflight, listener, voter, HTTP) on the session devnet, every
chain change reverted after each test.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from web3 import Web3

from core.settings import Settings
from devtools.anvil import AnvilProcess
from devtools.devnet import DevnetInfo, proposal_plan, set_asset_price, set_oracle_reverting
from tests.support.database import migrate
from tests.support.service import (
    RunningService,
    create_proposals,
    devnet_settings,
    queue_settled,
    running_service,
)
from tests.support.waiting import poll_until

pytestmark = pytest.mark.usefixtures("chain_snapshot")

NODES = 5
WBTC_INDEX, EURT_INDEX = 2, 5  # the catalogue's "0.05 WBTC" and "800 EURT" investments
CONSERVATIVE, AGGRESSIVE = "ai-gov-01", "ai-gov-02"


@dataclass(frozen=True)
class Row:
    state: str
    decision: str | None
    reason: str
    price: str | None
    value: str | None


@pytest.fixture
def settings(anvil: AnvilProcess, devnet: DevnetInfo, tmp_path: Path) -> Settings:
    settings = devnet_settings(anvil.ws_url, devnet, tmp_path / "dloop.db")
    migrate(settings)
    return settings


def rows(settings: Settings, proposal_id: int) -> dict[str, Row]:
    """The stored vote rows of one proposal, by node name."""
    path = settings.database_url.removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(path) as db:
        found = db.execute(
            "SELECT n.name, v.state, v.decision, v.reason, v.price, v.value FROM votes v "
            "JOIN proposals p ON p.id = v.proposal_ref JOIN nodes n ON n.id = v.node_id "
            "WHERE p.proposal_id = ?",
            (proposal_id,),
        ).fetchall()
    return {
        name: Row(state, decision, reason or "", price, value)
        for name, state, decision, reason, price, value in found
    }


def propose_and_wait(
    anvil: AnvilProcess, devnet: DevnetInfo, svc: RunningService, done: int
) -> tuple[int, int]:
    """The 0.05 WBTC and the 800 EURT investments, created and voted by every node."""
    plan = proposal_plan(6)
    assert [(plan[i].asset_symbol, str(plan[i].amount_tokens)) for i in (WBTC_INDEX, EURT_INDEX)] == [
        ("WBTC", "0.05"),
        ("EURT", "800"),
    ]
    (wbtc,) = create_proposals(anvil, devnet, 1, first_index=WBTC_INDEX)
    (eurt,) = create_proposals(anvil, devnet, 1, first_index=EURT_INDEX)
    poll_until(lambda: queue_settled(svc.url, done + 2 * NODES), timeout=60, what="both proposals voted")
    return wbtc, eurt


def test_moving_a_price_on_the_oracle_flips_the_decisions(
    anvil: AnvilProcess, devnet: DevnetInfo, settings: Settings
) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    with running_service(settings) as svc:
        # At the seeded prices: WBTC 61,000, EURT 1.08.
        wbtc_low, eurt_low = propose_and_wait(anvil, devnet, svc, 0)
        set_asset_price(w3, devnet, "WBTC", "122000")
        set_asset_price(w3, devnet, "EURT", "1.30")
        wbtc_high, eurt_high = propose_and_wait(anvil, devnet, svc, 2 * NODES)
        detail = httpx.get(f"{svc.url}/proposals/{wbtc_low}", timeout=10).json()["proposal"]
        listed = httpx.get(f"{svc.url}/votes", params={"proposal": eurt_high}, timeout=10).json()["votes"]

    # 0.05 WBTC: worth 3,050 at 61,000 (under the aggressive limit of 5,000), 6,100 at 122,000 (over it).
    low, high = rows(settings, wbtc_low), rows(settings, wbtc_high)
    assert low[AGGRESSIVE] == Row(
        "confirmed", "for", "for: growth asset investment of 0.05 WBTC worth 3,050.00", "61000", "3050"
    )
    assert high[AGGRESSIVE] == Row(
        "confirmed",
        "against",
        "against: investment of 0.05 WBTC worth 6,100.00 is over the aggressive limit of 5,000.00",
        "122000",
        "6100",
    )
    assert low[CONSERVATIVE].reason == (
        "against: investment of 0.05 WBTC worth 3,050.00 is over the conservative limit of 1,000.00"
    )
    # 800 EURT: worth 864 at 1.08 (under the conservative limit of 1,000), 1,040 at 1.30 (over it).
    low, high = rows(settings, eurt_low), rows(settings, eurt_high)
    assert low[CONSERVATIVE] == Row(
        "confirmed",
        "for",
        "for: stablecoin investment of 800 EURT worth 864.00 within the conservative limit of 1,000.00",
        "1.08",
        "864",
    )
    assert high[CONSERVATIVE] == Row(
        "confirmed",
        "against",
        "against: investment of 800 EURT worth 1,040.00 is over the conservative limit of 1,000.00",
        "1.3",
        "1040",
    )
    # Every node of a proposal saw the same price (one read per asset per batch).
    assert {r.price for r in rows(settings, wbtc_high).values()} == {"122000"}

    # The JSON carries the price and value of each decision (/proposals/{id} and /votes).
    by_node = {v["node"]: v for v in detail["votes"]}
    assert (by_node[AGGRESSIVE]["price"], by_node[AGGRESSIVE]["value"]) == ("61000", "3050")
    assert {(v["node"], v["decision"], v["price"], v["value"]) for v in listed} >= {
        (CONSERVATIVE, "against", "1.3", "1040")
    }


def test_an_oracle_that_reverts_falls_back_to_token_units_and_says_so(
    anvil: AnvilProcess, devnet: DevnetInfo, settings: Settings
) -> None:
    set_oracle_reverting(Web3(Web3.HTTPProvider(anvil.http_url)), devnet, True)
    with running_service(settings) as svc:
        wbtc, eurt = propose_and_wait(anvil, devnet, svc, 0)
        detail = httpx.get(f"{svc.url}/proposals/{eurt}", timeout=10).json()["proposal"]

    everyone = [*rows(settings, wbtc).values(), *rows(settings, eurt).values()]
    assert len(everyone) == 2 * NODES and {r.state for r in everyone} == {"confirmed"}
    for row in everyone:
        assert "(no price: the price oracle reverted" in row.reason and row.reason.endswith(
            "; limit in token units)"
        ), row
        assert (row.price, row.value) == (None, None), row
    # 800 EURT is within 1,000 units: the conservative node votes for it, by units.
    assert rows(settings, eurt)[CONSERVATIVE].decision == "for"
    assert rows(settings, eurt)[CONSERVATIVE].reason.startswith(
        "for: stablecoin investment of 800 EURT within the conservative limit of 1,000 units (no price: "
    )
    assert rows(settings, wbtc)[AGGRESSIVE].reason.startswith(
        "for: growth asset investment of 0.05 WBTC (no price: "
    )
    assert {(v["price"], v["value"]) for v in detail["votes"]} == {(None, None)}
