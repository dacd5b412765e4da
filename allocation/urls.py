from django.urls import path

from allocation.api.compat import AllocateCompatApi, BatchAddCompatApi

urlpatterns = [
    path("add_batch", BatchAddCompatApi.as_view(), name="compat-add-batch"),
    path("allocate", AllocateCompatApi.as_view(), name="compat-allocate"),
]
