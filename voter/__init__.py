"""The voter: turns queued vote rows into votes on chain, exactly once, for every configured node.

- `voter.strategies`: `decide()`, the built-in `conservative` / `aggressive` strategies, the registry (pure).
- `voter.planning`, `voter.fees`, `voter.outcomes`: batch planning, EIP-1559 fee maths, error mapping (pure).
- `voter.lane`: one node's nonce lane (sending); `voter.watcher` its receipt watcher, on the state and
  plumbing of `voter.lane_base`; `voter.jobs` what they work on; `voter.fee_oracle` the shared fee reads.
- `voter.service`: `Voter` (`run()`, `drain()`, `recheck_sent()`, `status`).
"""
