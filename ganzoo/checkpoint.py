"""Checkpoints: one file, checkpoint.pt, written atomically; tensors and plain values only,
loaded with torch.load(weights_only=True), so opening one never runs code. It carries its own
config, so that a resumed run and a sampler rebuild the same model. --keep-every keeps
step-stamped copies beside it; a run that starts in a folder removes the temporary files of
writers that were killed mid-write."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import warnings
from pathlib import Path

import torch

from .errors import Fault, Interrupted, UserError
from .scale import match_optimizer_layout, prepare_model

CHECKPOINT = "checkpoint.pt"
SNAPSHOT = "checkpoint_step_{step:07d}.pt"  # --keep-every's step-stamped copies, beside CHECKPOINT
SNAPSHOT_GLOB = "checkpoint_step_*.pt"
TEMPORARY = re.compile(r"^.+\.pt\.(\d+)\.tmp$")  # NAME.pt.PID.tmp: a file being written by process PID


def plain(v):
    """A value as JSON and weights_only loading keep it (tuples become lists)."""
    return list(v) if isinstance(v, tuple) else v


def renames(hypers: dict) -> dict:
    """{old config key: new key} for the flags whose spelling changed (a model's Hyper.aliases)."""
    return {a.lstrip("-").replace("-", "_"): k for k, h in hypers.items() for a in h.aliases}


def upgrade_config(config: dict, hypers: dict) -> dict:
    """A checkpoint's config with old flag names under their new names, and the flags added
    since it was written at their defaults (a new flag's default is the old behaviour; one
    with a small-data value is left to the data set's resolution, unless the flag names the
    value older runs had, Hyper.old) (in place)."""
    for old, new in renames(hypers).items():
        if old in config and new not in config:
            config[new] = config.pop(old)
    for k, h in hypers.items():
        if k not in config and h.old is not None:  # what that run did, whatever its data set
            config[k] = plain(h.old)
        elif k not in config and not h.by_data_set:
            config[k] = plain(h.default)
    for k in ("g_width", "d_width"):  # before --g-width / --d-width: both networks had --width
        if k not in config and "width" in config:
            config[k] = config["width"]
    if isinstance(config.get("compile"), bool):  # before --compile took auto|on|off
        config["compile"] = "on" if config["compile"] else "off"
    return config


def checksum(ckpt: dict) -> str:
    """SHA-256 over the bytes of every tensor of the networks and optimizers, in a fixed order:
    a file mixed from two runs, or bit-rotted, fails it at load."""
    h = hashlib.sha256()

    def walk(v, key=""):
        if isinstance(v, torch.Tensor):
            h.update(key.encode())
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                walk(v[k], f"{key}/{k}")
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{key}/{i}")
    walk({"nets": ckpt["nets"], "optimizers": ckpt.get("optimizers", {})})
    return h.hexdigest()


def save_checkpoint(path: Path, model, step: int, batches, fixed_z, config: dict) -> None:
    """Atomically (atomic()): a temporary file of this process's own beside it, flushed to disk,
    then renamed; a failed write leaves the previous checkpoint as it was."""
    ckpt = {
        "model": model.name,
        "step": step,
        "config": config,
        "shape": list(model.shape),
        "nets": {k: m.state_dict() for k, m in model.networks().items()},
        "optimizers": {k: o.state_dict() for k, o in model.optimizers().items()},
        "extra": model.extra_state(),
        "scalers": {k: sc.state_dict() for k, sc in model.scalers.items()},  # --amp fp16
        "data": batches.state(),
        "fixed_z": fixed_z.cpu(),
        # the CUDA state of this process's own GPU: under torchrun every rank runs the same
        # stream on its own device (cuda:local_rank), and each restores it there on resume
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(model.device) if model.device.type == "cuda" else None},
    }
    ckpt["checksum"] = checksum(ckpt)
    with atomic(path) as tmp, open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic(path: Path, kept: str | None = None):
    """Yields the temporary name (path.PID.tmp) to write; renames it to path when the block
    ends. A failure (a full disk) or a second Ctrl-C removes the temporary file and leaves
    what path held; it becomes one line (Fault, Interrupted) that says so, or `kept`."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if kept is None:
            kept = "the previous checkpoint is kept" if path.is_file() else "no checkpoint was written"
        if isinstance(e, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt):
            raise Interrupted(f"interrupted again while writing {path}; {kept}") from None
        if isinstance(e, (OSError, RuntimeError)):
            why = "the disk is full" if getattr(e, "errno", None) == 28 or "unexpected pos" in str(e) \
                or "No space" in str(e) else (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise Fault(f"could not write {path} ({why}); {kept}") from None
        raise


def keep_snapshot(path: Path, step: int) -> Path:
    """The step-stamped copy (SNAPSHOT) of the checkpoint just written at path, beside it, made
    atomically as the checkpoint is: a hard link (no bytes copied: later checkpoints replace
    path by a rename, never rewrite the file), or a copy where the file system has no links."""
    dest = path.with_name(SNAPSHOT.format(step=step))
    with atomic(dest, kept=f"{path} (step {step}) is written") as tmp:
        tmp.unlink(missing_ok=True)  # one left by an earlier process that had this pid
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
    return dest


def alive(pid: int) -> bool:
    """Whether process pid runs on this machine (another user's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):  # no process can have that number
        return False
    return True


def remove_stale_temporaries(run_dir: Path) -> tuple[int, int]:
    """Remove the temporary files (NAME.pt.PID.tmp) of checkpoints and snapshots that writers
    killed mid-write left in run_dir: those whose process is gone, never this process's or
    another live one's. Returns (files removed, bytes freed: a hard-linked file frees none)."""
    removed = freed = 0
    for f in Path(run_dir).glob("*.pt.*.tmp"):
        m = TEMPORARY.match(f.name)
        if not m or int(m.group(1)) == os.getpid() or alive(int(m.group(1))):
            continue
        try:
            st = f.stat()
            f.unlink()
        except OSError:  # gone already, or not ours to remove: left as it is
            continue
        removed += 1
        freed += st.st_size if st.st_nlink == 1 else 0
    return removed, freed


def checkpoint_path(path_or_dir: str) -> Path:
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise UserError(f"{path_or_dir}: no checkpoint there (expected a checkpoint.pt or a run directory holding one)")
    return p


def load_checkpoint(path_or_dir: str, name: str | None = None) -> tuple[dict, Path]:
    """Load with weights_only=True (opening a checkpoint never runs code) and check that it
    belongs to the model `name` (any model when None)."""
    p = checkpoint_path(path_or_dir)
    try:
        with warnings.catch_warnings():  # torch's own warnings about a refused file: the one line below says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torn, truncated, foreign or doctored files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{p}: not a readable checkpoint ({first[:120]})")
    missing = [k for k in ("model", "nets", "config", "step", "shape") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{p}: not a checkpoint written by this project (no {missing[0]!r})")
    if "checksum" in ckpt and checksum(ckpt) != ckpt["checksum"]:  # older checkpoints have none
        raise UserError(f"{p}: its tensors do not match its checksum (a damaged or mixed file); "
                        "use an earlier copy or start a new run")
    if name is not None and ckpt["model"] != name:
        raise UserError(f"{p} is a {ckpt['model']} checkpoint; use {ckpt['model']}.py for it, not {name}.py")
    return ckpt, p


def restore(model, ckpt: dict, p: Path) -> None:
    """The networks, optimizers, the model's own state and the fp16 scalers of a checkpoint."""
    try:
        for k, m in model.networks().items():
            m.load_state_dict(ckpt["nets"][k])
        for k, o in model.optimizers().items():
            if k in ckpt.get("optimizers", {}):
                o.load_state_dict(ckpt["optimizers"][k])
                match_optimizer_layout(o)  # resumed with another --channels-last: the state in the new layout
        model.load_extra_state(ckpt.get("extra", {}))
        for k, sc in model.scalers.items():
            if k in ckpt.get("scalers", {}):
                sc.load_state_dict(ckpt["scalers"][k])
    except (KeyError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{p}: does not fit this model's networks ({first[:150]})")


def restore_rng(ckpt: dict, device: torch.device) -> None:
    """The random state of the process that wrote the checkpoint (CPU, and this GPU's)."""
    torch.set_rng_state(ckpt["rng"]["torch"])
    cuda_rng = ckpt["rng"]["cuda"]
    if isinstance(cuda_rng, list):  # older checkpoints: every GPU's state; the run's own was cuda:0
        cuda_rng = cuda_rng[0] if cuda_rng else None
    if device.type == "cuda" and cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, device)


def model_from_checkpoint(model_cls, ckpt: dict, p: Path, device):
    """The model a checkpoint describes (its own config), networks restored, for sampling."""
    cfg = argparse.Namespace(**upgrade_config(dict(ckpt["config"]), model_cls.hyperparameters))
    cfg.image_size = tuple(cfg.image_size)
    model = prepare_model(model_cls(cfg, tuple(ckpt["shape"]), device), cfg, for_training=False)
    restore(model, ckpt, p)
    return model
