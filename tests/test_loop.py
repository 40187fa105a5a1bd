"""The fixed-tick loop keeps its cadence, counts overruns and never bursts to catch up."""
from runtime.loop import TickLoop


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, dt):
        assert dt >= 0
        self.now += dt


def test_ticks_start_on_a_fixed_cadence():
    clock = FakeClock()
    loop = TickLoop(10, clock=clock, sleep=clock.sleep)
    starts = []

    def tick(t):
        starts.append(clock.now)
        clock.now += 0.03  # 30 ms of work in a 100 ms period

    stats = loop.run(tick, frames=5)
    assert stats.ticks == 5 and stats.overruns == 0
    assert [round(s, 6) for s in starts] == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_overrun_is_counted_and_the_loop_does_not_burst():
    clock = FakeClock()
    loop = TickLoop(10, clock=clock, sleep=clock.sleep)
    starts = []
    work = [0.03, 0.25, 0.03, 0.03]

    def tick(t):
        starts.append(clock.now)
        clock.now += work[t]

    stats = loop.run(tick, frames=4)
    assert stats.overruns == 1
    # tick 1 ran 0.1..0.35; tick 2 starts at once, tick 3 a full period later (no catch-up burst)
    assert [round(s, 6) for s in starts] == [0.0, 0.1, 0.35, 0.45]


def test_stop_and_false_end_the_loop():
    clock = FakeClock()
    loop = TickLoop(30, clock=clock, sleep=clock.sleep)
    assert loop.run(lambda t: t < 2, frames=100).ticks == 3
    loop = TickLoop(30, clock=clock, sleep=clock.sleep)
    loop.run(lambda t: loop.stop() if t == 4 else None)
    assert loop.stats.ticks == 5
