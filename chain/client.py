"""Typed async reads of the AssetDAO and its assets, over one connection. All errors leave as ChainError."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import anyio
from eth_utils import to_checksum_address

from chain import requests as rq
from chain.codec import AbiFunction, checksum, dao_functions, erc20_functions
from chain.connection import batch_refusal, classify_rpc_error, translate_exception
from chain.rpc_socket import RpcSocket
from chain.types import AssetInfo, ProposalData
from core.errors import ChainError, ContractRevert, MalformedAnswer, RateLimited, TransientChainError

RpcErrorCounts = Counter[str]  # error kind (the exception's class name) -> how many


class RpcCounts(Counter[str]):
    """Error counts by kind (a Counter, as RpcErrorCounts) that also count the requests sent: one per single
    request and one per item of a batch, per attempt, as errors are counted. The error rate of the alert
    rules (DLOOP_ALERT_RPC_ERROR_RATE) is errors / requests over a window of these totals."""

    requests: int = 0

    def total_errors(self) -> int:
        return sum(self.values())


@dataclass(frozen=True)
class BlockHeader:
    number: int
    hash: str
    parent_hash: str
    timestamp: int
    base_fee_per_gas: int | None


@dataclass(frozen=True)
class RawLog:
    address: str
    topics: tuple[str, ...]
    data: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    removed: bool


def _hex(value: Any) -> str:
    """A hash, topic or data as "0x..." lowercase hex, from the node's string or from bytes (HexBytes)."""
    if isinstance(value, str):
        return value.lower()  # hashes compare equal whatever the node's case
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)


def _int(value: Any) -> int:
    """A quantity: the node's hex string ("0x1a") or an int (already converted)."""
    return int(value, 16) if isinstance(value, str) else int(value)


# Both parsers take a block or log as the node sent it (hex strings: subscription notifications, eth_getLogs,
# eth_getBlockByNumber) or as web3's formatters leave it (ints and HexBytes).


def parse_block(raw: Mapping[str, Any]) -> BlockHeader:
    base_fee = raw.get("baseFeePerGas")
    return BlockHeader(
        number=_int(raw["number"]),
        hash=_hex(raw["hash"]),
        parent_hash=_hex(raw["parentHash"]),
        timestamp=_int(raw["timestamp"]),
        base_fee_per_gas=None if base_fee is None else _int(base_fee),
    )


def parse_log(raw: Mapping[str, Any]) -> RawLog:
    return RawLog(
        address=checksum(raw["address"]),
        topics=tuple(_hex(t) for t in raw["topics"]),
        data=_hex(raw["data"]),
        block_number=_int(raw["blockNumber"]),
        block_hash=_hex(raw["blockHash"]),
        tx_hash=_hex(raw["transactionHash"]),
        log_index=_int(raw["logIndex"]),
        removed=bool(raw.get("removed", False)),
    )


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    status: int
    block_number: int
    gas_used: int
    block_hash: str | None = None
    effective_gas_price: int | None = None  # wei per gas actually paid (EIP-1559), when the node says

    @property
    def fee_wei(self) -> int | None:
        """What the transaction cost its sender, in wei."""
        return None if self.effective_gas_price is None else self.gas_used * self.effective_gas_price


def mined_receipt(receipts: Sequence[Receipt | None], head: int, confirmations: int) -> Receipt | None:
    """The successful, deep-enough receipt among a vote's transactions (at most one can be mined)."""
    for receipt in receipts:
        if receipt is not None and receipt.status == 1 and receipt.block_number <= head - confirmations:
            return receipt
    return None


def parse_receipt(raw: Any, *, missing_status: int = 0) -> Receipt | None:
    """None while not mined. `missing_status`: the status of a receipt without one (pre-Byzantium nodes
    send a state root instead): failure for the voter, success for the listener's reorg check."""
    if not isinstance(raw, Mapping) or raw.get("blockNumber") is None:
        return None
    status = raw.get("status")
    return Receipt(
        tx_hash=str(raw["transactionHash"]),
        status=missing_status if status is None else int(str(status), 16),
        block_number=int(str(raw["blockNumber"]), 16),
        gas_used=int(str(raw.get("gasUsed", "0x0")), 16),
        block_hash=str(raw["blockHash"]).lower() if raw.get("blockHash") is not None else None,
        effective_gas_price=int(str(raw["effectiveGasPrice"]), 16)
        if raw.get("effectiveGasPrice") is not None
        else None,
    )


P = ParamSpec("P")
T = TypeVar("T")
E = TypeVar("E", bound=ChainError)
RATE_LIMIT_ATTEMPTS = 6  # 0.3^6: a provider refusing 30 % of requests still answers each one
MALFORMED_GRACE = 1.0  # seconds an in-flight request may still be answered after a bad frame arrived
MALFORMED_ATTEMPTS = 4  # a read asked again after a malformed answer: 5 % bad frames -> 1 in 160,000 fails
# Sending these again is not a plain retry (the node may have taken the first one): callers decide.
NOT_REPEATABLE = frozenset({rq.SEND_RAW, rq.SEND_TRANSACTION})


async def retry_rate_limited(call: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Retry a rate-limit answer with backoff and jitter, so that no caller drops its connection (and
    re-reads everything) over a provider's momentary refusal. Other errors pass straight through."""
    attempt = 0
    while True:
        try:
            return await call(*args, **kwargs)
        except RateLimited:
            attempt += 1
            if attempt >= RATE_LIMIT_ATTEMPTS:
                raise
            await _rate_limit_pause(attempt)


async def _rate_limit_pause(attempt: int) -> None:
    await anyio.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))


# Learnt once per process: endpoints that refuse or cap JSON-RPC batches get single requests instead.
_ENDPOINTS_REFUSING_BATCHES: set[str] = set()


class ChainClient:
    """Reads used by listener, voter and reconciler. Each call has a timeout."""

    def __init__(
        self,
        socket: RpcSocket,
        contract_address: str,
        *,
        timeout: float = 20.0,
        malformed_grace: float = MALFORMED_GRACE,
        error_counts: RpcErrorCounts | None = None,
    ) -> None:
        self.socket = socket
        # Every error the node answered (or the transport raised), by kind: shared by the service's clients
        # for /metrics. Counted per attempt, so a rate limit retried three times counts three.
        self.error_counts: RpcErrorCounts = error_counts if error_counts is not None else Counter()
        self.contract = to_checksum_address(contract_address)
        self.timeout = timeout
        self.malformed_grace = malformed_grace
        self._assets: dict[str, AssetInfo] = {}
        self._endpoint = socket.endpoint

    @property
    def batches_refused(self) -> bool:
        """Whether this endpoint was seen to refuse JSON-RPC batches (remembered across reconnects)."""
        return self._endpoint in _ENDPOINTS_REFUSING_BATCHES

    @batches_refused.setter
    def batches_refused(self, refused: bool) -> None:
        if refused:
            _ENDPOINTS_REFUSING_BATCHES.add(self._endpoint)
        else:
            _ENDPOINTS_REFUSING_BATCHES.discard(self._endpoint)

    # -- raw JSON-RPC ----------------------------------------------------------------------------------
    async def request(self, method: str, params: Sequence[Any]) -> Any:
        """One JSON-RPC request; rate-limit answers are retried (see `retry_rate_limited`), and so is a
        malformed answer to a request that is safe to repeat (a read): the socket is fine, so every caller
        (listener, voter, reconciler) keeps its connection. A broadcast's malformed answer is raised."""
        attempt = 1
        while True:
            try:
                return await retry_rate_limited(self._request_once, method, params)
            except MalformedAnswer as exc:
                if not exc.repeatable or attempt >= MALFORMED_ATTEMPTS:
                    raise
                attempt += 1

    async def _request_once(self, method: str, params: Sequence[Any]) -> Any:
        self._sent(1)
        try:
            with anyio.fail_after(self.timeout):
                answer = await self._answer_or_malformed(self.socket.request(method, params), method)
            error = answer.get("error")
            if error is not None:
                raise classify_rpc_error(dict(error) if isinstance(error, dict) else {"message": str(error)})
            if "result" not in answer:
                raise MalformedAnswer(
                    f"answer to {method} had neither a result nor an error",
                    method=method,
                    repeatable=method not in NOT_REPEATABLE,
                )
            return answer["result"]
        except MalformedAnswer as exc:
            self.error_counts[type(exc).__name__] += 1
            raise
        except Exception as exc:
            raise self._counted(translate_exception(exc)) from exc

    def _sent(self, requests: int) -> None:
        if isinstance(self.error_counts, RpcCounts):
            self.error_counts.requests += requests

    def _counted(self, error: E) -> E:
        self.error_counts[type(error).__name__] += 1
        return error

    async def _answer_or_malformed(self, answer: Awaitable[T], what: str) -> T:
        """`answer`, or MalformedAnswer when a bad frame arrived while it was awaited and no answer followed
        within `malformed_grace`: the bad frame was (almost surely) this request's answer. The socket is fine.

        A request answered later than the grace after someone's bad frame is failed too (and retried):
        the price of not waiting the whole timeout for the one that will never be answered.
        """
        frames = self.socket.malformed
        bad_frame = frames.next  # taken before the request goes out: only frames after it count
        number = frames.count + 1  # the number that frame will get
        outcome: list[T] = []
        failure: list[Exception] = []
        async with anyio.create_task_group() as tg:

            async def await_answer() -> None:
                try:
                    outcome.append(await answer)
                except Exception as exc:  # raised below as itself, not wrapped in an exception group
                    failure.append(exc)
                tg.cancel_scope.cancel()

            tg.start_soon(await_answer)
            await bad_frame.wait()
            await anyio.sleep(self.malformed_grace)
            tg.cancel_scope.cancel()
        if failure:
            raise failure[0]
        if outcome:
            return outcome[0]
        frames.claim(number)
        raise MalformedAnswer(
            f"malformed answer to {what}: the node's answer was not JSON-RPC",
            method=what,
            repeatable=what not in NOT_REPEATABLE,
        )

    async def batch(self, requests: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """One JSON-RPC batch; results (or ChainError instances) in request order. Items answered with a
        rate limit are asked again (a smaller batch each time), like single requests."""
        results = await retry_rate_limited(self._batch_once, requests)
        for attempt in range(1, RATE_LIMIT_ATTEMPTS):
            limited = [i for i, result in enumerate(results) if isinstance(result, RateLimited)]
            if not limited:
                break
            await _rate_limit_pause(attempt)
            again = await retry_rate_limited(self._batch_once, [requests[i] for i in limited])
            for i, result in zip(limited, again, strict=True):
                results[i] = result
        return results

    async def _batch_once(self, requests: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        self._sent(len(requests))
        try:
            with anyio.fail_after(self.timeout):
                ids, responses = await self._answer_or_malformed(
                    self.socket.batch(requests), f"a batch of {len(requests)}"
                )
        except MalformedAnswer as exc:
            self.error_counts[type(exc).__name__] += 1
            raise
        except Exception as exc:
            raise self._counted(translate_exception(exc)) from exc
        refusal = batch_refusal(responses)
        if refusal is not None:
            raise self._counted(classify_rpc_error(refusal))
        # JSON-RPC lets a node answer a batch in any order: each answer is found by its request's id.
        listed = responses if isinstance(responses, list) else []
        answers = {a["id"]: a for a in listed if isinstance(a, dict) and isinstance(a.get("id"), int)}
        if answers.keys() != set(ids):
            raise self._counted(
                ChainError(f"batch of {len(requests)} answered with {len(answers)} responses to its ids")
            )
        results: list[Any] = []
        for request_id in ids:
            answer = answers[request_id]
            error = answer.get("error")
            results.append(
                self._counted(classify_rpc_error(dict(error)))
                if isinstance(error, dict)
                else answer.get("result")
            )
        return results

    async def call_many(
        self, requests: Sequence[tuple[str, Sequence[Any]]], *, batch_size: int, concurrency: int = 8
    ) -> list[Any]:
        """Batches of `batch_size`; when the provider refuses or caps batches, bounded concurrency instead."""
        results: list[Any] = [None] * len(requests)
        chunks = [range(i, min(i + batch_size, len(requests))) for i in range(0, len(requests), batch_size)]
        limiter = anyio.CapacityLimiter(concurrency)

        async def single(i: int) -> None:
            async with limiter:
                try:
                    results[i] = await self.request(*requests[i])
                except ChainError as exc:
                    results[i] = exc

        async def run_chunk(chunk: range) -> None:
            if not self.batches_refused and len(chunk) > 1:
                try:
                    answered = await self.batch([requests[i] for i in chunk])
                except MalformedAnswer:
                    pass  # only this answer was lost, and reads are safe to repeat: one by one below
                except TransientChainError:
                    raise  # rate limits, timeouts, a lost connection: not a refusal
                except ChainError as exc:
                    # A refusal (one error object, id null) is this batch's answer (chain/rpc_socket.py).
                    # Remember it for the endpoint; the caller reconnects once and asks one by one.
                    self.batches_refused = True
                    raise TransientChainError(
                        f"provider refused a JSON-RPC batch ({exc}); not batching"
                    ) from exc
                else:
                    for i, value in zip(chunk, answered, strict=True):
                        results[i] = value
                    return
            async with anyio.create_task_group() as tg:
                for i in chunk:
                    tg.start_soon(single, i)

        for chunk in chunks:
            await run_chunk(chunk)
        return results

    # -- typed reads -----------------------------------------------------------------------------------
    async def chain_id(self) -> int:
        return _int(await self.request(*rq.chain_id()))

    async def block_number(self) -> int:
        return _int(await self.request(*rq.block_number()))

    async def block(self, number: int | str = "latest") -> BlockHeader:
        raw = await self.request(*rq.block_by_number(number))
        if raw is None:
            raise ChainError(f"block {number} not found")
        return parse_block(raw)

    async def code_at(self, address: str) -> str:
        return str(await self.request(*rq.code(to_checksum_address(address))))

    async def storage_word(self, address: str, slot: int) -> bytes:
        """The 32-byte storage word at `slot` of `address`."""
        raw = await self.request(*rq.storage_at(address, slot))
        return bytes.fromhex(str(raw).removeprefix("0x")).rjust(32, b"\0")

    async def call(self, fn: AbiFunction, *args: Any, to: str | None = None, block: str = "latest") -> Any:
        raw = await self.request(*rq.call_function(to or self.contract, fn, *args, block=block))
        values = decode_result(fn, raw)
        return values[0] if len(values) == 1 else values

    async def proposal_count(self) -> int:
        return int(await self.call(dao_functions()["getProposalCount"]))

    async def has_voted(self, proposal_id: int, voter: str) -> bool:
        return bool(await self.call(dao_functions()["hasVoted"], proposal_id, to_checksum_address(voter)))

    def known_asset(self, address: str) -> AssetInfo | None:
        """The asset's metadata if read before (no I/O): the reads of a pass skip the retry wrapper."""
        return self._assets.get(address.lower())

    async def asset_info(self, address: str) -> AssetInfo:
        """decimals() and symbol() of an asset, cached; anything not a readable ERC-20 is 'unknown'."""
        key = address.lower()
        if key not in self._assets:
            self._assets[key] = await self._read_asset(to_checksum_address(address))
        return self._assets[key]

    async def _read_asset(self, address: str) -> AssetInfo:
        functions = erc20_functions()
        code = await self.code_at(address)
        if code in ("0x", "", "0x0"):
            return AssetInfo(address, None, None, "asset address has no contract code")
        try:
            decimals = int(await self.call(functions["decimals"], to=address))
        except (ContractRevert, ValueError) as exc:
            return AssetInfo(address, None, None, f"asset has no readable decimals(): {exc}")
        if not 0 <= decimals <= 77:
            return AssetInfo(address, None, None, f"asset reports implausible decimals {decimals}")
        try:
            symbol = str(await self.call(functions["symbol"], to=address))[:64]
        except (ContractRevert, ValueError):
            symbol = None
        return AssetInfo(address, symbol, decimals)

    async def get_logs(self, from_block: int, to_block: int) -> list[RawLog]:
        # Every log of the contract, as the subscription: decoded by topic in chain/events.py.
        raw = await self.request(*rq.logs([self.contract], from_block, to_block))
        return [parse_log(item) for item in raw or []]


def decode_result(fn: AbiFunction, raw: Any) -> tuple[Any, ...]:
    """Decode an eth_call result; an empty result (no code, or a non-conforming contract) is a ValueError."""
    data = bytes.fromhex(str(raw).removeprefix("0x"))
    if not data and fn.output_types:
        raise ValueError(f"{fn.name}() returned no data")
    try:
        return fn.decode(data)
    except Exception as exc:  # eth_abi's decoding errors share no useful base
        raise ValueError(f"{fn.name}() returned undecodable data: {exc}") from exc


def proposal_from_values(raw: Sequence[Any], asset: AssetInfo) -> ProposalData:
    return ProposalData(
        proposal_id=int(raw[0]),
        proposal_type=int(raw[1]),
        asset_address=checksum(raw[2]),
        amount=int(raw[3]),
        description=str(raw[4]),
        proposer=checksum(raw[5]),
        created_at=int(raw[6]),
        voting_ends=int(raw[7]),
        yes_votes=int(raw[8]),
        no_votes=int(raw[9]),
        status=int(raw[10]),
        executed=bool(raw[11]),
        asset=asset,
    )
