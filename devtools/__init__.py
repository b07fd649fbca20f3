"""Development tooling: a local anvil chain, the devnet contracts and the demo.

Never imported by `dloop run`."""
