"""`make bench`: the reproducible benchmark of SPEC §6 (see bench/run.py and docs/benchmark.md).

Everything runs on loopback: fake OpenAI and Twilio servers and `platica serve` as separate
processes, a throwaway PostgreSQL database or SQLite file per scenario, and an open-loop load
generator with precomputed signed webhooks. Every phase is bounded in requests and in time.
"""
