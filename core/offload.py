"""Running SD 3.x and FLUX.1 where their weights do not fit the accelerator (issue #18).

FLUX.1 dev's transformer is 11.9 B parameters: 22.2 GiB in bf16, beside a T5-XXL encoder of
8.9 GiB in fp16 (docs/MODELS_FLOW.md has the sums). Two things make it run on smaller cards:

* Block streaming (``stream_blocks``): the transformer's weights stay in CPU memory (pinned on
  CUDA, so copies run asynchronously); each of its blocks (``joint_blocks.N``, ``double_blocks.N``,
  ``single_blocks.N``) is copied to the device just before its forward and dropped after (the
  CPU copy is the weight; inference never writes it, so nothing is copied back). The small
  layers around the blocks (embedders, final layer) stay on the device. On CUDA the next block
  is copied on a side stream while the current one computes.
* Visiting text encoders (``EncoderVisits``): encoders are kept in CPU memory and moved to the
  device only while a prompt is encoded (or run on the CPU when even that does not fit).

``offload_plan`` chooses between keeping everything on the device and this split; the engine's
``offload`` setting ("auto", "never", "always"; launch.py's ``--offload``) says whether to ask it.
Only the flow families have blocks to stream: the UNet families load as they always did.
"""
from __future__ import annotations

import logging
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

OFFLOAD_MODES = ("auto", "never", "always")
RESIDENT, STREAM = "resident", "stream"
# The transformer's repeated blocks, in the order its forward runs them.
BLOCK_LISTS = ("joint_blocks", "double_blocks", "single_blocks")
# What the device must keep free besides the weights: the sampling's activations and the 16-channel
# VAE decoding a 1024x1024 picture (the largest share: about 2.5 GiB in bf16 untiled).
ACTIVATION_HEADROOM = 3 * 2**30


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors counted once)."""
    seen = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def offload_plan(model_bytes: int, text_encoder_bytes: int, free_device_bytes: int | None,
                 headroom: int = ACTIVATION_HEADROOM) -> str:
    """"resident" when the model (transformer + VAE) and its text encoders fit the device
    together with the working headroom (``free_device_bytes`` None: a CPU, where everything is
    resident); else "stream": the encoders visit the device for each prompt and the transformer's
    blocks stream through it unless it fits alone (``blocks_fit``)."""
    if free_device_bytes is None or model_bytes + text_encoder_bytes + headroom <= free_device_bytes:
        return RESIDENT
    return STREAM


def blocks_fit(model_bytes: int, free_device_bytes: int, headroom: int = ACTIVATION_HEADROOM) -> bool:
    """Whether a "stream" plan may keep the whole transformer on the device (the encoders being
    out of the way): SD 3.5 large in bf16 does on a 24 GB card, FLUX.1 dev in bf16 does not."""
    return model_bytes + headroom <= free_device_bytes


def free_device_bytes(device: torch.device) -> int | None:
    """Memory the device can still give to weights: CUDA's free memory plus what torch's caching
    allocator holds unused; MPS's recommended working set less what is allocated; None on a CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return max(0, torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    return None


def streamed_blocks(network: nn.Module) -> list[nn.Module]:
    """The network's blocks in forward order: SD3's joint blocks, FLUX's double then single blocks."""
    return [block for name in BLOCK_LISTS for block in getattr(network, name, ())]


def _tensor_slots(module: nn.Module):
    """(dict, name, tensor) of every parameter and buffer slot of ``module`` and its children."""
    for owner in module.modules():
        for store in (owner._parameters, owner._buffers):
            for name, tensor in store.items():
                if tensor is not None:
                    yield store, name, tensor


def _like(tensor: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """``data`` in the kind of slot ``tensor`` held: a Parameter (frozen) or a plain buffer."""
    return nn.Parameter(data, requires_grad=False) if isinstance(tensor, nn.Parameter) else data


def _moved(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, as the same Parameter object where torch allows it (every real
    device; not the meta device, which tests stand in with)."""
    data = tensor.detach().to(device)
    if data.device == tensor.device and data.data_ptr() == tensor.data_ptr():
        return tensor
    try:
        tensor.data = data
        return tensor
    except RuntimeError:
        return _like(tensor, data)


PACKING_ALIGNMENT = 256  # bytes: any dtype's views start aligned, as CUDA's copies like them


def pack_into_one_buffer(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Copy CPU ``tensors`` into one new byte buffer, one after the other (aligned), and make
    each a view of it, in place (``.data``: the same tensor objects) -> the buffer. Copied one at a
    time, so the old storage of each (a mapped file's pages, say) is let go as its copy is made."""
    sizes = [t.numel() * t.element_size() for t in tensors]
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // PACKING_ALIGNMENT) * PACKING_ALIGNMENT
    buffer = torch.empty(total, dtype=torch.uint8)
    for tensor, offset, size in zip(tensors, offsets, sizes):
        view = buffer[offset:offset + size].view(tensor.dtype).view(tensor.shape)
        view.copy_(tensor)
        tensor.data = view
    return buffer


def pin_buffer(buffer: torch.Tensor, owner: object) -> bool:
    """Page-lock ``buffer`` for CUDA's asynchronous copies, registered in place, until ``owner``
    is collected. torch's own ``pin_memory`` makes a new allocation rounded up to a power of two:
    1.35x FLUX.1 dev's weights, 1.65x SD 3.5 large's (their tensor sizes, tests/reference), memory
    a streaming model's CPU side cannot spare. -> whether it worked (else copies run unpinned)."""
    try:
        cudart = torch.cuda.cudart()
        error = int(cudart.cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0))
    except (RuntimeError, AttributeError, AssertionError) as exc:  # no CUDA here (torch asserts), no binding
        error = str(exc)
    if error != 0:
        log.warning("offload: cannot page-lock %.1f GB of weights (%s); copying them unpinned", buffer.numel() / 1e9, error)
        return False
    # The finalizer holds the buffer, so its memory is unregistered before it can be freed.
    weakref.finalize(owner, lambda held=buffer: cudart.cudaHostUnregister(held.data_ptr()))
    return True


class Visitor:
    """The parameter and buffer slots of one module tree, holding CPU tensors ("homes") between
    visits and device copies during them. A visit fills the slots, never the Parameter objects, so
    outside a visit the module is exactly as it was (LoRA merging, state dicts, hashes see the
    CPU weights), and leaving costs nothing: inference never writes a weight, so the device copy
    is dropped, not copied back. Tied tensors (T5's token table) travel once."""

    def __init__(self, module: nn.Module, pin: bool = False):
        homes: dict[int, torch.Tensor] = {}
        self.slots = []
        for store, name, tensor in _tensor_slots(module):
            if id(tensor) not in homes:
                homes[id(tensor)] = _moved(tensor, torch.device("cpu"))
            store[name] = homes[id(tensor)]
            self.slots.append((store, name, homes[id(tensor)]))
        self.bytes = sum(t.numel() * t.element_size() for t in homes.values())
        self.pinned = pin and bool(homes) and pin_buffer(pack_into_one_buffer(list(homes.values())), self)

    def enter(self, device: torch.device, non_blocking: bool = False) -> list[torch.Tensor]:
        """Fill the slots with copies on ``device``; -> the copies."""
        copies: dict[int, torch.Tensor] = {}
        for store, name, home in self.slots:
            if id(home) not in copies:
                copies[id(home)] = _like(home, home.detach().to(device, non_blocking=non_blocking))
            store[name] = copies[id(home)]
        return list(copies.values())

    def leave(self) -> None:
        for store, name, home in self.slots:
            store[name] = home


class BlockStream:
    """The handle ``stream_blocks`` returns: the blocks visit the device one at a time (``Visitor``),
    around each block's forward."""

    def __init__(self, network: nn.Module, compute_device: torch.device, prefetch: bool | None = None):
        self.device = torch.device(compute_device)
        self.blocks = streamed_blocks(network)
        if not self.blocks:
            raise ValueError(f"{type(network).__name__} has no {', '.join(BLOCK_LISTS)} to stream")
        cuda = self.device.type == "cuda"
        self.prefetch = cuda if prefetch is None else prefetch
        self.side_stream = torch.cuda.Stream(self.device) if cuda and self.prefetch else None
        in_blocks = {id(t) for block in self.blocks for _, _, t in _tensor_slots(block)}
        # The layers around the blocks are small (FLUX.1 dev: 0.2 B of 11.9 B) and run every step.
        for store, name, tensor in _tensor_slots(network):
            if id(tensor) not in in_blocks:
                store[name] = _moved(tensor, self.device)
        self.visitors = [Visitor(block, pin=cuda) for block in self.blocks]
        # Blocks on the device now: index -> (the CUDA event their copy ends with or None, the copies).
        self.arrived: dict[int, tuple[object, list[torch.Tensor]]] = {}
        self.hooks = []
        for index, block in enumerate(self.blocks):
            self.hooks.append(block.register_forward_pre_hook(lambda module, args, i=index: self._before(i)))
            self.hooks.append(block.register_forward_hook(lambda module, args, output, i=index: self._after(i)))

    def _bring(self, index: int, stream=None) -> None:
        if index in self.arrived:
            return
        event = None
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            copies = self.visitors[index].enter(self.device, non_blocking=self.device.type == "cuda")
            if stream is not None:
                event = torch.cuda.Event()
                event.record(stream)
        self.arrived[index] = (event, copies)

    def _before(self, index: int) -> None:
        if index == 0:
            # A new forward. A forward that failed inside a block left copies here (its after-hook
            # never ran): they may be stale (a LoRA merged since) and only hold memory.
            for stale in list(self.arrived):
                self._after(stale)
        self._bring(index)
        event, copies = self.arrived[index]
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            # Made on the side stream, used on this one: the allocator must not hand the memory
            # out again before this stream is done with it.
            for copy in copies:
                copy.record_stream(current)
        if self.prefetch and index + 1 < len(self.blocks):
            self._bring(index + 1, self.side_stream)

    def _after(self, index: int) -> None:
        self.visitors[index].leave()
        self.arrived.pop(index, None)

    def device_bytes(self) -> int:
        """Bytes of block weights on the device now."""
        return sum(self.visitors[i].bytes for i in self.arrived)

    def remove(self) -> None:
        """Stop streaming: the hooks go and every block keeps its CPU weights (the layers around
        them stay on the device; move the network where it should live)."""
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        for index in list(self.arrived):
            self._after(index)


def stream_blocks(network: nn.Module, compute_device: torch.device | str, prefetch: bool | None = None) -> BlockStream:
    """Run ``network``'s blocks one at a time on ``compute_device`` (module notes). ``prefetch``:
    copy the next block while one computes (default: on CUDA, where a side stream overlaps the
    copy; elsewhere a copy cannot overlap, and one more block would only take memory)."""
    return BlockStream(network, torch.device(compute_device), prefetch)


class EncoderVisits:
    """Text encoders kept in CPU memory between prompts (an offloaded model's): ``with visits():``
    brings each to the device for the span where it fits beside what is there, the others run
    on the CPU; ``arrived(tensor)`` puts an encoder's output on the compute device. With no
    encoders (a model resident on its device) both do nothing."""

    def __init__(self, encoders=(), compute_device: torch.device | None = None):
        self.device = compute_device
        self.visitors = [Visitor(encoder, pin=compute_device is not None and compute_device.type == "cuda")
                         for encoder in encoders]

    @contextmanager
    def __call__(self):
        free = free_device_bytes(self.device) if self.visitors else None
        visiting = []
        try:
            for visitor in self.visitors:
                # In order (CLIP before T5), each where it fits beside those already brought; a
                # prompt's activations are small beside the sampling's.
                if free is None or visitor.bytes + ACTIVATION_HEADROOM // 4 <= free:
                    visiting.append(visitor)
                    visitor.enter(self.device)
                    free = None if free is None else free - visitor.bytes
            yield
        finally:
            for visitor in visiting:
                visitor.leave()

    def arrived(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None or not self.visitors:
            return tensor
        return tensor.to(self.device)


@dataclass
class Placement:
    """Where an offloaded model's parts live (``LatentFlow.offload``)."""

    plan: str
    blocks: BlockStream | None = None  # None: the transformer is resident
    visits: EncoderVisits = field(default_factory=EncoderVisits)


def encoder_visits(model) -> EncoderVisits:
    """The model's encoder visits (a do-nothing one for a model that is not offloaded)."""
    placement = getattr(model, "offload", None)
    return placement.visits if placement is not None else EncoderVisits()


def is_flow_checkpoint(path: str | Path) -> bool:
    """Whether a checkpoint is SD 3.x / FLUX.1 (reading its header or model_index.json only)."""
    from core import flow_files, loading
    from core.modelfiles import is_safetensors

    path = Path(path)
    if path.is_dir():
        return flow_files.is_flow_diffusers_folder(path)
    if not is_safetensors(path):  # a pickled .ckpt has no header to read; it loads as it always did
        return False
    return flow_files.is_flow_layout(loading.safetensors_header(path))


def load_device(mode: str, device: torch.device, path: str | Path) -> torch.device:
    """Where the engine loads a checkpoint: a flow model on an accelerator goes to CPU memory first
    (``place`` then decides what moves), unless offloading is off; everything else to ``device``."""
    if mode == "never" or device.type == "cpu" or not is_flow_checkpoint(path):
        return device
    return torch.device("cpu")


def place(model, device: torch.device, mode: str) -> Placement | None:
    """Put a model loaded in CPU memory (``load_device``) on ``device`` by the plan: all of it, or
    the split of the module notes ("always" streams the blocks whatever fits). Returns the
    placement, also kept as ``model.offload``; None where nothing was to decide (a UNet family,
    a CPU, offloading off)."""
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {mode!r}")
    if mode == "never" or device.type == "cpu" or not streamed_blocks(model.unet):
        return None
    model_bytes = tensor_bytes(model.unet) + tensor_bytes(model.vae)
    encoders = list(model.encoder_modules)
    free = free_device_bytes(device)
    plan = STREAM if mode == "always" else offload_plan(model_bytes, sum(tensor_bytes(e) for e in encoders), free)
    if plan == RESIDENT:
        model.to(device)
        placement = Placement(plan)
    else:
        model.vae.to(device)
        stream = mode == "always" or free is None or not blocks_fit(model_bytes, free)
        blocks = stream_blocks(model.unet, device) if stream else None
        if blocks is None:
            model.unet.to(device)
        placement = Placement(plan, blocks, EncoderVisits(encoders, device))
    model.offload = placement
    return placement
