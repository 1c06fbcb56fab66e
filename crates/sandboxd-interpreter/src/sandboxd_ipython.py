"""IPython extension that `sandboxd interpreter` loads into every Python context.

It adds the display formats of the E2B code-interpreter API:

* ``e2b/data``: a pandas DataFrame as ``{column: [values...]}`` (timestamps as ISO strings,
  NaN and infinities as null);
* ``e2b/chart``: a matplotlib Figure as a chart dict, made by the ``e2b_charts`` package;
* ``application/json``: lists and dicts (numpy scalars and arrays converted).

Like E2B's template, saving a PIL image to a path (``img.save("x.png")``) or showing it
(``img.show()``) also displays it, so the run returns it as a PNG result.

The formatters are registered by type *name*, and PIL is patched when user code imports it, so
pandas, matplotlib and PIL are only imported when user code imports them: the kernel starts as
fast as a plain ipykernel.
"""

import importlib.abc
import json
import math
import os
import sys

from IPython.core.formatters import BaseFormatter, JSONFormatter, catch_format_error
from traitlets import ObjectName, Unicode


def _plain(value):
    """Converts numpy scalars/arrays to Python values; NaN and infinities become None."""
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy ships with pandas/matplotlib
        numpy = None
    if numpy is not None:
        if isinstance(value, numpy.ndarray):
            return [_plain(v) for v in value.tolist()]
        if isinstance(value, numpy.generic):
            value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        try:
            return value.isoformat()
        except Exception:  # noqa: BLE001
            return str(value)
    return value


def _dataframe_data(df):
    return _plain(df.to_dict(orient="list"))


def _figure_chart(fig):
    try:
        from e2b_charts import chart_figure_to_dict
    except ImportError:
        return None
    try:
        chart = chart_figure_to_dict(fig)
    except Exception:  # noqa: BLE001 - an odd figure must not break its PNG
        return None
    if not chart:
        return None
    try:
        # Enum members and numpy values become plain JSON values.
        return json.loads(json.dumps(chart, default=_json_default))
    except (TypeError, ValueError):
        return None


def _json_default(obj):
    value = getattr(obj, "value", None)
    if value is not None and isinstance(value, (str, int, float)):
        return value
    plain = _plain(obj)
    if plain is obj:
        raise TypeError(f"not JSON serializable: {type(obj).__name__}")
    return plain


class E2BDataFormatter(BaseFormatter):
    format_type = Unicode("e2b/data")
    print_method = ObjectName("_repr_e2b_data_")
    _return_type = (dict, str)


class E2BChartFormatter(BaseFormatter):
    format_type = Unicode("e2b/chart")
    print_method = ObjectName("_repr_e2b_chart_")
    _return_type = (dict, str)

    @catch_format_error
    def __call__(self, obj):
        # matplotlib's inline backend pops Figure from every formatter when it configures
        # itself, so a registration by type would not survive: check the type here.
        figure = sys.modules.get("matplotlib.figure")
        if figure is not None and isinstance(obj, figure.Figure):
            return _figure_chart(obj)
        return super().__call__(obj)


class E2BJSONFormatter(JSONFormatter):
    @catch_format_error
    def __call__(self, obj):
        if isinstance(obj, (list, dict)):
            try:
                text = json.dumps(obj, default=_json_default, allow_nan=False)
                return json.loads(text), {"expanded": True}
            except (TypeError, ValueError):
                pass
        return super().__call__(obj)


# Largest stdout/stderr chunk the kernel buffers before it publishes a stream message. ipykernel
# only flushes on a 0.2 s timer, so a fast producer would otherwise make one message of many
# megabytes, which every hop (ZeroMQ, the server, the HTTP client) holds whole in memory.
STREAM_CHUNK = 256 * 1024


def _bound_stream_messages():
    try:
        from ipykernel.iostream import OutStream
    except ImportError:  # pragma: no cover
        return
    if getattr(OutStream, "_sandboxd_bounded", False):
        return
    original = OutStream.write

    def write(self, string):
        n = original(self, string)
        try:
            buffer = getattr(self, "_buffer", None)
            if buffer is not None and buffer.tell() >= STREAM_CHUNK:
                self.flush()
        except Exception:  # noqa: BLE001 - never break printing
            pass
        return n

    OutStream.write = write
    OutStream._sandboxd_bounded = True


def _patch_pil_image(module):
    """Display images that are saved to a path or shown (E2B's template does the same)."""
    if getattr(module.Image, "_sandboxd_display", False):
        return
    from IPython.display import display

    original_save = module.Image.save

    def save(self, fp, format=None, **params):
        if isinstance(fp, (str, os.PathLike)):
            display(self)
        return original_save(self, fp, format, **params)

    def show(self, title=None):
        display(self)

    module.Image.save = save
    module.Image.show = show
    module.Image._sandboxd_display = True


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs ``patch(module)`` right after ``name`` is first imported (nothing is imported early)."""

    def __init__(self, name, patch):
        self.name = name
        self.patch = patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and hasattr(spec.loader, "exec_module"):
                # the loader is this spec's own (path finders make one per spec)
                exec_module, patch = spec.loader.exec_module, self.patch

                def exec_and_patch(module):
                    exec_module(module)
                    try:
                        patch(module)
                    except Exception:  # noqa: BLE001 - never break the import
                        pass

                spec.loader.exec_module = exec_and_patch
                return spec
        return None


def _patch_when_imported(name, patch):
    module = sys.modules.get(name)
    if module is not None:
        patch(module)
    elif not any(isinstance(f, _PatchOnImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport(name, patch))


def _layer_mpl_toolkits_first():
    """A Debian python3-matplotlib on the host installs an nspkg ``.pth`` that creates
    ``mpl_toolkits`` at interpreter start, pointing at its own (older) copy, which shadows the
    layer's and breaks 3D axes: put the layer's directory first (matplotlib is not imported)."""
    toolkits = sys.modules.get("mpl_toolkits")
    if toolkits is None or not isinstance(getattr(toolkits, "__path__", None), list):
        return
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.origin:
        return
    ours = os.path.join(os.path.dirname(os.path.dirname(spec.origin)), "mpl_toolkits")
    if os.path.isdir(ours) and toolkits.__path__[:1] != [ours]:
        toolkits.__path__.insert(0, ours)


def load_ipython_extension(ip):
    _bound_stream_messages()
    _layer_mpl_toolkits_first()
    _patch_when_imported("PIL.Image", _patch_pil_image)
    formatters = ip.display_formatter.formatters
    data = E2BDataFormatter(parent=ip.display_formatter)
    data.for_type_by_name("pandas.core.frame", "DataFrame", _dataframe_data)
    formatters["e2b/data"] = data
    formatters["e2b/chart"] = E2BChartFormatter(parent=ip.display_formatter)
    formatters["application/json"] = E2BJSONFormatter(parent=ip.display_formatter)
