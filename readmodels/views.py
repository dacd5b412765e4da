"""The read side of the book-compatible API."""

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from allocation.api.v1.base import storable
from readmodels import selectors


class OrderAllocationsCompatApi(APIView):
    """`GET /allocations/<orderid>`: 200 `[{"sku", "batchref"}]`, or 404 when there are none."""

    def get(self, request: Request, orderid: str) -> Response:
        # An order id no row could hold (a NUL, which PostgreSQL refuses) has no allocations.
        result = selectors.allocations_for_order(orderid) if storable(orderid) else []
        if not result:
            return Response({"message": "not found"}, status=404)
        return Response(result)
