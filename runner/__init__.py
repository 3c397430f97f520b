"""How jobs run: the CLI, the fal queue client, the ledger and the simulator."""
