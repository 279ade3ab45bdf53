"""Batches of real images: endless, shuffled, the same on resume, split over torchrun ranks."""
from __future__ import annotations

import torch

from .data import Images, Stacked, StreamedFolder, collate_skip
from .errors import UserError
from .scale import pins, rank, room_on_device, to_device, world


class Batches:
    """Endless shuffled batches of real images as float (B, C, H, W) in [-1, 1].

    Epoch e visits the data in the order randperm(N) seeded by (seed, e), and drops the last
    incomplete batch, so the position (epoch, batch) is the whole state: a resumed run draws
    exactly the batches the uninterrupted run would have. Calling the object gives the next
    batch; `images` counts the real images served (for images/s).
    """

    def __init__(self, data, batch_size, seed, device, state=None, channels_last=False, flip=False):
        self.data, self.bs, self.seed, self.device, self.flip = data, batch_size, seed, device, flip
        # Under torchrun each position is a global batch of world()·B images, of which rank r
        # takes the r-th B: K ranks of batch B see what one process of batch K·B sees.
        self.rank, self.world = rank(), world()
        self.epoch, self.pos = (state["epoch"], state["pos"]) if state else (0, 0)
        saved_batch = state.get("global_batch", batch_size) if state else batch_size * self.world
        if saved_batch != batch_size * self.world:  # resumed on another number of ranks K
            self.pos = self.pos * saved_batch // (batch_size * self.world)
        self.channels_last = channels_last
        self.images, self.skipped = 0, getattr(data, "skipped", 0)
        self.per_epoch = len(data) // (batch_size * self.world)
        if self.per_epoch == 0:
            raise UserError(f"--batch-size {batch_size}" + (f" on {self.world} ranks" if self.world > 1 else "")
                            + f" is larger than the data set ({len(data)} images)")
        self._loader_iter = None
        self._x = None
        if isinstance(data, Images) and not isinstance(data, Stacked):
            # The decoded uint8 data stay on the GPU when they fit, and each batch is gathered
            # there; else each batch is gathered on the host and copied through pinned memory
            # (to_device). The whole set is never pinned: that would take its size in page-locked
            # memory in every rank, and an index of a pinned tensor is pageable anyway.
            fits = room_on_device(data.x.numel() * data.x.element_size(), device)
            self._x = data.x.to(device) if fits else data.x
        self._perm = None  # this epoch's order, on the device that holds the data

    @property
    def data_device(self):
        """Where the decoded data set is kept (the device when it fits there); None: streamed."""
        return self._x.device if self._x is not None else None

    def state(self):
        return {"epoch": self.epoch, "pos": self.pos, "global_batch": self.bs * self.world}

    def _mine(self, order, pos):
        """This rank's B indices of global batch `pos` of an epoch's order."""
        start = (pos * self.world + self.rank) * self.bs
        return order[start:start + self.bs]

    def _order(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.data), generator=g)

    def _streamed(self):
        order = self._order()
        batches = [self._mine(order, i).tolist() for i in range(self.pos, self.per_epoch)]
        # A generator of its own: without one, each new iterator draws its workers' base seed
        # from the global RNG, and the run's random stream would depend on where it resumed.
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.utils.data.DataLoader(
            self.data.ds, batch_sampler=batches, num_workers=self.data.workers, collate_fn=collate_skip,
            pin_memory=pins(self.device), persistent_workers=False, generator=g,
            prefetch_factor=4 if self.data.workers else None))

    def _next_streamed(self) -> torch.Tensor:
        """The next batch with at least one readable image (a batch of unreadable files is
        skipped and counted); a whole epoch of them means the folder has none."""
        for _ in range(self.per_epoch + 1):
            if self.pos >= self.per_epoch:
                self.epoch, self.pos, self._loader_iter = self.epoch + 1, 0, None
            if self._loader_iter is None:
                self._loader_iter = self._streamed()
            x, bad = next(self._loader_iter)
            self.skipped += bad
            if len(x):
                return x
            self.pos += 1
        raise UserError(f"{self.data.source}: none of its {len(self.data)} image files could be read")

    def _flipped(self, x: torch.Tensor) -> torch.Tensor:
        """--flip: each image mirrored left-right with probability 1/2, the coin drawn from
        the batch's position (seed, epoch, batch, rank), so a resumed run flips the same ones.
        x is already on the device; the B coins go there through pinned memory."""
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, self.pos, self.rank)) & (2 ** 62 - 1))
        mask = to_device(torch.rand(len(x), generator=g) < 0.5, x.device)
        return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)

    def __call__(self) -> torch.Tensor:
        if self.pos >= self.per_epoch:
            self.epoch, self.pos, self._perm, self._loader_iter = self.epoch + 1, 0, None, None
        if isinstance(self.data, StreamedFolder):
            x = self._next_streamed()
        else:
            if self._perm is None:  # once an epoch: the order goes to the data's device, without a wait
                self._perm = to_device(self._order(), self.data_device or torch.device("cpu"))
            idx = self._mine(self._perm, self.pos)
            x = self._x[idx] if self._x is not None else self.data.batch(idx)
        x = to_device(x, self.device)  # (B, C, H, W) uint8; from the host: through pinned memory
        if self.flip:
            x = self._flipped(x)
        self.pos += 1
        self.images += len(x) * self.world
        x = x.float().div_(127.5).sub_(1.0)  # uint8 [0, 255] -> float [-1, 1]
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

