"""`FactoryPipeline`: a class-conditional pixel-space diffusion pipeline, read it as `DDPMPipeline` plus labels.

A factory is one client's published generative module. Its `unet` is a `UNet2DModel` with a class
embedding (one row per class the client holds, plus a "null" row when it was trained for
classifier-free guidance), and its `scheduler` is any diffusers scheduler: DDPM, DDIM and
DPM-Solver++ are the ones we test (see `SAMPLERS`). The class *names* live in the pipeline config, so
callers ask for images by name; integer ids are local to the factory and never federated.

Loading never executes code from a repo: always load with `FactoryPipeline.from_pretrained(...)`
(this class, from this package), never through `custom_pipeline=` or `trust_remote_code`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    ImagePipelineOutput,
    UNet2DModel,
)
from diffusers.utils.torch_utils import randn_tensor

from .errors import FactoryError

#: Sampler name → (scheduler class, config overrides applied on top of the training scheduler's config).
SAMPLERS: dict[str, tuple[type, dict]] = {
    "ddpm": (DDPMScheduler, {"clip_sample": True}),
    "ddim": (DDIMScheduler, {"clip_sample": True, "set_alpha_to_one": True}),
    "dpm++": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "thresholding": True, "sample_max_value": 1.0},
    ),
}


def make_scheduler(sampler: str, base_config) -> object:
    """A scheduler for ``sampler`` ("ddpm", "ddim" or "dpm++") sharing ``base_config``'s noise schedule."""
    if sampler not in SAMPLERS:
        raise FactoryError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    scheduler_cls, overrides = SAMPLERS[sampler]
    return scheduler_cls.from_config(base_config, **overrides)


class FactoryPipeline(DiffusionPipeline):
    r"""Class-conditional image generation for one federated client.

    Parameters:
        unet ([`UNet2DModel`]): denoiser with ``num_class_embeds`` = number of classes (+1 with a null class).
        scheduler ([`SchedulerMixin`]): e.g. [`DDPMScheduler`], [`DDIMScheduler`], [`DPMSolverMultistepScheduler`].
        class_names (`list[str]`): global label names this client holds, in local-id order.
        null_class (`bool`): whether the last class embedding is the unconditional ("null") class used for
            classifier-free guidance.
    """

    model_cpu_offload_seq = "unet"

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDPMScheduler,
        class_names: Sequence[str] | None = None,
        null_class: bool = False,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        class_names = [str(name) for name in (class_names or [])]
        expected = unet.config.num_class_embeds
        if expected is not None and expected != len(class_names) + int(null_class):
            raise FactoryError(
                f"unet has {expected} class embeddings but the pipeline declares {len(class_names)} class names"
                f"{' plus a null class' if null_class else ''}: {class_names}"
            )
        self.register_to_config(class_names=class_names, null_class=bool(null_class))

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    def class_ids(self, classes: str | int | Sequence[str | int], num_images: int) -> torch.Tensor:
        """Local class ids for ``classes``: one name/id for all ``num_images``, or one per image."""
        if isinstance(classes, (str, int)):
            classes = [classes] * num_images
        if len(classes) != num_images:
            raise FactoryError(f"got {len(classes)} class labels for num_images={num_images}")
        ids = []
        for item in classes:
            if isinstance(item, str):
                if item not in self.class_names:
                    raise FactoryError(f"class {item!r} is not held by this factory; it holds {self.class_names}")
                ids.append(self.class_names.index(item))
            else:
                if not 0 <= int(item) < len(self.class_names):
                    raise FactoryError(f"class id {item} is out of range for classes {self.class_names}")
                ids.append(int(item))
        return torch.tensor(ids, dtype=torch.long)

    @torch.no_grad()
    def __call__(
        self,
        classes: str | int | Sequence[str | int],
        num_images: int = 1,
        num_inference_steps: int = 20,
        generator: torch.Generator | list[torch.Generator] | None = None,
        guidance_scale: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate ``num_images`` images of ``classes`` (a class name or local id, or one per image).

        Args:
            guidance_scale: classifier-free guidance weight; 1.0 (no guidance) unless the factory was trained
                with a null class.
            output_type: ``"pil"``, ``"np"`` (N×H×W×C floats in [0, 1]) or ``"pt"`` (N×C×H×W in [0, 1]).
        """
        labels = self.class_ids(classes, num_images).to(self._execution_device)
        use_guidance = guidance_scale != 1.0
        if use_guidance and not self.config.null_class:
            raise FactoryError("guidance_scale != 1 needs a factory trained with a null class (cfg_dropout > 0)")

        size = self.unet.config.sample_size
        shape = (num_images, self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
        image = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)

        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            if use_guidance:
                null = torch.full_like(labels, len(self.class_names))
                both = self.unet(torch.cat([image, image]), t, class_labels=torch.cat([labels, null])).sample
                cond, uncond = both.chunk(2)
                model_output = uncond + guidance_scale * (cond - uncond)
            else:
                model_output = self.unet(image, t, class_labels=labels).sample
            image = self.scheduler.step(model_output, t, image, generator=generator).prev_sample

        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
