"""Launch checks and the accelerator: the `Accelerator` of a run (gloo for several CPU processes, trackers, mixed
precision), the launches it refuses because they would train unsynchronised copies (several processes that each
believe they are alone, DeepSpeed switched off by a CPU flag, machines that do not share the output folder or run
other settings), and what DeepSpeed and CPU processes need around `prepare`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, broadcast_object_list, gather_object

from training.tracking import TRACKER_LOGS, flatten_hyperparameters, tracker_loggers

CORRECT_LAUNCHES = (
    "Launch with one of:\n"
    "  accelerate launch --config_file training/configs/ddp.yaml SCRIPT ...         (DDP; CPU or GPUs)\n"
    "  accelerate launch --config_file training/configs/deepspeed_zero2.yaml SCRIPT ...\n"
    "  torchrun --nproc_per_node N SCRIPT ...                                          (DDP)\n"
    "  accelerate launch --config_file training/configs/multi_node.yaml --machine_rank R \\\n"
    "      --main_process_ip HOST0 --main_process_port PORT SCRIPT ...       (on machine R = 0, 1, ... of several)\n"
    "  python SCRIPT ...                                                               (one process)"
)


class LaunchError(RuntimeError):
    """The processes were started in a way that would train unsynchronised copies of the model."""


def launch_problem(
    world_size: int,
    num_processes: int,
    distributed_type: str,
    deepspeed_requested: bool,
    model_wrapped: bool | None = None,
) -> str | None:
    """Why a launch would train silently wrong, or `None` when it is sound.

    Args:
        world_size: processes the launcher started (`WORLD_SIZE`).
        num_processes, distributed_type: what the accelerator believes (`accelerator.num_processes`,
            `accelerator.distributed_type.name`).
        deepspeed_requested: the launcher asked for DeepSpeed (`ACCELERATE_USE_DEEPSPEED=true`).
        model_wrapped: after `prepare`, whether the model is wrapped for synchronised training (`None`: not known yet).
    """
    if num_processes != world_size:
        return (
            f"{world_size} processes were started, but each believes it is 1 of {num_processes}: every process "
            "would train its own copy on all the data."
        )
    if deepspeed_requested and distributed_type != "DEEPSPEED":
        return (
            f"DeepSpeed was requested, but the processes run as {distributed_type} (ACCELERATE_USE_CPU or --cpu "
            "switches DeepSpeed off): drop --cpu / ACCELERATE_USE_CPU and use the DeepSpeed config."
        )
    if world_size > 1 and distributed_type == "NO":
        return f"{world_size} processes were started without a distributed backend: they would not synchronise."
    if world_size > 1 and model_wrapped is False:
        return "the data is split among processes, but the model is not wrapped for synchronised training."
    return None


def _check_launch(accelerator: Accelerator, model_wrapped: bool | None = None) -> None:
    problem = launch_problem(
        int(os.environ.get("WORLD_SIZE", "1")),
        accelerator.num_processes,
        accelerator.distributed_type.name,
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true",
        model_wrapped,
    )
    if problem:
        raise LaunchError(f"Refusing to train: {problem}\n{CORRECT_LAUNCHES}")


def make_accelerator(
    output_dir: str | os.PathLike | None = None,
    log: bool = True,
    mixed_precision: str = "auto",
    report_to: Sequence[str] = (),
) -> Accelerator:
    """An `Accelerator` for the current launch: gloo for several CPU processes, trackers writing `metrics.jsonl` and
    the trackers of `report_to` (names resolved by `tracking.resolve_report_to`; their files go to `logs/` in the
    output folder), and `mixed_precision` ("no", "fp16", "bf16", or "auto": the launch's fp16 or bf16 when it asks
    for one, else bf16 on a GPU that supports it and fp32 on the CPU; `accelerate launch` says "no" when nobody
    chose, so "no" from the launch does not count as a choice).

    Refuses ([`LaunchError`]) launches that would train unsynchronised copies: several processes that each believe
    they are alone, DeepSpeed requested but switched off by a CPU flag, processes without a distributed backend.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    kwargs: dict[str, Any] = {}
    if not torch.cuda.is_available() and world_size > 1:
        # Without an accelerator device, accelerate picks no backend and each process believes it is alone.
        if deepspeed:
            kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
        else:
            kwargs["cpu"] = True
    if mixed_precision == "auto":
        mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
        if mixed_precision not in ("fp16", "bf16"):
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            mixed_precision = "bf16" if bf16 else "no"
    kwargs["mixed_precision"] = mixed_precision
    if log and output_dir is not None:
        output_dir = Path(output_dir)
        kwargs["log_with"] = tracker_loggers(output_dir, report_to)
        logs = output_dir / TRACKER_LOGS
        kwargs["project_config"] = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(logs))
    accelerator = Accelerator(**kwargs)
    _check_launch(accelerator)
    return accelerator


def prepare_for_deepspeed(accelerator: Accelerator, model: torch.nn.Module) -> list[str]:
    """Before `prepare` under DeepSpeed; returns the names of the parameters to pass to `restore_scalar_shapes`.

    DeepSpeed 0.19 broadcasts and partitions parameters through byte views, which fail for 0-dim tensors (SViTT's
    temperature): they get shape `(1,)` for training (the model's arithmetic broadcasts the same). Under ZeRO-3 a
    parameter is gathered only when the module owning it runs, so parameters read by another module (the
    temperature, read by the heads; the relative-bias tables, indexed directly on the dense path) are registered
    with the module that reads them.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return []
    scalars = []
    for name, param in model.named_parameters():
        if param.dim() == 0:
            param.data = param.data.reshape(1)
            scalars.append(name)
    if accelerator.state.deepspeed_plugin.zero_stage == 3:
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter

        register_external_parameter(model, model.svitt.temperature)
        for layer in model.svitt.vision_model.encoder.layer:
            attention = layer.attention.attention
            register_external_parameter(attention, attention.relative_position_bias.relative_position_bias_table)
    return scalars


def restore_scalar_shapes(state_dict: dict[str, torch.Tensor] | None, names: Sequence[str]):
    """Give the parameters `prepare_for_deepspeed` reshaped their 0-dim shape back, in a state dict to save (ZeRO-3
    gathers the state dict on the main process only; elsewhere it is `None`)."""
    for name in names if state_dict is not None else ():
        if name in state_dict:
            state_dict[name] = state_dict[name].reshape(())
    return state_dict


@contextlib.contextmanager
def plain_loading():
    """A context in which models are built whole: under DeepSpeed ZeRO-3, transformers otherwise partitions a model
    while `from_pretrained` builds it (the curriculum changes a model before `prepare`, and evaluation runs outside
    the engine)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = reference() if reference is not None else None
    if config is None or not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def share_cpu_cores(accelerator: Accelerator, num_workers: int) -> None:
    """On CPU, give torch the cores that this process's data-loader workers do not use (unless `OMP_NUM_THREADS`
    says otherwise): more busy threads than cores slow every step several times over."""
    if accelerator.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // accelerator.num_processes - num_workers))


def check_prepared_model(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """After `prepare`: with several processes the model must be wrapped for synchronised training (DDP/DeepSpeed)."""
    if accelerator.num_processes == 1:
        return
    wrapped = type(model).__name__ in ("DistributedDataParallel", "DeepSpeedEngine", "FullyShardedDataParallel")
    _check_launch(accelerator, model_wrapped=wrapped)



def check_one_run(accelerator: Accelerator, output_dir: Path, settings: dict[str, Any]) -> None:
    """Every process, on every machine, must write into the same output folder and run the same `settings` (the
    recipe as it runs and the script's options): each machine runs its own command, and a folder that another
    machine does not see, or another seed or recipe there, trains and saves silently wrong. Raises a [`LaunchError`]
    on every process naming the first process that differs from the main process."""
    if accelerator.num_processes == 1:
        return
    marker = [f".shared-folder-check-{uuid.uuid4().hex}" if accelerator.is_main_process else None]
    broadcast_object_list(marker)
    marker_file = output_dir / marker[0]
    if accelerator.is_main_process:
        marker_file.write_text(socket.gethostname(), encoding="utf-8")
    accelerator.wait_for_everyone()
    view = {"host": socket.gethostname(), "output_dir": str(output_dir), "sees_main_folder": marker_file.is_file(),
            "settings": flatten_hyperparameters(settings)}
    views = gather_object([view])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker_file.unlink()
    main = views[0]
    for rank, other in enumerate(views):
        where = f"process {rank} (on {other['host']}, --output-dir {other['output_dir']})"
        if not other["sees_main_folder"]:
            raise LaunchError(
                f"Refusing to train: {where} does not see the output folder that process 0 writes ({main['output_dir']}"
                f" on {main['host']}). Put the output folder on a file system every machine mounts (NFS, Lustre, ...) "
                "and pass that path as --output-dir on every machine: the main process alone writes the run folder, "
                "and every process writes its part of each saved training state there."
            )
        differing = {key for key, _ in set(main["settings"].items()) ^ set(other["settings"].items())}
        if differing:
            key = min(differing, key=lambda name: (not name.startswith("recipe."), name))  # the recipe's first
            values = (main["settings"].get(key, "(not set)"), other["settings"].get(key, "(not set)"))
            raise LaunchError(
                f"Refusing to train: {where} runs other settings than process 0: {key} is {values[1]!r} there and "
                f"{values[0]!r} on process 0. Launch the same command on every machine (only the machine rank differs)."
            )
