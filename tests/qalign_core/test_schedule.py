"""The denoising schedule: CIA's at 100 steps, step for step, and the same fractions at any other."""

from __future__ import annotations

from qalign_core.ddpm import DDPMSchedule
from qalign_core.params import MAX_STEPS, TransferParams
from qalign_core.schedule import DenoiseSchedule, layer_counter, scale_step, schedule_for
from qalign_core.testing import SD15_SCHEDULER

INJECTED = [11, 16, 21, 26, 31, 36]


def test_default_schedule_is_cias_step_for_step():
    """CIA at T=100, skip 32: its layers see counter max(n-1, 0); 64x64 mixes for 10 <= c < 90, 32x32
    for 10 <= c < 70, injection where c % 5 == 0 and c < 40, guidance 10 <= n <= 90, AdaIN 20 <= n < 100,
    segmentation maps taken where c == 19."""
    plan = schedule_for(TransferParams())
    assert (plan.steps, plan.skip, plan.iterations) == (100, 32, 68)
    listing = plan.listing()
    assert listing["injected"] == INJECTED
    assert listing["aligned_fine"] == [n for n in range(11, 68) if n not in INJECTED]
    assert listing["aligned_coarse"] == listing["aligned_fine"]  # both ranges outlast the 68 iterations
    assert listing["guided"] == list(range(10, 68))
    assert listing["adain"] == list(range(20, 68))
    assert layer_counter(plan.segmentation_iteration) == 19
    assert plan.mode(0, 10) is None and plan.mode(0, 11) == "inject"  # the counter lags one iteration


def test_coarse_range_ends_before_the_fine_one_when_the_run_is_long_enough():
    plan = schedule_for(TransferParams(skip_steps=0))  # 100 iterations
    assert plan.mode(1, 70) == "align" and plan.mode(1, 71) is None  # counter 69 vs 70
    assert plan.mode(0, 90) == "align" and plan.mode(0, 91) is None
    assert plan.mode(2, 50) is None  # a third, coarser grid is never aligned


def test_changing_only_steps_keeps_the_fractions():
    plan = schedule_for(TransferParams(steps=50))
    assert (plan.skip, plan.iterations) == (16, 34)
    assert plan.align == ((5, 45), (5, 35)) and plan.adain == (10, 50) and plan.guidance == (5, 45)
    assert sorted(plan.injection) == [0, 3, 5, 8, 10, 13, 15, 18]  # 2.5 -> 3: rounded half up
    assert scale_step(32, 100) == 32 and scale_step(1, 50) == 1 and scale_step(1, 49) == 0


def test_every_allowed_steps_value_has_a_valid_schedule():
    """From 2 to the maximum, changing only ``steps`` gives timesteps the scheduler can index and at
    least one denoising iteration (steps=1000 is refused by validation; see test_params)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**SD15_SCHEDULER)
    for steps in range(2, MAX_STEPS + 1):
        plan = schedule_for(TransferParams(steps=steps))
        assert 0 <= plan.skip < steps and plan.iterations >= 1, steps
        ddpm = DDPMSchedule.from_scheduler(scheduler, steps)
        assert len(ddpm) == steps and int(ddpm.timesteps.max()) < len(scheduler.alphas_cumprod), steps


def test_injection_can_be_turned_off():
    plan = DenoiseSchedule.build(100, 32, ((10, 90), (10, 70)), (20, 100), injection_every=0)
    assert plan.listing()["injected"] == []
