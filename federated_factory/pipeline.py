"""`FactoryPipeline`: a class-conditional pixel-space diffusion pipeline, read it as `DDPMPipeline` plus labels.

A factory is one client's published generative module. Its `unet` is a `UNet2DModel` with a class
embedding (one row per class the client holds, plus a "null" row when it was trained for
classifier-free guidance), and its `scheduler` is any diffusers scheduler: DDPM, DDIM and
DPM-Solver++ are the ones we test (see `SAMPLERS`). The class *names* live in the pipeline config, so
callers ask for images by name; integer ids are local to the factory and never federated.

Loading never executes code from a repo: always load with `FactoryPipeline.from_pretrained(...)`
(this class, from this package), never through `custom_pipeline=` or `trust_remote_code`.

A loaded factory computes exactly like the one that was saved (same samples, bit for bit, on one
machine). That needs one step after diffusers' loader: safetensors memory-maps the weights file and
diffusers installs the mapped tensors as the parameters, so each one sits at its byte offset in the
file, aligned to 4 bytes only, while tensors torch allocates itself are 64-byte aligned. Some CPU
kernels choose their summation order by alignment (MKL's single-vector `sgemv` on AVX2, used by a
`Linear` on a batch of one image: the time embedding), so the mapped copy was 1 ulp off per step and
3e-7 off after 8 sampling steps. `from_pretrained` therefore copies every parameter and buffer into
memory torch allocates (`_own_weights`), which also releases the file mapping.
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


#: The sampler a published factory carries (`FactoryPipeline.with_sampler`), and the audit's and sample grid's default.
DEFAULT_SAMPLER = "dpm++"


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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> FactoryPipeline:
        """`DiffusionPipeline.from_pretrained`, then the weights are moved out of the file mapping.

        Pass ``use_safetensors=True``. See the module docstring for why the copy is needed: without it the
        loaded pipeline's samples can differ from the saved pipeline's in the last bits.
        """
        pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                _own_weights(component)
        return pipeline

    def with_sampler(self, sampler: str) -> FactoryPipeline:
        """A pipeline sharing this one's `unet` with a new ``sampler`` scheduler (see `SAMPLERS`); ``self`` is unchanged.

        The new scheduler is derived from this pipeline's scheduler config, so it keeps the noise schedule the
        factory was trained with.
        """
        return type(self)(
            unet=self.unet,
            scheduler=make_scheduler(sampler, self.scheduler.config),
            class_names=self.class_names,
            null_class=self.config.null_class,
        )

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


def _own_weights(module: torch.nn.Module) -> None:
    """Copy every parameter and buffer of ``module`` into fresh memory allocated by torch (in place).

    Tensors torch allocates on the CPU are 64-byte aligned, like those of a freshly built module; tensors
    that are views into a memory-mapped safetensors file are not (see the module docstring).
    """
    with torch.no_grad():
        for submodule in module.modules():
            for name, param in list(submodule.named_parameters(recurse=False)):
                param.data = param.data.clone(memory_format=torch.contiguous_format)
            for name, buffer in list(submodule.named_buffers(recurse=False)):
                if buffer is not None:
                    submodule._buffers[name] = buffer.clone(memory_format=torch.contiguous_format)
