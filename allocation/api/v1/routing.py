"""One URL served by several views, each answering its own methods.

`/api/v1/batches` is a read (GET, from the read model: readmodels/api.py) and a write (POST, a
command: allocation/api/v1/batches.py). The two live with their own side and neither imports
the other; the URL conf, which knows both, joins them here.
"""

from __future__ import annotations

from rest_framework.views import APIView

from allocation.api.v1.base import V1Api


def resource(name: str, *views: type[V1Api]) -> type[APIView]:
    """A view class with the methods of every view given; their methods must not overlap."""
    served: set[str] = set()
    for view in views:
        methods = {m for m in view.http_method_names if m != "options" and m in vars(view)}
        if served & methods:
            raise TypeError(f"{name}: {sorted(served & methods)} served by more than one view")
        served |= methods
    doc = "\n\n".join(view.__doc__ or "" for view in views)
    # The schema describes each method by its own view's docstring (schema.V1AutoSchema).
    return type(name, views, {"__doc__": doc, "__module__": views[0].__module__})
