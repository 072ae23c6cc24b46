"""Released EG3D networks, read safely: :func:`load_network_pkl` reads a
``network-snapshot-*.pkl`` (a dict with ``G``, ``D``, ``G_ema``, ... pickled through EG3D's
``torch_utils.persistence``) without executing any code from the file and without EG3D's source
tree. A restricted unpickler resolves only the persistence reconstructor, tensors, numpy
scalars, plain containers and, as inert records, the few classes EG3D pickles by reference (its
renderer, ray sampler and decoder); each persistent object's source text is never run. omnifast
rebuilds its own modules from each network's recorded constructor arguments and loads their
tensors by name; an unknown class, a missing or extra tensor or a shape that differs is a
one-line error naming it."""
import collections
import importlib
import io
import os
import pickle

import numpy as np
import torch

from .models import DualDiscriminator
from .omniavatar import OmniAvatarGenerator
from .triplane import TriPlaneGenerator, mapping_kwargs_of

NETWORK_KEYS = ("G", "D", "G_ema")


class PickleError(ValueError):
    """A network pickle omnifast cannot (or will not) read."""


class EasyDict(dict):
    """``dnnlib.util.EasyDict``: a dict (its attribute access is not needed here)."""


class Persistent:
    """A ``torch_utils.persistence`` object: its class name, constructor arguments and state."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str) \
                or not isinstance(meta.get("state"), dict):
            raise PickleError("a persistent object's record is not EG3D's (type 'class', class_name, state)")
        self.class_name, self.state = meta["class_name"], meta["state"]
        self.init_args = tuple(self.state.get("_init_args", ()))
        self.init_kwargs = dict(self.state.get("_init_kwargs", {}))


class Plain:
    """An object EG3D pickles by reference (``ImportanceRenderer``, ``nn.Sequential``, ...):
    only its state is kept; none of its code runs."""
    qualified = ""

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


# Classes pickled by reference that may appear inside EG3D's networks; kept as inert records.
PLAIN = ("training.volumetric_rendering.renderer.ImportanceRenderer",
         "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
         "training.volumetric_rendering.ray_sampler.RaySampler",
         "training.triplane.OSGDecoder",
         "torch.nn.modules.container.Sequential",
         "torch.nn.modules.container.ModuleList",
         "torch.nn.modules.activation.Softplus",
         "torch.nn.modules.activation.LeakyReLU",
         # OmniAvatar's warp and template networks
         "training.im3dmm_network.IGRModel",
         "torch.nn.modules.linear.Linear",
         "torch.nn.modules.activation.SiLU")


def _load_storage(data):
    # A storage pickled by torch: read with torch's own weights-only loader.
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _rebuild_from_type(func, new_type, args, state):
    if func not in (torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter) \
            or new_type not in (torch.Tensor, torch.nn.Parameter):
        raise PickleError(f"a tensor of type {getattr(new_type, '__name__', new_type)!r} is not allowed")
    return func(*args)


_SAFE = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): Persistent,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "device"): torch.device,
}
# numpy scalars and arrays (EG3D keeps numpy floats such as weight gains in its modules' state)
_NUMPY = {("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "scalar"),
          ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
          ("numpy._core.multiarray", "_reconstruct")}
_NUMPY_DTYPES = ("numpy.dtypes",)


class _Unpickler(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f)
        self.originals = {}  # this file's wrappers' functions, by the wrapper's identity (not an attribute)

    def fresh(self, found):
        """What ``find_class`` hands out: pickle's BUILD may set attributes on it, so omnifast's
        classes and torch's functions go out as new per-file subclasses and wrappers, never the
        originals (numpy's and torch's types refuse attributes)."""
        if isinstance(found, type) and issubclass(found, (Persistent, Plain, EasyDict)):
            return type(found.__name__, (found,), {})
        if found is _rebuild_from_type:
            return lambda func, *rest: _rebuild_from_type(self.originals.get(id(func), (None, func))[1], *rest)
        if callable(found) and not isinstance(found, type):
            wrapper = lambda *args: found(*args)  # noqa: E731
            self.originals[id(wrapper)] = (wrapper, found)
            return wrapper
        return found

    def find_class(self, module, name):
        key = (module, name)
        if key in _SAFE:
            return self.fresh(_SAFE[key])
        if f"{module}.{name}" in PLAIN:
            return type(name, (Plain,), {"qualified": f"{module}.{name}"})
        if key in _NUMPY or (module in _NUMPY_DTYPES and name.endswith("DType")):
            return getattr(importlib.import_module(module), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise PickleError(f"the pickle refers to {module}.{name}, which omnifast does not load "
                          f"(it reads EG3D's networks, tensors and plain values only)")

    def persistent_load(self, pid):
        raise PickleError("the pickle uses persistent ids (a torch.save file?); expected EG3D's network pickle")


def _group(record, group, prefix):
    value = record.state.get(group) or {} if isinstance(record, (Persistent, Plain)) else {}
    if not isinstance(value, dict):
        raise PickleError(f"{prefix or 'the network'}: its {group} is a {type(value).__name__}, not a dict")
    return value


def tensors_of(record, prefix="", depth=0):
    """``{name: tensor}`` of a pickled module's parameters and buffers, its children's too."""
    if depth > 64:
        raise PickleError(f"{prefix}: modules nested more than 64 deep")
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, value in _group(record, group, prefix).items():
            if value is not None:
                out[f"{prefix}{name}"] = value
    for name, child in _group(record, "_modules", prefix).items():
        if child is not None:
            out.update(tensors_of(child, f"{prefix}{name}.", depth + 1))
    return out


def _module_attribute(record, *path):
    for name in path:
        record = _group(record, "_modules", "").get(name)
    return record if isinstance(record, (Persistent, Plain)) else None


def _build_generator(record):
    names = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
    kwargs = _plain(dict(zip(names, record.init_args), **record.init_kwargs))
    # OmniAvatar's generator has EG3D's class name; its settings tell them apart
    omniavatar = "triplane_depth" in (kwargs.get("rendering_kwargs") or {})
    G = (OmniAvatarGenerator if omniavatar else TriPlaneGenerator)(**kwargs)
    G.init_kwargs = kwargs
    nrr = record.state.get("neural_rendering_resolution", 64)
    if isinstance(nrr, bool) or not isinstance(nrr, (int, np.integer)) or not 1 <= nrr <= 4096:
        raise PickleError(f"TriPlaneGenerator: neural_rendering_resolution must be an integer in [1, 4096], "
                          f"got {nrr!r}")
    G.neural_rendering_resolution = int(nrr)
    renderer = _module_attribute(record, "renderer")
    if renderer is not None and "plane_axes" in renderer.state and not omniavatar:  # OmniAvatar's are unused
        G.set_plane_axes(renderer.state["plane_axes"])
    return G


def _build_discriminator(record):
    names = ("c_dim", "img_resolution", "img_channels")
    k = dict(zip(names, record.init_args), **record.init_kwargs)
    unknown = sorted(set(k) - {"c_dim", "img_resolution", "img_channels", "architecture", "channel_base",
                               "channel_max", "num_fp16_res", "conv_clamp", "cmap_dim", "disc_c_noise",
                               "block_kwargs", "mapping_kwargs", "epilogue_kwargs"})
    if unknown:
        raise PickleError(f"DualDiscriminator: unknown arguments {unknown}")
    if k.get("architecture", "resnet") != "resnet" or k.get("img_channels", 3) != 3 or not k.get("c_dim"):
        raise PickleError("DualDiscriminator: omnifast rebuilds EG3D's resnet discriminator of 3-channel images "
                          "with a label")
    block = {n: v for n, v in dict(k.get("block_kwargs") or {}).items() if n != "freeze_layers"}
    epilogue = dict(k.get("epilogue_kwargs") or {})
    if block or set(epilogue) - {"mbstd_group_size"}:
        raise PickleError(f"DualDiscriminator: unknown block or epilogue arguments {sorted(block) + sorted(epilogue)}")
    mapping = mapping_kwargs_of(k.get("mapping_kwargs"), "DualDiscriminator")
    D = DualDiscriminator(k["img_resolution"], k["c_dim"], 0, channel_base=k.get("channel_base", 32768),
                          channel_max=k.get("channel_max", 512), cmap_dim=k.get("cmap_dim"),
                          mbstd_group=epilogue.get("mbstd_group_size", 4), conv_clamp=k.get("conv_clamp", 256),
                          mapping_layers=mapping.pop("layers", 8), mapping_lr_mul=mapping.pop("lr_mul", 0.01))
    D.disc_c_noise = float(k.get("disc_c_noise", 0) or 0)
    D.init_kwargs = _plain(k)
    return D


BUILDERS = {"TriPlaneGenerator": _build_generator, "DualDiscriminator": _build_discriminator}
SKIPPED = {"AugmentPipe"}  # training-time augmentation, not needed to generate or fine-tune


def _rebuild(record, where):
    if not isinstance(record, Persistent):
        raise PickleError(f"{where} is a {type(record).__name__}, not an EG3D network")
    if record.class_name not in BUILDERS:
        raise PickleError(f"{where} is EG3D's {record.class_name}, which omnifast does not rebuild "
                          f"(it rebuilds {', '.join(sorted(BUILDERS))})")
    try:
        module = BUILDERS[record.class_name](record)
        load_tensors(module, tensors_of(record), f"{where} ({record.class_name})")
    except PickleError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PickleError(f"{where} ({record.class_name}): {first}") from None
    return module.eval().requires_grad_(False)


def load_tensors(module, tensors, where):
    """Copy ``tensors`` into ``module`` by name, refusing a missing, extra or reshaped one."""
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or extra:
        raise PickleError(f"{where}: the pickle's tensors differ from omnifast's layout: "
                          f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, "
                          f"unexpected {extra[:4]}{' ...' if len(extra) > 4 else ''}")
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor) or not (value.is_floating_point() or value.dtype == own[name].dtype):
            got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise PickleError(f"{where}: {name} is a {got}, not a floating-point tensor")
        if value.shape != own[name].shape:
            raise PickleError(f"{where}: {name} has shape {list(value.shape)}, omnifast's layout needs "
                              f"{list(own[name].shape)}")
    module.load_state_dict({k: v.detach().to(own[k].dtype) for k, v in tensors.items()})


def load_network_pkl(path_or_file):
    """EG3D's ``legacy.load_network_pkl`` for omnifast: ``{'G', 'D', 'G_ema', ...}`` from a
    released network pickle (a path or a binary file object), the networks rebuilt as
    omnifast modules (``TriPlaneGenerator``, ``DualDiscriminator``) in eval mode on the CPU, the
    other entries (``training_set_kwargs``, ...) as plain values; ``augment_pipe`` is None."""
    if isinstance(path_or_file, (str, os.PathLike)):
        name = os.fspath(path_or_file)
        if not os.path.isfile(name):
            raise PickleError(f"network pickle {name}: {'a folder' if os.path.isdir(name) else 'no such file'}, "
                              f"expected EG3D's network-snapshot-*.pkl")
        with open(name, "rb") as f:
            return _load(f, name)
    if not hasattr(path_or_file, "read"):
        raise TypeError(f"load_network_pkl: expected a path or a binary file, got {type(path_or_file).__name__}")
    return _load(path_or_file, getattr(path_or_file, "name", "the network pickle"))


def _load(f, name):
    head = f.peek(4)[:4] if hasattr(f, "peek") else b""
    if head.startswith(b"PK\x03\x04"):
        raise PickleError(f"{name}: a zip archive (a torch.save checkpoint?), not EG3D's network pickle")
    try:
        data = _Unpickler(f).load()
    except PickleError as e:
        raise PickleError(f"{name}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, RuntimeError,
            RecursionError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PickleError(f"{name}: not a readable network pickle ({type(e).__name__}: {first})") from None
    if not isinstance(data, dict) or not any(k in data for k in NETWORK_KEYS):
        raise PickleError(f"{name}: expected EG3D's snapshot dict with {', '.join(NETWORK_KEYS)}, got "
                          f"{type(data).__name__}{' with ' + str(sorted(data)) if isinstance(data, dict) else ''}")
    out = {}
    for key, value in data.items():
        if isinstance(value, Persistent) and (value.class_name in SKIPPED or key not in NETWORK_KEYS):
            out[key] = None
        elif key in NETWORK_KEYS and value is not None:
            out[key] = _rebuild(value, f"{name} [{key!r}]")
        else:
            out[key] = _plain(value)
    generator = out.get("G_ema") or out.get("G")
    if isinstance(out.get("D"), DualDiscriminator) and isinstance(generator, OmniAvatarGenerator):
        out["D"].label_width = out["D"].init_kwargs["c_dim"]  # OmniAvatar's D reads its labels' first c_dim numbers
    return out


def _plain(value, depth=0):
    """``value`` as plain JSON-able data: dicts, lists, strings, numbers, None (numpy scalars as
    numbers; modules as None)."""
    if depth > 32:
        raise PickleError("settings nested more than 32 deep")
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (Persistent, Plain)) or value is None:
        return None
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    raise PickleError(f"a setting holds a {type(value).__name__}, not a plain value")


# ---- imported runs: a folder omnifast's commands read (``omnifast import-pkl``)

IMPORTED = "eg3d"


def import_network(pkl, out):
    """Write the networks of an EG3D pickle as an omnifast run folder ``out``: config.json (the
    source, the networks' constructor arguments, the neural rendering resolution and plane
    axes) and checkpoint.pt (G, D, G_ema state dicts, read back without running code)."""
    from ..runs import RunFolder, check_new_run_folder

    def accepts(config):
        if config.get("imported") != IMPORTED:
            raise ValueError("not an imported network")

    if RunFolder(out).has_checkpoint():
        raise FileExistsError(f"{out} already holds networks: give import-pkl a new or empty folder")
    check_new_run_folder(out, "network import", accepts)
    networks = load_network_pkl(pkl)
    if not isinstance(networks.get("G_ema"), TriPlaneGenerator):  # EG3D's or OmniAvatar's
        raise PickleError(f"{pkl}: has no EG3D or OmniAvatar generator (TriPlaneGenerator) as G_ema to generate "
                          f"with")
    G = networks["G_ema"]
    config = {"imported": IMPORTED, "source": os.path.abspath(os.fspath(pkl)),
              "networks": {key: {"class": type(networks[key]).__name__, "init_kwargs": networks[key].init_kwargs}
                           for key in NETWORK_KEYS if networks.get(key) is not None},
              "neural_rendering_resolution": G.neural_rendering_resolution,
              "plane_axes": [list(pair) for pair in G.renderer.axes] if not isinstance(G.renderer.axes, str)
              else G.renderer.axes,
              "training_set_kwargs": networks.get("training_set_kwargs")}
    folder = RunFolder(out, create=True)
    folder.write_config(config)
    folder.save_checkpoint({key: networks[key].state_dict() for key in NETWORK_KEYS if networks.get(key) is not None})
    return config


def load_imported(run_dir, key="G_ema"):
    """The network ``key`` of a run folder ``omnifast import-pkl`` wrote, or None when the
    folder is not an imported one."""
    from ..runs import RunError, RunFolder

    folder = RunFolder(run_dir)
    if not os.path.isfile(folder.file("config.json")):
        return None
    config = folder.read_config()
    if config.get("imported") != IMPORTED:
        return None
    networks = config.get("networks") or {}
    spec = networks.get(key)
    if spec is None:
        raise RunError(f"{run_dir}: the imported pickle had no {key}")
    generators = {"TriPlaneGenerator": TriPlaneGenerator, "OmniAvatarGenerator": OmniAvatarGenerator}
    if spec.get("class") not in (*generators, "DualDiscriminator"):
        raise RunError(f"{run_dir}: {key} is a {spec.get('class')!r}, not one omnifast rebuilds")
    state = folder.load_checkpoint((key,))
    if spec["class"] in generators:
        module = generators[spec["class"]](**spec["init_kwargs"])
        module.neural_rendering_resolution = int(config["neural_rendering_resolution"])
        axes = config.get("plane_axes", "eg3d")
        module.renderer.axes = axes if isinstance(axes, str) else tuple(tuple(pair) for pair in axes)
    else:
        module = _build_discriminator(Persistent({"type": "class", "class_name": "DualDiscriminator",
                                                  "state": {"_init_kwargs": spec["init_kwargs"]}}))
        if (networks.get("G_ema") or {}).get("class") == "OmniAvatarGenerator":
            module.label_width = spec["init_kwargs"]["c_dim"]
    module.init_kwargs = spec["init_kwargs"]
    try:
        load_tensors(module, state[key], f"{folder.file('checkpoint.pt')} [{key!r}]")
    except PickleError as e:
        raise RunError(str(e)) from None
    return module.eval().requires_grad_(False)


# ---- starting a run from other weights (``train-gan --init``)

def initial_weights(source):
    """``{'G', 'D', 'G_ema': state dict}`` of ``source``: an EG3D network pickle, a folder
    ``omnifast import-pkl`` wrote or a train-gan run folder (its last checkpoint)."""
    from ..runs import RunError, RunFolder

    source = os.fspath(source)
    if os.path.isfile(source):
        networks = load_network_pkl(source)
        return {k: networks[k].state_dict() for k in NETWORK_KEYS if networks.get(k) is not None}
    if not os.path.isdir(source):
        raise RunError(f"--init {source}: no such file or folder (an EG3D .pkl, an import-pkl or train-gan run)")
    try:
        state = RunFolder(source).load_checkpoint()
    except RunError as e:
        raise RunError(f"--init {source}: {e}") from None
    found = {k: state[k] for k in NETWORK_KEYS if isinstance(state.get(k), dict)}
    if not found:
        raise RunError(f"--init {source}: its checkpoint holds none of {', '.join(NETWORK_KEYS)}")
    return found


def transfer_tensors(module, source):
    """Copy into ``module`` every tensor of the state dict ``source`` with its name and shape;
    a label embedding whose source has fewer inputs (EG3D's 25-number label where omnifast's
    discriminator also reads FLAME) gets those columns, rescaled so that the
    equalised-learning-rate layer applies the same weights, and zeros for the rest. Returns
    ``{'copied': n, 'widened': [names], 'kept': [names]}`` (kept: left as initialised)."""
    own = module.state_dict()
    copied, widened, kept = 0, [], []
    with torch.no_grad():
        for name, target in own.items():
            value = source.get(name)
            if isinstance(value, torch.Tensor) and value.shape == target.shape:
                target.copy_(value)
                copied += 1
            elif (isinstance(value, torch.Tensor) and name.endswith("mapping.embed.weight") and value.dim() == 2
                  and value.shape[0] == target.shape[0] and value.shape[1] < target.shape[1]):
                gain = (target.shape[1] / value.shape[1]) ** 0.5  # runtime gain 1 / sqrt(fan_in) grew
                target.zero_()
                target[:, :value.shape[1]] = value * gain
                widened.append(name)
            else:
                kept.append(name)
    return {"copied": copied, "widened": widened, "kept": kept}
