from django.urls import path

from readmodels.views import OrderAllocationsCompatApi

urlpatterns = [
    path(
        "allocations/<str:orderid>", OrderAllocationsCompatApi.as_view(), name="compat-allocations"
    ),
]
