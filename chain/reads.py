"""The one batched-reads API: proposals, hasVoted, receipts, transactions, blocks, nonces and balances.

A `Read` is a request (built in `chain.requests`) with the parser of its answer. Reads of any kinds go in one
`Batch` and are sent together (`Reads.run`: one JSON-RPC batch, or `ChainClient.call_many`'s chunks); each
answer is then the parsed value or the `ChainError` it failed with, never raised. The `Reads` methods are the
common cases: the same reads for many ids or hashes, each one batch.

    reads = Reads(client, batch_size=settings.rpc_batch_size)
    batch = Batch()
    proposal = batch.add(read_proposal(client.contract, 7, block=12))
    nonce = batch.add(read_nonce(address, "pending"))
    answers = await reads.run(batch)
    values, count = answers[proposal], answers[nonce]  # ProposalValues | ChainError, int | ChainError

A proposal's answer is its decoded values; `Reads.proposal_data` adds the asset's metadata (decimals,
symbol: cached per client). An answer that arrived but cannot be decoded is a `BadAnswer` (bad data, not a
transport failure): callers tell it from a lost connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from chain import requests
from chain.client import BlockHeader, ChainClient, Receipt, decode_result, parse_block, parse_receipt
from chain.client import proposal_from_values as _proposal_from_values
from chain.codec import AbiFunction, dao_functions, erc20_functions, oracle_functions
from chain.requests import BlockTag, Request
from chain.retrying import call_many_retrying
from chain.types import ProposalData
from core.errors import ChainError
from core.retry import with_backoff

T = TypeVar("T")
ProposalValues = tuple[Any, ...]  # getProposal's decoded outputs (see `chain.client.proposal_from_values`)
Send = Callable[[Sequence[Request]], Awaitable[list[Any]]]  # answers (or ChainError instances) in order


class BadAnswer(ChainError):
    """An answer that arrived but is not what the request asks for (undecodable, malformed): bad data."""


@dataclass(frozen=True)
class Read(Generic[T]):
    """One request and the parser of its answer (a ValueError, KeyError or TypeError means bad data)."""

    request: Request
    parse: Callable[[Any], T]

    def answer(self, raw: Any) -> T | ChainError:
        if isinstance(raw, ChainError):
            return raw
        try:
            return self.parse(raw)
        except (ValueError, KeyError, TypeError) as exc:
            return BadAnswer(str(exc))


@dataclass(frozen=True)
class Slot(Generic[T]):
    """Where a read's answer will be in its batch's `Answers`."""

    index: int
    read: Read[T]


class Batch:
    """Reads of any kinds, sent together."""

    def __init__(self) -> None:
        self.reads: list[Read[Any]] = []

    def add(self, read: Read[T]) -> Slot[T]:
        self.reads.append(read)
        return Slot(len(self.reads) - 1, read)

    def __len__(self) -> int:
        return len(self.reads)


class Answers:
    def __init__(self, raw: Sequence[Any]) -> None:
        self._raw = list(raw)

    def __getitem__(self, slot: Slot[T]) -> T | ChainError:
        return slot.read.answer(self._raw[slot.index])


# -- single reads ----------------------------------------------------------------------------------------


def _decoded(fn: AbiFunction) -> Callable[[Any], tuple[Any, ...]]:
    return lambda raw: decode_result(fn, raw)


def _first(fn: AbiFunction) -> Callable[[Any], Any]:
    return lambda raw: decode_result(fn, raw)[0]


def _quantity(raw: Any) -> int:
    if not isinstance(raw, str) or not raw.startswith("0x"):
        raise ValueError(f"not a hex quantity: {str(raw)[:80]}")
    return int(raw, 16)


def _maybe_block(raw: Any) -> BlockHeader | None:
    """None for a height the node has no block for."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"malformed eth_getBlockByNumber answer: {str(raw)[:80]}")
    return parse_block(dict(raw))


def _maybe_transaction(raw: Any) -> Mapping[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"malformed transaction answer: {str(raw)[:80]}")
    return raw


def read_proposal(contract: str, proposal_id: int, block: BlockTag = "latest") -> Read[ProposalValues]:
    fn = dao_functions()["getProposal"]
    return Read(requests.call_function(contract, fn, proposal_id, block=block), _decoded(fn))


def read_proposal_count(contract: str, block: BlockTag = "latest") -> Read[int]:
    fn = dao_functions()["getProposalCount"]
    return Read(requests.call_function(contract, fn, block=block), lambda raw: int(_first(fn)(raw)))


def read_has_voted(contract: str, proposal_id: int, voter: str, block: BlockTag = "latest") -> Read[bool]:
    fn = dao_functions()["hasVoted"]
    return Read(
        requests.call_function(contract, fn, proposal_id, voter, block=block), lambda r: bool(_first(fn)(r))
    )


def read_token_balance(token: str, holder: str, block: BlockTag = "latest") -> Read[int]:
    fn = erc20_functions()["balanceOf"]
    return Read(requests.call_function(token, fn, holder, block=block), lambda raw: int(_first(fn)(raw)))


def read_price_oracle(contract: str, block: BlockTag = "latest") -> Read[str]:
    """AssetDAO's `priceOracle()`: the oracle's address (the zero address when none is set)."""
    fn = dao_functions()["priceOracle"]
    return Read(requests.call_function(contract, fn, block=block), lambda raw: str(_first(fn)(raw)))


def read_asset_price(oracle: str, asset: str, block: BlockTag = "latest") -> Read[int]:
    """The oracle's `getAssetPrice(asset)`: a price normalised to 18 decimals (0: none known)."""
    fn = oracle_functions()["getAssetPrice"]
    return Read(requests.call_function(oracle, fn, asset, block=block), lambda raw: int(_first(fn)(raw)))


def read_nonce(address: str, block: BlockTag = "latest") -> Read[int]:
    return Read(requests.nonce(address, block), _quantity)


def read_balance(address: str, block: BlockTag = "latest") -> Read[int]:
    return Read(requests.balance(address, block), _quantity)


def read_receipt(tx_hash: str, *, missing_status: int = 0) -> Read[Receipt | None]:
    """None while the transaction is not mined (or unknown). `missing_status`: see `parse_receipt`."""
    return Read(requests.receipt(tx_hash), lambda raw: parse_receipt(raw, missing_status=missing_status))


def read_transaction(tx_hash: str) -> Read[Mapping[str, Any] | None]:
    return Read(requests.transaction(tx_hash), _maybe_transaction)


def read_block(block: BlockTag) -> Read[BlockHeader | None]:
    return Read(requests.block_by_number(block), _maybe_block)


# -- many reads ------------------------------------------------------------------------------------------


class Reads:
    """Batched reads over one client. `send` is how a batch goes out: by default `call_many_retrying`
    (transient answers asked again with backoff); `plain=True` is `ChainClient.call_many` as is."""

    def __init__(
        self, client: ChainClient, *, batch_size: int, send: Send | None = None, plain: bool = False
    ) -> None:
        self.client = client
        self.contract = client.contract
        if send is None:
            if plain:
                send = lambda batch: client.call_many(batch, batch_size=batch_size)  # noqa: E731
            else:
                send = lambda batch: call_many_retrying(client, batch, batch_size=batch_size)  # noqa: E731
        self._send = send

    async def run(self, batch: Batch) -> Answers:
        if not batch.reads:
            return Answers([])
        return Answers(await self._send([read.request for read in batch.reads]))

    async def many(self, reads: Sequence[Read[T]]) -> list[T | ChainError]:
        """The same kind of read many times, in one batch; answers in order."""
        if not reads:
            return []
        raw = await self._send([read.request for read in reads])
        return [read.answer(answer) for read, answer in zip(reads, raw, strict=True)]

    async def proposal_data(self, values: ProposalValues | ChainError) -> ProposalData | ChainError:
        """getProposal's values with the asset's metadata (read once per asset and client, with backoff)."""
        if isinstance(values, ChainError):
            return values
        try:
            address = str(values[2])
            asset = self.client.known_asset(address)
            if asset is None:
                asset = await with_backoff(self.client.asset_info, address)
            return _proposal_from_values(values, asset)
        except (ValueError, IndexError, TypeError) as exc:
            return BadAnswer(str(exc))
        except ChainError as exc:
            return exc

    async def proposal_values(
        self, ids: Sequence[int], block: BlockTag = "latest"
    ) -> dict[int, ProposalValues | ChainError]:
        wanted = sorted(set(ids))
        answers = await self.many([read_proposal(self.contract, i, block) for i in wanted])
        return dict(zip(wanted, answers, strict=True))

    async def proposals(
        self, ids: Sequence[int], block: BlockTag = "latest"
    ) -> dict[int, ProposalData | ChainError]:
        """getProposal of each id at `block`, with its asset's metadata."""
        values = await self.proposal_values(ids, block)
        return {pid: await self.proposal_data(value) for pid, value in values.items()}

    async def proposal_count(self, block: BlockTag = "latest") -> int:
        """Raises its ChainError (a single read)."""
        (count,) = await self.many([read_proposal_count(self.contract, block)])
        if isinstance(count, ChainError):
            raise count
        return count

    async def has_voted(
        self, pairs: Sequence[tuple[int, str]], block: BlockTag = "latest"
    ) -> dict[tuple[int, str], bool | ChainError]:
        """hasVoted(proposal id, voter address) of each pair at `block`."""
        answers = await self.many([read_has_voted(self.contract, pid, voter, block) for pid, voter in pairs])
        return dict(zip(pairs, answers, strict=True))

    async def receipts(
        self, hashes: Sequence[str], *, missing_status: int = 0
    ) -> list[Receipt | ChainError | None]:
        return await self.many([read_receipt(h, missing_status=missing_status) for h in hashes])

    async def transactions(self, hashes: Sequence[str]) -> list[Mapping[str, Any] | ChainError | None]:
        return await self.many([read_transaction(h) for h in hashes])

    async def blocks(self, numbers: Sequence[BlockTag]) -> list[BlockHeader | ChainError | None]:
        return await self.many([read_block(n) for n in numbers])
