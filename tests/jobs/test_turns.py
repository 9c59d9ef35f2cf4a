"""jobs/turns.py: the in-process worker's steps wait while requests are served, start one per
turn of the event loop, and are never starved for good."""

from __future__ import annotations

import asyncio

from platica.jobs.turns import Turns


async def loop_turns(count: int) -> None:
    """Let the event loop go round `count` times."""
    for _ in range(count):
        await asyncio.sleep(0)


class TestTurns:
    async def test_with_nothing_served_a_step_runs_at_once(self):
        turns = Turns()

        await asyncio.wait_for(turns.wait(), 10)

    async def test_a_step_waits_while_a_request_is_served(self):
        turns = Turns(starve_seconds=3600)
        turns.request_started()
        step = asyncio.create_task(turns.wait())

        await loop_turns(20)
        assert not step.done()

        turns.request_done()
        await asyncio.wait_for(step, 10)

    async def test_steps_start_one_per_turn_of_the_loop(self):
        turns = Turns()
        started: list[int] = []

        async def step(number: int) -> None:
            await turns.wait()
            started.append(number)

        tasks = [asyncio.create_task(step(number)) for number in range(5)]
        await loop_turns(1)
        # The first went through; the others are let through one at a time, in order.
        assert started == [0]
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert started == [0, 1, 2, 3, 4]

    async def test_requests_without_a_pause_still_let_steps_through(self):
        turns = Turns(starve_seconds=0.001)
        turns.request_started()  # never done

        await asyncio.wait_for(asyncio.gather(*(turns.wait() for _ in range(3))), 10)
        assert turns.serving == 1

    async def test_a_cancelled_step_does_not_hold_up_the_others(self):
        turns = Turns(starve_seconds=3600)
        turns.request_started()
        cancelled = asyncio.create_task(turns.wait())
        waiting = asyncio.create_task(turns.wait())
        await loop_turns(2)
        cancelled.cancel()

        turns.request_done()
        await asyncio.wait_for(waiting, 10)
        assert cancelled.cancelled()
