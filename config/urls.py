from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from allocation.api.health import HealthCheckApi
from allocation.api.v1.allocations import AllocationCancelApi, AllocationCreateApi
from allocation.api.v1.base import RouteNotFoundApi
from allocation.api.v1.batches import BatchCreateApi, BatchQuantityChangeApi
from allocation.api.v1.operations import DeliveryListApi, EventListApi
from allocation.api.v1.routing import resource
from allocation.metrics import metrics_view
from readmodels import api as reads

# /api/v1/: one URL may join a read view (readmodels) and a write view (allocation).
BatchCollectionApi = resource("BatchCollectionApi", reads.BatchListApi, BatchCreateApi)
BatchResourceApi = resource("BatchResourceApi", reads.BatchDetailApi, BatchQuantityChangeApi)

api_v1 = [
    path("batches", BatchCollectionApi.as_view(), name="batches"),
    path("batches/<str:ref>", BatchResourceApi.as_view(), name="batch"),
    path("allocations", AllocationCreateApi.as_view(), name="allocations"),
    path(
        "orders/<str:orderid>/allocations",
        reads.OrderAllocationListApi.as_view(),
        name="order-allocations",
    ),
    path(
        "orders/<str:orderid>/allocations/<str:sku>",
        AllocationCancelApi.as_view(),
        name="order-allocation",
    ),
    path("stock", reads.StockListApi.as_view(), name="stock-list"),
    path("stock/<str:sku>", reads.StockDetailApi.as_view(), name="stock"),
    path("events", EventListApi.as_view(), name="events"),
    path("deliveries", DeliveryListApi.as_view(), name="deliveries"),
    re_path(r"^.*$", RouteNotFoundApi.as_view(), name="not-found"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", HealthCheckApi.as_view(), name="health"),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include((api_v1, "v1"))),
    # The book-compatible endpoints, at the root.
    path("", include("allocation.urls")),
    path("", include("readmodels.urls")),
]
