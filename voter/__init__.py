"""The voter: turns queued vote rows into votes on chain, exactly once, for every configured node.

- `voter.strategies`: `decide()`, the built-in `conservative` / `aggressive` strategies, the registry (pure).
- `voter.planning`, `voter.fees`, `voter.outcomes`: batch planning, EIP-1559 fee maths, error mapping (pure).
- `voter.lane`: one node's nonce lane, composed of a `voter.sender` (nonces, signing, broadcasting) and a
  `voter.watcher` (receipts, stuck or dropped transactions, nonce gaps) over one `voter.lane_state`;
  `voter.receipts` polls every lane's receipts at once; `voter.jobs` what they work on; `voter.fee_oracle`
  the shared fee reads.
- `voter.service`: `Voter` (`run()`, `drain()`, `recheck_sent()`, `status`).
"""
