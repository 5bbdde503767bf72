"""Parity of our schedules and samplers with diffusers' DDPMScheduler and DDIMScheduler configured as the textbook
(no clipping, leading spacing, ᾱ_prev = 1 at the last step), and clear errors for bad sampling arguments."""
import pytest
import torch

from storyteller.models.diffusion import DDIM, DDPM, SAMPLERS, NoiseSchedule, sample, sampling_timesteps

SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
SHAPE = (2, 3, 8, 8)


def fixed_eps_model(schedule: NoiseSchedule):
    "A fixed random ε-model: the exact ε for N(0, I) data plus a random convolution, so trajectories stay bounded."
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    @torch.no_grad()
    def model(x, t):
        t = torch.as_tensor(t).reshape(-1).expand(len(x))
        return (1 - schedule.alpha_bar(t, x.ndim)).sqrt() * x + 0.1 * torch.tanh(conv(x))
    return model


def diffusers_trajectory(scheduler, model, steps: int, seed: int, **step_kwargs) -> torch.Tensor:
    "Run a diffusers scheduler from seeded noise, drawing the step noise from the same generator."
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=generator)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_betas_match_diffusers(schedule):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=SCHEDULES[schedule])
    ours = NoiseSchedule.named(schedule)
    assert torch.equal(ours.betas, ref.betas) and torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_1000_steps_matches_diffusers(schedule, variance):
    from diffusers import DDPMScheduler

    ours = NoiseSchedule.named(schedule)
    model = fixed_eps_model(ours)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=SCHEDULES[schedule], clip_sample=False,
                        variance_type=variance, timestep_spacing="leading")
    expected = diffusers_trajectory(ref, model, 1000, seed=1)
    got = sample(model, SHAPE, ours, DDPM(variance=variance), steps=1000, generator=torch.Generator().manual_seed(1))
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(schedule, steps, eta):
    from diffusers import DDIMScheduler

    ours = NoiseSchedule.named(schedule)
    model = fixed_eps_model(ours)
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule=SCHEDULES[schedule], clip_sample=False,
                        set_alpha_to_one=True, timestep_spacing="leading")
    expected = diffusers_trajectory(ref, model, steps, seed=2, eta=eta)
    got = sample(model, SHAPE, ours, DDIM(eta=eta), steps=steps, generator=torch.Generator().manual_seed(2))
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_other_prediction_types_match_diffusers(prediction_type):
    from diffusers import DDIMScheduler

    ours = NoiseSchedule.named("cosine")
    model = fixed_eps_model(ours)
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                        set_alpha_to_one=True, prediction_type=prediction_type)
    expected = diffusers_trajectory(ref, model, 25, seed=4)
    got = sample(model, SHAPE, ours, steps=25, prediction_type=prediction_type, generator=torch.Generator().manual_seed(4))
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clipped_x0_matches_diffusers_clip_sample(sampler):
    "Clamping x̂₀ to [-1, 1] (diffusers' clip_sample=True, its default) gives the same trajectory as diffusers."
    from diffusers import DDIMScheduler, DDPMScheduler

    ours = NoiseSchedule.named("cosine")
    model = fixed_eps_model(ours)
    cls = DDPMScheduler if sampler == "ddpm" else DDIMScheduler
    ref = cls(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True, clip_sample_range=1.0)
    steps = 1000 if sampler == "ddpm" else 50
    expected = diffusers_trajectory(ref, model, steps, seed=5)
    got = sample(model, SHAPE, ours, SAMPLERS[sampler](clip_sample=1.0), steps=steps, generator=torch.Generator().manual_seed(5))
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_train_steps", [1000, 777])
def test_sampling_timesteps_match_diffusers_for_every_step_count(spacing, num_train_steps):
    "Every step count from 1 to the training length gives diffusers' timesteps exactly (float32 arithmetic missed by one)."
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=num_train_steps, timestep_spacing=spacing)
    for steps in range(1, num_train_steps + 1):
        ref.set_timesteps(steps)
        ours = sampling_timesteps(num_train_steps, steps, spacing)
        assert len(ours) == steps and ours.min() >= 0, steps
        # diffusers' trailing list can overshoot by one element, a timestep of -1 (1000 over 61 steps): compare the rest
        assert torch.equal(ours, ref.timesteps[:steps].long()), (spacing, steps)


@pytest.mark.parametrize("call, argument", [
    (lambda s, m: sample(m, SHAPE, s, steps=0), "steps"),
    (lambda s, m: sample(m, SHAPE, s, steps=1001), "steps"),
    (lambda s, m: sample(m, SHAPE, s, DDIM(eta=-1.0)), "eta"),
    (lambda s, m: sample(m, SHAPE, s, sampler="heun"), "sampler"),
    (lambda s, m: sample(m, SHAPE, s, prediction_type="score"), "prediction_type"),
    (lambda s, m: NoiseSchedule.named("sigmoid"), "schedule"),
])
def test_bad_sampling_arguments_name_the_argument(call, argument):
    schedule = NoiseSchedule.named("linear")
    with pytest.raises(ValueError, match=argument):
        call(schedule, fixed_eps_model(schedule))


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_diffusers_training_scripts(schedule, prediction_type):
    "The weights diffusers' train_text_to_image.py applies with --snr_gamma: min(SNR, γ) / SNR for ε, / (SNR + 1) for v."
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from storyteller.models.diffusion import min_snr_weight

    timesteps = torch.arange(0, 1000, 7)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule=SCHEDULES[schedule])
    snr = compute_snr(reference, timesteps)
    clipped = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    expected = clipped / (snr if prediction_type == "epsilon" else snr + 1)
    torch.testing.assert_close(min_snr_weight(NoiseSchedule.named(schedule), timesteps, 5.0, prediction_type), expected,
                               rtol=1e-5, atol=1e-6)
