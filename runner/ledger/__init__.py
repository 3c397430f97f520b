"""The Redis ledger: batches and job records, their key names and the Lua scripts that change them."""
